package agent

// The forty-sixth review: sealing to a signed PCR policy, the policy
// counter that revokes old signed policies, and policy install (its
// concurrent-install race, found and not mended, is docs/threat-model.md's).

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// review46A2Run is what A2 (or A5, root with the state directory) sends on
// its own connection to satisfy PolicyAuthorize with a signed policy: its
// own unsalted policy session, PolicyPCR and PolicyNV over what sp
// approves (PolicyNV left out with skipNV), LoadExternal of load (in hier)
// and VerifySignature of sp's signature over aHash(approved, ref), then
// PolicyAuthorize naming keySign (nil: the loaded key's name) with the
// ticket. It returns the session's digest at the end, or the step the TPM
// refused.
type review46A2Run struct {
	sp      *policy.SignedPolicy
	ref     []byte
	skipNV  bool
	hier    tpm2.TPMIRHHierarchy
	load    crypto.PublicKey
	keySign []byte
}

func (r review46A2Run) run(t *testing.T, next transport.TPM) (digest []byte, step string, err error) {
	t.Helper()
	ss, err := swtpmtest.StartOwnPolicySession(next)
	if err != nil {
		t.Fatal(err)
	}
	defer (tpm2.FlushContext{FlushHandle: ss.SessionHandle}).Execute(next)
	h := ss.SessionHandle
	comp, err := r.sp.Values.CompositeDigest(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.PolicyPCR{PolicySession: h, PcrDigest: tpm2.TPM2BDigest{Buffer: comp}, Pcrs: r.sp.Values.Selection()}).Execute(next); err != nil {
		return nil, "PolicyPCR", err
	}
	if !r.skipNV {
		name := tpm2.TPM2BName{Buffer: r.sp.Counter.Name}
		if _, err := (tpm2.PolicyNV{
			AuthHandle:    tpm2.AuthHandle{Handle: r.sp.Counter.Handle, Name: name, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:       tpm2.NamedHandle{Handle: r.sp.Counter.Handle, Name: name},
			PolicySession: h,
			OperandB:      tpm2.TPM2BOperand{Buffer: binary.BigEndian.AppendUint64(nil, r.sp.Version)},
			Operation:     tpm2.TPMEOUnsignedLE,
		}).Execute(next); err != nil {
			return nil, "PolicyNV", err
		}
	}
	load := r.load
	if load == nil {
		load = r.sp.Signer
	}
	pub, err := policy.SignerPublic(load)
	if err != nil {
		t.Fatal(err)
	}
	hier := r.hier
	if hier == 0 {
		hier = tpm2.TPMRHOwner
	}
	key, err := (tpm2.LoadExternal{InPublic: tpm2.New2B(pub), Hierarchy: hier}).Execute(next)
	if err != nil {
		t.Fatal(err)
	}
	defer (tpm2.FlushContext{FlushHandle: key.ObjectHandle}).Execute(next)
	ah := sha256.New()
	ah.Write(r.sp.ApprovedPolicy)
	ah.Write(r.ref)
	ver, err := (tpm2.VerifySignature{
		KeyHandle: tpm2.NamedHandle{Handle: key.ObjectHandle, Name: key.Name},
		Digest:    tpm2.TPM2BDigest{Buffer: ah.Sum(nil)},
		Signature: r.sp.Signature,
	}).Execute(next)
	if err != nil {
		return nil, "VerifySignature", err
	}
	keySign := key.Name
	if r.keySign != nil {
		keySign = tpm2.TPM2BName{Buffer: r.keySign}
	}
	if _, err := (tpm2.PolicyAuthorize{
		PolicySession:  h,
		ApprovedPolicy: tpm2.TPM2BDigest{Buffer: r.sp.ApprovedPolicy},
		PolicyRef:      tpm2.TPM2BDigest{Buffer: r.ref},
		KeySign:        keySign,
		CheckTicket:    ver.Validation,
	}).Execute(next); err != nil {
		return nil, "PolicyAuthorize", err
	}
	d, err := (tpm2.PolicyGetDigest{PolicySession: h}).Execute(next)
	if err != nil {
		t.Fatal(err)
	}
	return d.PolicyDigest.Buffer, "", nil
}

// Held: revocation and class separation hold in the TPM itself, not only in
// provd's software checks. A5 (root, the state directory, its own TPM
// connection, provd out of the way) runs PolicyAuthorize by hand for the
// PK of class "prod": with the signed policy of version c0 after version
// c0+1 was installed (revoked: the TPM refuses PolicyNV; leaving PolicyNV
// out, PolicyAuthorize refuses the digest); with the officer's signature
// for class "lab" (claimed as "lab": another digest than the PK's; claimed
// as "prod": VerifySignature refuses, aHash covers the policyRef); with a policy signed by its own key
// (another digest; its ticket passed off under the officer's name:
// refused); with the officer's genuine ticket made in the NULL hierarchy
// (refused). The control (the installed version) reaches the digest of
// PolicyAuthorize(officer signer, "provd/pk/prod").
func TestReview46RevokedAndForeignSignedPoliciesFailInTheTPM(t *testing.T) {
	bz := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bz))
	ctx := context.Background()
	a := review8Agent(t, env.TPM, t.TempDir()+"/state")
	signer, c0, signed := review46Signed(t, a, "prod")
	parse := func(b []byte) *policy.SignedPolicy {
		sp, err := policy.ParseSignedPolicy(b)
		if err != nil {
			t.Fatal(err)
		}
		return sp
	}
	old, cur := signed(c0, "prod"), signed(c0+1, "prod")
	for _, b := range [][]byte{old, cur} {
		if r, err := a.InstallPolicy(ctx, b); err != nil || !r.Satisfied {
			t.Fatalf("install: %+v %v", r, err)
		}
	}
	if c, err := a.readCounter(); err != nil || c != c0+1 {
		t.Fatalf("counter %d %v, want %d", c, err, c0+1)
	}
	prod, _ := PolicyRef("prod")
	lab, _ := PolicyRef("lab")
	want, err := policy.Policy{policy.Authorize{Signer: signer.Public(), PolicyRef: prod}}.Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	officerName, _ := policy.SignerName(signer.Public())
	mallory, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	vals := parse(cur).Values
	own, err := policy.SignPolicy(mallory, vals, ^uint64(0), prod, CounterRef())
	if err != nil {
		t.Fatal(err)
	}
	next := bz.Next

	if d, step, err := (review46A2Run{sp: parse(cur), ref: prod}).run(t, next); err != nil || string(d) != string(want) {
		t.Fatalf("control: the installed policy by hand: %s %v (digest %x, want %x)", step, err, d, want)
	}
	for _, c := range []struct {
		name string
		r    review46A2Run
	}{
		{"the revoked version", review46A2Run{sp: parse(old), ref: prod}},
		{"the revoked version, PolicyNV left out", review46A2Run{sp: parse(old), ref: prod, skipNV: true}},
		{"the lab class's policy", review46A2Run{sp: parse(signed(c0+1, "lab")), ref: lab}},
		{"the lab class's policy claimed for prod", review46A2Run{sp: parse(signed(c0+1, "lab")), ref: prod}},
		{"A5's own signer", review46A2Run{sp: own, ref: prod}},
		{"A5's own signer under the officer's name", review46A2Run{sp: own, ref: prod, keySign: officerName}},
		{"the officer's ticket from the NULL hierarchy", review46A2Run{sp: parse(cur), ref: prod, hier: tpm2.TPMRHNull}},
	} {
		d, step, err := c.r.run(t, next)
		if err == nil && string(d) == string(want) {
			t.Errorf("%s: the TPM gave the PK's policy digest", c.name)
			continue
		}
		var rc tpm2.TPMRC
		if err != nil && !errors.As(err, &rc) {
			t.Errorf("%s: %s: not the TPM's refusal: %v", c.name, step, err)
		}
		t.Logf("%s: %s %v (digest %x)", c.name, step, err, d)
	}
}

// review46Signed provisions a (a signed PK policy, the test officer, one
// P-256 signing key "sig") and returns the signer, the counter after the
// provision and a maker of the signer's policy over PCR 7 as it is now.
func review46Signed(t *testing.T, a *Agent, class string) (*ecdsa.PrivateKey, uint64, func(version uint64, class string) []byte) {
	t.Helper()
	ctx := context.Background()
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, Signer: signer.Public(), PolicyClass: class})
	if err != nil {
		t.Fatal(err)
	}
	cur, err := a.t.PCRRead(tpm2.TPMAlgSHA256, []int{7})
	if err != nil {
		t.Fatal(err)
	}
	vals := policy.PCRValues{Bank: policy.BankSHA256, Values: cur}
	return signer, *res.Counter, func(version uint64, class string) []byte {
		sp, err := SignPKPolicy(signer, vals, version, class, false)
		if err != nil {
			t.Fatal(err)
		}
		b, err := sp.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
}
