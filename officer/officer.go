package officer

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api/errkind"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/policy"
)

// Package officer is what the crypto officer approves, computed offline and
// on the device alike: derivation recipes and duplications, as digests the
// TPM checks with PolicyAuthorize. It exists apart from the agent so that the
// officer's tooling (provd key approve, a fleet service) needs no TPM and no
// state (docs/key-hierarchy.md, "What only the officer approves").
//
// Whoever satisfies the PK's policy (root on a good boot, or a
// copy of the state directory on the device) can use every object under the
// PK. What such a caller must not do is take key material away: derive a
// derived key's secret as a data object and TPM2_Unseal it, or duplicate an
// extractable key to a parent of its own. The TPM can refuse both only if
// they need something that caller does not hold: the approval of an offline
// key, the crypto officer's, named at provisioning and bound into the
// policies by its TPM name.
//
//   - The derivation parent D has authPolicy PolicyAuthorize(officer,
//     "provd/derive"). The officer approves one recipe at a time: the PK's
//     policy followed by PolicyTemplate(H(template)), the template being the
//     exact TPMT_TEMPLATE of that key (type, attributes, authPolicy, and the
//     label binding type, usage, label and context). CreateLoaded under D
//     with any other template fails inside the TPM.
//   - An extractable key's duplication branch is PolicyAuthorize(officer,
//     "provd/dup"); the officer approves the PK's policy followed by
//     PolicyDuplicationSelect(this key, one new parent) and
//     PolicyCommandCode(Duplicate). Duplication to any other parent fails
//     inside the TPM.

// DeriveRef and DupRef are the policyRefs of the officer's approvals: a signature made for one purpose
// cannot serve another (aHash covers the policyRef).
var (
	DeriveRef = []byte("provd/derive")
	DupRef    = []byte("provd/dup")
)

// DerivePolicy is D's policy: a recipe the officer approved, then D's
// authValue (PolicyAuthValue: every object under the PK is used only by who
// holds the state's object secret, see ObjectPolicy).
func DerivePolicy(officer crypto.PublicKey) policy.Policy {
	return policy.Policy{policy.Authorize{Signer: officer, PolicyRef: DeriveRef}, policy.AuthValue{}}
}

// ObjectPolicy is the policy of an object under the PK whose use rests on
// the PK's policy p: p, then PolicyAuthValue. p says the platform is in a
// good state, which anyone with access to the TPM or its bus can satisfy
// too (found by review: a bus interposer replayed provd's PolicyPCR into a
// session of its own and used provd's loaded keys); the authValue, random and
// kept in the state, says the caller is provd.
func ObjectPolicy(p policy.Policy) policy.Policy {
	return append(slices.Clone(p), policy.AuthValue{})
}

// ObjectPolicyDigest is ObjectPolicy's digest from p's digest.
func ObjectPolicyDigest(p []byte) []byte {
	return extendPolicy(p, cc(tpm2.TPMCCPolicyAuthValue))
}

// MaxLabel is the size of TPM2B_LABEL (LABEL_MAX_BUFFER): a recipe's label
// and context are at most this long.
const MaxLabel = 32

// Recipe is what a derived key is made of. Type and Usage are catalog
// names (Usage "" is the type's first usage); Label (1..32 bytes) and Context
// (0..32 bytes) are printable UTF-8.
type Recipe struct {
	Type, Usage, Label, Context string
	// Movable: the device's PK is movable, so the derived key has
	// fixedTPM clear and encryptedDuplication set (catalog.UnderMovable);
	// its template, and so the approval, differ. The key itself, from the
	// same label and context, does not.
	Movable bool
}

// Check validates r and fills in the default usage.
func (r Recipe) Check() (Recipe, catalog.Type, error) {
	if r.Label == "" || len(r.Label) > MaxLabel || len(r.Context) > MaxLabel {
		return r, catalog.Type{}, fmt.Errorf("%w: a derived key's label is 1-%d bytes and its context 0-%d bytes", errkind.ErrBadInput, MaxLabel, MaxLabel)
	}
	for what, s := range map[string]string{"label": r.Label, "context": r.Context} {
		if err := checkRecipeText(s); err != nil {
			return r, catalog.Type{}, fmt.Errorf("%w: %s: %v", errkind.ErrBadInput, what, err)
		}
	}
	kt, err := catalog.Lookup(r.Type, true)
	if err != nil {
		return r, kt, fmt.Errorf("%w: %w", errkind.ErrNotPermitted, err)
	}
	if r.Usage, err = kt.Usage(r.Usage); err != nil {
		return r, kt, fmt.Errorf("%w: %w", errkind.ErrBadInput, err)
	}
	r.Type = kt.Name
	return r, kt, nil
}

