package officer

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/provd/provd/api/errkind"
	"github.com/provd/provd/policy"
)

// review61Use is one thing provd accepts an officer approval for: the
// digest it rebuilds from what it is asked and the policyRef it wants
// (agent.checkApproval compares both exactly after Verify).
type review61Use struct {
	what        string
	digest, ref []byte
}

// review61Accepts is agent.checkApproval, which lives in a package too heavy
// to import here: the officer's signature, then the exact policyRef and
// digest.
func review61Accepts(ap *policy.Approval, officer *ecdsa.PrivateKey, u review61Use) bool {
	return ap.Verify(officer.Public()) == nil && bytes.Equal(ap.PolicyRef, u.ref) && bytes.Equal(ap.ApprovedPolicy, u.digest)
}

// Held: an approval of one kind, object, destination, KEK or PK policy
// serves as nothing else. Attacker: A3 (an officer-role caller) or A4
// (root on a good boot, driving the TPM or the daemon) holding a set of
// genuine approvals (a recipe, a duplication to a peer, an export under
// the custodians' KEK) and presenting one where provd or the TPM wants
// another: a derive approval as a duplication, an export's duplication
// part as its KEK part, a KEK part for a swapped key/KEK pair, anything
// under another PK policy, or a PK policy approval ("provd/pk"). Also
// stitched: the signature covers aHash = SHA-256(approvedPolicy ||
// policyRef), an unprefixed concatenation, so moving bytes between the
// two fields keeps the signature valid; Verify holds approvedPolicy to 32
// bytes, which removes the ambiguity. Every cross use is refused.
func TestReview61ApprovalKindsDoNotCross(t *testing.T) {
	officer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p1, p2 := sha256.Sum256([]byte("pk policy 1")), sha256.Sum256([]byte("pk policy 2"))
	pk1, pk2 := p1[:], p2[:]
	name := func(b byte) []byte { return append([]byte{0, 0x0b}, bytes.Repeat([]byte{b}, 32)...) }
	obj, kek, peer := name(1), name(2), name(3)
	r, kt, err := Recipe{Type: "ecc-p256", Label: "tls"}.Check()
	if err != nil {
		t.Fatal(err)
	}
	deriveDigest := func(pk []byte) []byte {
		d, err := DeriveApproved(kt, r, pk)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}

	derive, err := ApproveDerive(officer, pk1, r)
	if err != nil {
		t.Fatal(err)
	}
	dup, err := ApproveDuplication(officer, pk1, obj, peer)
	if err != nil {
		t.Fatal(err)
	}
	exDup, exKEK, err := ApproveExport(officer, pk1, obj, kek)
	if err != nil {
		t.Fatal(err)
	}
	uses := []review61Use{
		{"derive under pk1", deriveDigest(pk1), DeriveRef},
		{"dup obj->peer under pk1", DupApproved(pk1, obj, peer), DupRef},
		{"dup obj->NULL under pk1", DupApproved(pk1, obj, ExportParent), DupRef},
		{"export KEK kek for obj under pk1", ExportKEKApproved(pk1, obj, kek), ExportKEKRef},
		// What none of the four approvals is for.
		{"derive under pk2", deriveDigest(pk2), DeriveRef},
		{"dup obj->peer under pk2", DupApproved(pk2, obj, peer), DupRef},
		{"dup obj->kek", DupApproved(pk1, obj, kek), DupRef},
		{"dup kek->NULL", DupApproved(pk1, kek, ExportParent), DupRef},
		{"dup peer->obj", DupApproved(pk1, peer, obj), DupRef},
		{"export KEK peer for obj", ExportKEKApproved(pk1, obj, peer), ExportKEKRef},
		{"export KEK obj for kek (swapped)", ExportKEKApproved(pk1, kek, obj), ExportKEKRef},
		{"export KEK under pk2", ExportKEKApproved(pk2, obj, kek), ExportKEKRef},
		{"the export's dup digest as a KEK part", DupApproved(pk1, obj, ExportParent), ExportKEKRef},
		{"the KEK digest as a duplication", ExportKEKApproved(pk1, obj, kek), DupRef},
		{"the dup digest as a derivation", DupApproved(pk1, obj, peer), DeriveRef},
		{"the derive digest as a duplication", deriveDigest(pk1), DupRef},
		{"the dup digest as a PK policy", DupApproved(pk1, obj, peer), []byte("provd/pk")},
		{"the derive digest as a class PK policy", deriveDigest(pk1), []byte("provd/pk/lab")},
	}
	own := map[*policy.Approval]string{derive: uses[0].what, dup: uses[1].what, exDup: uses[2].what, exKEK: uses[3].what}
	for ap, mine := range own {
		for _, u := range uses {
			if got, want := review61Accepts(ap, officer, u), u.what == mine; got != want {
				t.Errorf("approval for %q accepted for %q: %v, want %v", mine, u.what, got, want)
			}
		}
	}

	refs := [][]byte{DeriveRef, DupRef, ExportKEKRef, []byte("provd/pk"), []byte("provd/pk/x"), []byte("provd/fw-anchor"), nil}
	for ap, mine := range own {
		// Relabelled: another policyRef on the same signature.
		for _, ref := range refs {
			if bytes.Equal(ref, ap.PolicyRef) {
				continue
			}
			re := *ap
			re.PolicyRef = ref
			if re.Verify(officer.Public()) == nil {
				t.Errorf("approval for %q verified with policyRef %q", mine, ref)
			}
		}
		// Stitched: the same aHash input split at another place.
		whole := append(bytes.Clone(ap.ApprovedPolicy), ap.PolicyRef...)
		for _, cut := range []int{0, 16, 31, 33, len(whole)} {
			if cut == 32 || cut > len(whole) {
				continue
			}
			st := *ap
			st.ApprovedPolicy, st.PolicyRef = bytes.Clone(whole[:cut]), bytes.Clone(whole[cut:])
			if !bytes.Equal(append(bytes.Clone(st.ApprovedPolicy), st.PolicyRef...), whole) {
				t.Fatal("stitch broken")
			}
			if st.Verify(officer.Public()) == nil {
				t.Errorf("approval for %q verified stitched at byte %d: approvedPolicy %x, policyRef %q", mine, cut, st.ApprovedPolicy, st.PolicyRef)
			}
		}
	}
}

