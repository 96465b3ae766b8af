package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// FLAW (failed before the mend: policyRecord.checked): `policy show` and `status` report the PK's policy digest (the value
// an operator hands the crypto officer as --pk-policy, and a peer identity
// carries as pk_policy) from the state's policy record's "digest" field,
// which nothing checks. policyState recomputes the PK's policy from the
// record's signer and policyRef and compares that with the PK's authPolicy
// (review of issue 14), but the digest it then reports is the record's own
// text. A4 (or whoever edits a copy of the state, A6) writes another digest
// there: status says "satisfied" and names a PK policy that is not the
// PK's, with no tamper error; the operator has the officer approve recipes
// and duplications over the digest A4 chose. Secure behaviour asserted:
// status/policy show refuse the record as tampered, or report the PK's true
// policy digest.
func TestReview71EditedPolicyDigestIsReported(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, nil)
	res, signed := provisionSigned(t, a)
	if r, err := a.InstallPolicy(ctx, signed(*res.Counter)); err != nil || !r.Satisfied {
		t.Fatalf("install: %+v %v", r, err)
	}
	truth := res.PolicyDigest
	ps, err := a.ShowPolicy(ctx)
	if err != nil || ps.Digest != truth || !ps.Satisfied {
		t.Fatalf("control: %+v %v (want digest %s)", ps, err, truth)
	}
	lie := strings.Repeat("ab", 32)
	if err := a.st.Update(ctx, func(tx *store.Tx) error {
		st, err := a.readPK(tx)
		if err != nil {
			return err
		}
		st.Policy.Digest = lie
		return tx.Put(recPK, st)
	}); err != nil {
		t.Fatal(err)
	}
	ps, err = a.ShowPolicy(ctx)
	if err == nil && ps.Digest != truth {
		t.Errorf("policy show after A4 edited the record's digest: no error, digest %s (the PK's is %s), satisfied=%v",
			ps.Digest, truth, ps.Satisfied)
	} else if err != nil && !errors.Is(err, api.ErrTampered) {
		t.Errorf("policy show: %v, want tampered", err)
	}
	s, err := a.Status(ctx)
	if err == nil && s.PolicyDigest != truth {
		t.Errorf("status after A4 edited the record's digest: no error, policy_digest %s (the PK's is %s)", s.PolicyDigest, truth)
	} else if err != nil && !errors.Is(err, api.ErrTampered) {
		t.Errorf("status: %v, want tampered", err)
	}
}

// Held: the cache of verified signed policies serves only what it verified
// for the same record. A genuine policy parsed (and cached) for the PK's
// record is refused for a record naming another signer, another policyRef
// (another class), or a signer PEM that differs only by the bytes the cache
// key separates fields with (a NUL moved between the signer and the
// policyRef); a policy signed by another key and a revoked-looking older
// file are refused whether or not the cache was filled first, and reset
// forgets the entry.
func TestReview71SignedCacheServesOnlyWhatItVerified(t *testing.T) {
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	vals := policy.PCRValues{Bank: policy.BankSHA256, Values: map[int][]byte{7: make([]byte, 32)}}
	mk := func(k *ecdsa.PrivateKey, class string) []byte {
		sp, err := SignPKPolicy(k, vals, 5, class, false)
		if err != nil {
			t.Fatal(err)
		}
		b, err := sp.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	rec := func(k *ecdsa.PrivateKey, class string) policyRecord {
		ref, err := PolicyRef(class)
		if err != nil {
			t.Fatal(err)
		}
		r, err := newSignedRecord(k.Public(), ref)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	good, mine := mk(signer, ""), rec(signer, "")
	var c signedCache
	sp, err := c.parse(good, mine)
	if err != nil || sp == nil {
		t.Fatalf("control: %v", err)
	}
	if again, err := c.parse(good, mine); err != nil || again != sp {
		t.Fatalf("control: cache hit %p %v, want %p", again, err, sp)
	}
	nul := mine
	nul.Signer = mine.Signer + "\x00" + mine.PolicyRef
	nul.PolicyRef = ""
	for name, r := range map[string]policyRecord{
		"another signer":         rec(other, ""),
		"another class":          rec(signer, "lab"),
		"separator moved":        nul,
		"policyRef of the class": {Kind: PolicySigned, Signer: mine.Signer, PolicyRef: hex.EncodeToString([]byte("provd/pk/lab"))},
	} {
		if got, err := c.parse(good, r); err == nil || got != nil {
			t.Errorf("%s: the cached policy was served (%v)", name, err)
		}
		// The genuine entry is still there for the genuine record.
		if _, err := c.parse(good, mine); err != nil {
			t.Fatalf("%s: genuine after: %v", name, err)
		}
	}
	for name, b := range map[string][]byte{
		"another key's policy":    mk(other, ""),
		"another class's policy":  mk(signer, "lab"),
		"good with a trailing NL": append(append([]byte{}, good...), '\n'),
	} {
		got, err := c.parse(b, mine)
		if name == "good with a trailing NL" {
			// Same policy, other bytes: parsed and verified again, never
			// a different policy.
			if err != nil || got == sp || got.Version != sp.Version || string(got.ApprovedPolicy) != string(sp.ApprovedPolicy) {
				t.Errorf("%s: %v %v", name, got, err)
			}
			continue
		}
		if err == nil || got != nil {
			t.Errorf("%s: accepted through the cache (%v)", name, err)
		}
	}
	c.reset()
	if c.sp != nil {
		t.Fatal("reset kept the entry")
	}
}

// Held: A4 writing back a genuine, older signed policy (version below the
// counter) over the installed one: policy show reports it revoked (not
// satisfied, with the reason), and a key use under it fails in the TPM
// (TPM_RC_POLICY at PolicyNV) rather than being let through by provd.
func TestReview71OlderGenuinePolicyWrittenBackIsRevoked(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, nil)
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, Signer: signer.Public()})
	if err != nil {
		t.Fatal(err)
	}
	cur, err := a.t.PCRRead(tpm2.TPMAlgSHA256, []int{7})
	if err != nil {
		t.Fatal(err)
	}
	vals := policy.PCRValues{Bank: policy.BankSHA256, Values: cur}
	mk := func(v uint64) []byte {
		sp, err := SignPKPolicy(signer, vals, v, "", false)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := sp.MarshalJSON()
		return b
	}
	old := mk(*res.Counter)
	if r, err := a.InstallPolicy(ctx, old); err != nil || !r.Satisfied {
		t.Fatalf("install v%d: %+v %v", *res.Counter, r, err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	if r, err := a.InstallPolicy(ctx, mk(*res.Counter+2)); err != nil || !r.Satisfied {
		t.Fatalf("install v%d: %+v %v", *res.Counter+2, r, err)
	}
	if err := a.st.Update(ctx, func(tx *store.Tx) error { return tx.WriteBlob(blobPolicy, old) }); err != nil {
		t.Fatal(err)
	}
	ps, err := a.ShowPolicy(ctx)
	if err != nil || ps.Satisfied || ps.Reason == "" || ps.Signed == nil || ps.Signed.Version != *res.Counter || ps.Signed.Counter != *res.Counter+2 {
		t.Fatalf("policy show over the written-back v%d: %+v %v", *res.Counter, ps, err)
	}
	d := sha256.Sum256([]byte("x"))
	_, err = a.Sign(ctx, "k", d[:], api.SignOptions{})
	var pe *api.PolicyError
	if !errors.As(err, &pe) || !errors.Is(err, tpm2.TPMRCPolicy) {
		t.Fatalf("sign under the written-back revoked policy: %v, want a policy error from the TPM (TPM_RC_POLICY)", err)
	}
}