// checkRecipeText refuses what lets two recipes look alike: only printable
// ASCII without space is taken (found by review: control characters, then
// zero-width, format, separator and homoglyph characters made "tls" and a
// look-alike two keys of one look).
func checkRecipeText(s string) error {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("byte 0x%02x at %d: labels and contexts are printable ASCII without spaces", c, i)
		}
	}
	return nil
}

// deriveLabel is the TPMS_DERIVE label of a recipe: SHA-256 over a version
// tag and the length-prefixed type, usage, label and context. The TPM's KDF
// takes the parent's secret, this label and the key's type and size only;
// binding type and usage here makes a signing key and an ECDH key with one
// label different keys, and hmac-sha256 and aes-256 different secrets.
func deriveLabel(r Recipe) []byte {
	h := sha256.New()
	h.Write([]byte("provd derive v1\x00"))
	for _, f := range []string{r.Type, r.Usage, r.Label, r.Context} {
		h.Write(binary.BigEndian.AppendUint16(nil, uint16(len(f))))
		h.Write([]byte(f))
	}
	return h.Sum(nil)
}

// DerivedPublic is the public area of a derived key of kt and usage under a
// PK whose policy digest is pkDigest: the key carries ObjectPolicy(the PK's policy);
// fixedTPM|fixedParent as D (a movable PK's D and keys: catalog.UnderMovable), and
// sensitiveDataOrigin clear, as the TPM requires of derived objects.
func DerivedPublic(kt catalog.Type, usage string, pkDigest []byte, movable bool) tpm2.TPMTPublic {
	tmpl := kt.Template(usage, ObjectPolicyDigest(pkDigest))
	tmpl.ObjectAttributes.FixedTPM = true
	tmpl.ObjectAttributes.FixedParent = true
	tmpl.ObjectAttributes.SensitiveDataOrigin = false
	return catalog.UnderMovable(tmpl, movable)
}

// DerivedTemplate is the TPMT_TEMPLATE sent to CreateLoaded for recipe r.
func DerivedTemplate(kt catalog.Type, r Recipe, pkDigest []byte) tpm2.TPMTTemplate {
	return catalog.DeriveTemplate(DerivedPublic(kt, r.Usage, pkDigest, r.Movable), deriveLabel(r), nil)
}

// extendPolicy is one TPM policy extend, digest' = SHA-256(digest || parts):
// what the officer's approvals start from is a PK policy digest, not its
// expression, so their digests are computed from it directly (checked
// against policy.Policy.Digest in the tests).
func extendPolicy(digest []byte, parts ...[]byte) []byte {
	h := sha256.New()
	h.Write(digest)
	for _, p := range parts {
		h.Write(p)
	}
	return h.Sum(nil)
}

func cc(c tpm2.TPMCC) []byte { return binary.BigEndian.AppendUint32(nil, uint32(c)) }

// DeriveApproved is the digest the officer approves for recipe r under a PK
// with policy digest pkDigest: pkDigest, then PolicyTemplate.
func DeriveApproved(kt catalog.Type, r Recipe, pkDigest []byte) ([]byte, error) {
	th, err := policy.TemplateHash(tpm2.TPMAlgSHA256, DerivedTemplate(kt, r, pkDigest))
	if err != nil {
		return nil, err
	}
	return extendPolicy(pkDigest, cc(tpm2.TPMCCPolicyTemplate), th), nil
}

// DeriveApprovedExpr is the expression of DeriveApproved, to execute.
func DeriveApprovedExpr(pk policy.Policy, kt catalog.Type, r Recipe, pkDigest []byte) (policy.Policy, error) {
	th, err := policy.TemplateHash(tpm2.TPMAlgSHA256, DerivedTemplate(kt, r, pkDigest))
	if err != nil {
		return nil, err
	}
	return append(slices.Clone(pk), policy.Template{Hash: th}), nil
}