// FLAW (failed before the mend): (low: defence in depth, no exploitable caller found)
// ApproveDuplication takes any byte strings as the object's and the new
// parent's names, and DupApproved hashes objectName || newParent with no
// length or boundary (as PolicyDuplicationSelect does in the TPM). So an
// approval requested for a malformed pair, e.g. object "" and parent
// obj||TPM_RH_NULL, or object obj[:2] and parent obj[2:]||peer, is the
// same signature as the approval of obj to TPM_RH_NULL (the half of an
// export the TPM enforces, with which A4 on a good boot exports the key in
// the clear: threat-model's documented limit) or of obj to peer. The doc
// promises "to the storage key with TPM name newParent, and to nothing
// else", and ApproveExport does check its names. Attacker: whoever
// composes what an officer or the fleet authority signs through this API
// (a tool or service built on package officer) shows the officer an
// approval that names "no object". Today's callers hold it: provd key
// approve (tpmNameFlag, a proven peer's parent) and the fleet endpoint
// (CheckName, the parent's name computed from its public area) check both
// names. Suggested fix: ApproveDuplication (and DupApproved, returning an
// error) refuse an objectName that fails CheckName and a newParent that is
// neither a CheckName name nor ExportParent.
func TestReview61DuplicationNamesSplitAmbiguously(t *testing.T) {
	officer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p := sha256.Sum256([]byte("pk policy"))
	pk := p[:]
	obj := append([]byte{0, 0x0b}, bytes.Repeat([]byte{1}, 32)...)
	peer := append([]byte{0, 0x0b}, bytes.Repeat([]byte{3}, 32)...)
	cat := func(a, b []byte) []byte { return append(bytes.Clone(a), b...) }
	for _, c := range []struct {
		what                 string
		object, parent       []byte
		sameAsObj, sameAsPar []byte
	}{
		{"empty object, parent obj||NULL", nil, cat(obj, ExportParent), obj, ExportParent},
		{"object obj[:2], parent obj[2:]||NULL", obj[:2], cat(obj[2:], ExportParent), obj, ExportParent},
		{"object obj||peer[:2], parent peer[2:]", cat(obj, peer[:2]), peer[2:], obj, peer},
		{"object obj||peer, empty parent", cat(obj, peer), nil, obj, peer},
	} {
		ap, err := ApproveDuplication(officer, pk, c.object, c.parent)
		if err == nil && bytes.Equal(ap.ApprovedPolicy, DupApproved(pk, c.sameAsObj, c.sameAsPar)) {
			t.Errorf("%s: signed, and the approval is the officer's approval of %x to %x", c.what, c.sameAsObj, c.sameAsPar)
		} else if !errors.Is(err, errkind.ErrBadInput) {
			t.Errorf("%s: %v, want ErrBadInput", c.what, err)
		}
	}
}

// Held: a recipe approval binds the PK policy, type, usage, label/context
// boundary and the movable flag (through the template, whose unique field
// carries the length-prefixed derivation label), so A3/A4 holding the
// approval of one recipe derives no other key as a data object or under
// another PK policy; the default usage and its explicit name are one
// recipe, as intended.
func TestReview61RecipeApprovalsBindTheRecipe(t *testing.T) {
	p1, p2 := sha256.Sum256([]byte("pk policy 1")), sha256.Sum256([]byte("pk policy 2"))
	digest := func(r Recipe, pk []byte) []byte {
		r, kt, err := r.Check()
		if err != nil {
			t.Fatal(err)
		}
		d, err := DeriveApproved(kt, r, pk)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	base := Recipe{Type: "ecc-p256", Label: "ab", Context: "c"}
	want := digest(base, p1[:])
	for what, d := range map[string][]byte{
		"label/context boundary": digest(Recipe{Type: "ecc-p256", Label: "a", Context: "bc"}, p1[:]),
		"context in the label":   digest(Recipe{Type: "ecc-p256", Label: "abc"}, p1[:]),
		"usage ecdh":             digest(Recipe{Type: "ecc-p256", Usage: "ecdh", Label: "ab", Context: "c"}, p1[:]),
		"movable":                digest(Recipe{Type: "ecc-p256", Label: "ab", Context: "c", Movable: true}, p1[:]),
		"type ecc-p384":          digest(Recipe{Type: "ecc-p384", Label: "ab", Context: "c"}, p1[:]),
		"another PK policy":      digest(base, p2[:]),
	} {
		if bytes.Equal(d, want) {
			t.Errorf("%s: same approval digest as %+v", what, base)
		}
	}
	if !bytes.Equal(digest(Recipe{Type: "ecc-p256", Usage: "sign", Label: "ab", Context: "c"}, p1[:]), want) {
		t.Error("the default usage and its name give two approvals")
	}
	for _, k := range []Recipe{{Type: "hmac-sha256", Label: "k"}, {Type: "aes-256", Label: "k"}} {
		for _, pk := range [][]byte{p1[:], p2[:]} {
			if bytes.Equal(digest(k, pk), want) {
				t.Errorf("%+v collides", k)
			}
		}
	}
}
