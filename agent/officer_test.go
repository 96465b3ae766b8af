package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// rederive is the attacker of the derivation parent: root on a good boot,
// with the state directory and the TPM. It loads the PK and D through the
// PK's policy, satisfies D's policy with an approval it holds (approved by
// signer, of expr) and derives tmpl, which it chose.
func rederive(t *testing.T, a *Agent, tmpl tpm2.TPMTTemplate, signer crypto.PublicKey, expr policy.Policy, ap *policy.Approval) error {
	t.Helper()
	var in pkInputs
	if err := a.st.View(context.Background(), func(tx *store.Tx) (err error) {
		in, err = a.readPKInputs(tx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	opts := in.opts
	opts.Approved = []policy.Approved{{Policy: expr, Approval: ap}}
	return a.withLoadedPK(in, func(l *loadedPK) (err error) {
		d, err := a.loadD(context.Background(), l)
		if err != nil {
			t.Fatal(err)
		}
		defer a.flush(&err, d.Handle)
		// D's policy, with the objects' authValue: this attacker has the
		// state directory.
		d2 := policy.Policy{policy.Authorize{Signer: signer, PolicyRef: officer.DeriveRef}, policy.AuthValue{}}
		return a.withPolicySession(l.rec, d2, opts, in.auth, func(s tpm2.Session) error {
			obj, err := a.t.CreateLoaded(d, s, tmpl, tpm.Sensitive{})
			if err == nil {
				return errors.Join(errors.New("derived"), a.t.Flush(obj.Handle))
			}
			return err
		})
	})
}

// The attack that worked before (issue 9, part 2): whoever satisfies the
// PK's policy derived a derived key's secret as a keyedHash data object (and
// TPM2_Unseal'd it), or as a duplicable key. Now D derives only the template
// the officer approved: the attacker holds the genuine approval of a recipe
// and the PK's policy, and still every other template fails inside the TPM.
func TestOnlyApprovedRecipesDerive(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	for _, r := range []api.DeriveRequest{
		{Name: "mac", Label: "telemetry", Type: "hmac-sha256"},
		{Name: "tls", Label: "tls", Type: "ecc-p256"},
	} {
		if _, err := officertest.Derive(t, ctx, a, r); err != nil {
			t.Fatal(err)
		}
	}
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var in pkInputs
	if err := a.st.View(ctx, func(tx *store.Tx) (err error) {
		in, err = a.readPKInputs(tx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	pkDigest := in.state.Policy.digest()
	genuine := func(r officer.Recipe) (tpm2.TPMTTemplate, policy.Policy, *policy.Approval) {
		r, kt, err := r.Check()
		if err != nil {
			t.Fatal(err)
		}
		expr, err := officer.DeriveApprovedExpr(in.expr, kt, r, pkDigest)
		if err != nil {
			t.Fatal(err)
		}
		return officer.DerivedTemplate(kt, r, pkDigest), expr, officertest.Approve(t, st.PolicyDigest, api.DeriveRequest{Type: r.Type, Usage: r.Usage, Label: r.Label, Context: r.Context})
	}
	macTmpl, macExpr, macAp := genuine(officer.Recipe{Type: "hmac-sha256", Label: "telemetry"})
	tlsTmpl, tlsExpr, tlsAp := genuine(officer.Recipe{Type: "ecc-p256", Label: "tls"})

	// The attacker's machinery needs every object slot.
	if err := a.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	// The control: the attacker's machinery derives the approved template.
	if err := rederive(t, a, macTmpl, officertest.Public(), macExpr, macAp); err == nil || err.Error() != "derived" {
		t.Fatalf("the approved template through the attacker's own session: %v, want it derived", err)
	}

	// The secret as a data object: same type, label and size; sign, decrypt
	// and restricted clear, userWithAuth set, so TPM2_Unseal would return it.
	data := macTmpl
	data.ObjectAttributes = tpm2.TPMAObject{FixedTPM: true, FixedParent: true, UserWithAuth: true, NoDA: true}
	data.AuthPolicy = tpm2.TPM2BDigest{}
	data.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull}})
	// The ECC key with fixedTPM clear and a policy of the attacker's.
	loose := tlsTmpl
	loose.ObjectAttributes.FixedTPM = false
	loose.ObjectAttributes.UserWithAuth = true
	loose.AuthPolicy = tpm2.TPM2BDigest{}
	// The signing key's recipe as ECDH: the same label, another usage.
	dh := tlsTmpl
	dh.ObjectAttributes.SignEncrypt, dh.ObjectAttributes.Decrypt = false, true

	attacker, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ownExpr := append(policy.Policy{}, in.expr...)
	ownExpr = append(ownExpr, policy.Template{Hash: mustTemplateHash(t, data)})
	ownAp, err := policy.Approve(attacker, ownExpr, officer.DeriveRef)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		tmpl   tpm2.TPMTTemplate
		signer crypto.PublicKey
		expr   policy.Policy
		ap     *policy.Approval
	}{
		{"the HMAC key as a data object, with the HMAC key's approval", data, officertest.Public(), macExpr, macAp},
		{"the ECC key with fixedTPM clear, with its approval", loose, officertest.Public(), tlsExpr, tlsAp},
		{"the signing key as an ECDH key, with its approval", dh, officertest.Public(), tlsExpr, tlsAp},
		{"the data object, approved by the attacker's own key", data, attacker.Public(), ownExpr, ownAp},
	} {
		err := rederive(t, a, c.tmpl, c.signer, c.expr, c.ap)
		if !errors.Is(err, tpm2.TPMRCPolicyFail) {
			t.Errorf("%s: %v, want TPM_RC_POLICY_FAIL from the TPM", c.name, err)
		}
	}
}

func mustTemplateHash(t *testing.T, tmpl tpm2.TPMTTemplate) []byte {
	t.Helper()
	h, err := policy.TemplateHash(tpm2.TPMAlgSHA256, tmpl)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// Domain separation: the recipe's type and usage enter the derivation, so
// one label gives a signing key and an ECDH key that differ (key ecdh is no
// static-DH oracle on the signing key); control characters, which made
// "tls" and "tls\x00" two labels of one look, are refused; approvals are
// checked before anything is sent.
func TestRecipesAreSeparated(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	for _, r := range []api.DeriveRequest{
		{Name: "sign", Label: "tls", Type: "ecc-p256", Usage: catalog.UsageSign},
		{Name: "dh", Label: "tls", Type: "ecc-p256", Usage: catalog.UsageECDH},
	} {
		if _, err := officertest.Derive(t, ctx, a, r); err != nil {
			t.Fatal(err)
		}
	}
	ps, _, err := a.KeyPublic(ctx, "sign")
	if err != nil {
		t.Fatal(err)
	}
	pd, _, err := a.KeyPublic(ctx, "dh")
	if err != nil {
		t.Fatal(err)
	}
	if ps.(*ecdsa.PublicKey).Equal(pd) {
		t.Fatal("a signing key and an ECDH key with one label are the same key")
	}
	for _, label := range []string{"tls\x00", "a\nb", "\x7f", string([]byte{0xff, 0xfe})} {
		if _, err := officertest.Derive(t, ctx, a, api.DeriveRequest{Name: "bad", Label: label, Type: "ecc-p256"}); !errors.Is(err, api.ErrBadInput) {
			t.Errorf("label %q: %v, want ErrBadInput", label, err)
		}
	}
	// An approval of another recipe, or by another key, is refused before
	// any TPM command.
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	other := officertest.Approve(t, st.PolicyDigest, api.DeriveRequest{Label: "other", Type: "ecc-p256"})
	attacker, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	foreign, err := policy.ApproveDigest(attacker, bytes.Repeat([]byte{1}, 32), officer.DeriveRef)
	if err != nil {
		t.Fatal(err)
	}
	// What a refusal costs before any work: the audit record's anchor.
	before := env.TPM.Stats()
	if _, err := a.DeriveKey(ctx, api.DeriveRequest{Name: "", Label: "x", Type: "ecc-p256"}); !errors.Is(err, api.ErrBadInput) {
		t.Fatalf("empty name: %v", err)
	}
	audit := env.TPM.Stats().Sub(before).Commands
	for name, ap := range map[string]*policy.Approval{"none": nil, "another recipe": other, "another signer": foreign} {
		before := env.TPM.Stats()
		_, err := a.DeriveKey(ctx, api.DeriveRequest{Name: "x", Label: "x", Type: "ecc-p256", Approval: ap})
		if !errors.Is(err, api.ErrNotPermitted) {
			t.Errorf("%s: %v, want ErrNotPermitted", name, err)
		}
		if got := env.TPM.Stats().Sub(before).Commands; got > audit {
			t.Errorf("%s: %d TPM commands sent before the refusal", name, got)
		}
	}
}

// Without an officer there is no derivation parent, no derived key and no
// extractable key: nothing that the PK's policy alone would let a caller
// take away.
func TestNoOfficerNoDerivationNoExport(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, &api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}})
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.DName != "" || st.Officer != "" {
		t.Fatalf("status without an officer: D %q officer %q", st.DName, st.Officer)
	}
	if _, err := officertest.Derive(t, ctx, a, api.DeriveRequest{Name: "k", Label: "k", Type: "ecc-p256"}); !errors.Is(err, api.ErrNotPermitted) {
		t.Errorf("derive: %v, want ErrNotPermitted", err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "e", Type: "ecc-p256", Extractable: true}); !errors.Is(err, api.ErrNotPermitted) {
		t.Errorf("create --extractable: %v, want ErrNotPermitted", err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "f", Type: "ecc-p256"}); err != nil {
		t.Errorf("create: %v", err)
	}
}