// ApproveDerive is the crypto officer's approval of recipe r on devices whose
// PK policy digest is pkPolicy (provd status; one digest serves a fleet
// provisioned with one signer or golden values). It runs offline: provd key
// approve.
func ApproveDerive(officer crypto.Signer, pkPolicy []byte, r Recipe) (*policy.Approval, error) {
	if err := checkPKPolicy(pkPolicy); err != nil {
		return nil, err
	}
	r, kt, err := r.Check()
	if err != nil {
		return nil, err
	}
	d, err := DeriveApproved(kt, r, pkPolicy)
	if err != nil {
		return nil, err
	}
	return policy.ApproveDigest(officer, d, DeriveRef)
}

// DupApproved is the digest the officer approves to let the key named
// objectName (under a PK with policy digest pkDigest) be duplicated to
// newParent: pkDigest, PolicyDuplicationSelect(objectName, newParent,
// includeObject), PolicyCommandCode(Duplicate).
func DupApproved(pkDigest, objectName, newParent []byte) []byte {
	d := extendPolicy(pkDigest, cc(tpm2.TPMCCPolicyDuplicationSelect), objectName, newParent, []byte{1})
	return extendPolicy(d, cc(tpm2.TPMCCPolicyCommandCode), cc(tpm2.TPMCCDuplicate))
}

// DupApprovedExpr is the expression of DupApproved, to execute.
func DupApprovedExpr(pk policy.Policy, objectName, newParent []byte) policy.Policy {
	return append(slices.Clone(pk),
		policy.DuplicationSelect{ObjectName: objectName, NewParentName: newParent, IncludeObject: true},
		policy.CommandCode{CC: tpm2.TPMCCDuplicate})
}

// ExportParent is the new parent's name in an approval to export a key as
// a backup: TPM_RH_NULL's name (its handle). TPM2_Duplicate to TPM_RH_NULL
// gives a duplicate without an outer wrapper, which only its caller (who
// chose the inner wrapper's key) can open; the TPM checks this name against
// the approved PolicyDuplicationSelect like any other parent's.
var ExportParent = binary.BigEndian.AppendUint32(nil, uint32(tpm2.TPMRHNull))

// ApproveDuplication is the crypto officer's approval to duplicate the
// extractable key with TPM name objectName, under a PK with policy digest
// pkPolicy, to the storage key with TPM name newParent, and to nothing else.
//
// Both names are checked before anything is signed (found by review 61):
// the approved digest hashes objectName || newParent with nothing between
// them, as the TPM's PolicyDuplicationSelect does, so a pair split
// elsewhere (an empty object and a parent of the key's name and
// TPM_RH_NULL's) was signed as the approval of the real pair.
func ApproveDuplication(officer crypto.Signer, pkPolicy, objectName, newParent []byte) (*policy.Approval, error) {
	if err := checkPKPolicy(pkPolicy); err != nil {
		return nil, err
	}
	if err := CheckName(objectName); err != nil {
		return nil, fmt.Errorf("the key's TPM name: %w", err)
	}
	if !bytes.Equal(newParent, ExportParent) {
		if err := CheckName(newParent); err != nil {
			return nil, fmt.Errorf("the new parent's TPM name (or TPM_RH_NULL's): %w", err)
		}
	}
	return policy.ApproveDigest(officer, DupApproved(pkPolicy, objectName, newParent), DupRef)
}

// checkPKPolicy refuses a PK policy digest that is not one: 32 bytes, and
// not all zero, which is a fresh session's digest, so an approval over it
// would hold with no platform check at all (found by review: an authority
// approval made with --pk-policy 00…00 moved a PK on a bad boot).
func checkPKPolicy(d []byte) error {
	if len(d) != sha256.Size {
		return fmt.Errorf("%w: PK policy digest is %d bytes, want 32", errkind.ErrBadInput, len(d))
	}
	if bytes.Equal(d, make([]byte, sha256.Size)) {
		return fmt.Errorf("%w: a PK policy digest of zeros is no policy: the approval would hold on any platform state", errkind.ErrBadInput)
	}
	return nil
}