// Part 3 of the trust issue: an extractable key's duplication branch was
// PK AND PolicyCommandCode(Duplicate), so whoever satisfied the PK's policy
// duplicated it to a parent of its own and read it. Now the branch is the
// officer's approval of one destination.
func TestExtractableGoesOnlyWhereTheOfficerSays(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "ext", Type: "ecc-p256", Extractable: true}); err != nil {
		t.Fatal(err)
	}
	srk, err := a.t.SRK()
	if err != nil {
		t.Fatal(err)
	}
	// The attacker's parent: an ECC storage key whose private part it
	// holds, loaded as a public key (what it would unwrap the duplicate
	// with).
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := priv.PublicKey.Bytes() // 04 || X || Y
	if err != nil {
		t.Fatal(err)
	}
	minePub := srk.Public
	minePub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: pt[1:33]}, Y: tpm2.TPM2BECCParameter{Buffer: pt[33:]}})
	mine, err := tpm2.LoadExternal{InPublic: tpm2.New2B(minePub), Hierarchy: tpm2.TPMRHNull}.Execute(a.t)
	if err != nil {
		t.Fatal(err)
	}
	defer a.t.Flush(mine.ObjectHandle)
	mineH := tpm2.NamedHandle{Handle: mine.ObjectHandle, Name: mine.Name}
	attacker, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)

	if err := duplicateTo(t, a, "ext", srk.Named(), srk.Name.Buffer, officertest.Key()); err != nil {
		t.Fatalf("control: duplication to the approved parent: %v", err)
	}
	for _, c := range []struct {
		name     string
		approved []byte
		approver crypto.Signer
	}{
		{"to its own parent, with the officer's approval of another", srk.Name.Buffer, officertest.Key()},
		{"to its own parent, approved by its own key", mine.Name.Buffer, attacker},
	} {
		err := duplicateTo(t, a, "ext", mineH, c.approved, c.approver)
		if !errors.Is(err, tpm2.TPMRCPolicyFail) {
			t.Errorf("%s: %v, want TPM_RC_POLICY_FAIL from the TPM", c.name, err)
		}
	}
	// The old branch, PK AND PolicyCommandCode(Duplicate), is not in the
	// key's policy: the TPM refuses it at PolicyOR.
	ks, err := a.readKeyState(ctx, "ext", true)
	if err != nil {
		t.Fatal(err)
	}
	old := append(append(policy.Policy{}, ks.pk.expr...), policy.CommandCode{CC: tpm2.TPMCCDuplicate})
	expr, _ := keyPolicy(ks.pk, ks.rec.useCommand(), true)
	branches := expr[0].(policy.Or).Branches
	oldDigest, _ := old.Digest(tpm2.TPMAlgSHA256)
	for _, b := range branches {
		if d, _ := b.Digest(tpm2.TPMAlgSHA256); bytes.Equal(d, oldDigest) {
			t.Fatal("the key's policy still has the branch PK AND PolicyCommandCode(Duplicate)")
		}
	}
	ps, err := a.satisfy(a.t.StartAuthPolicySession, ks.pk.state.Policy, old, ks.pk.opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	orErr := ps.PolicyOR(mustDigests(t, branches))
	if !errors.Is(orErr, tpm2.TPMRCValue) {
		t.Fatalf("PolicyOR from the old branch: %v, want TPM_RC_VALUE", orErr)
	}
}

func mustDigests(t *testing.T, ps []policy.Policy) [][]byte {
	t.Helper()
	var out [][]byte
	for _, p := range ps {
		d, err := p.Digest(tpm2.TPMAlgSHA256)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
	return out
}

// A state whose derivation parent predates the officer (a D with the PK's
// own policy, which anyone satisfying it can derive anything from) is named
// in status, with the way out.
func TestStatusWarnsOfALegacyDerivationParent(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	if err := a.st.Update(ctx, func(tx *store.Tx) error {
		var st pkState
		if err := tx.Get(recPK, &st); err != nil {
			return err
		}
		st.Officer = "" // as a provd before officer approvals recorded it
		return tx.Put(recPK, st)
	}); err != nil {
		t.Fatal(err)
	}
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(st.Warnings, "\n"), "predates the crypto officer") {
		t.Fatalf("status warnings %q", st.Warnings)
	}
}
