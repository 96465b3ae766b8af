package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// keptAgent is a daemon's agent (KeepSession) on env, provisioned to PCRs 7
// and 16 with one created ECC P-256 signing key, "k".
func keptAgent(t *testing.T, env *swtpmtest.Env) *Agent {
	t.Helper()
	a, err := New(Config{TPM: env.TPM, StateDir: t.TempDir() + "/state", KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ctx := context.Background()
	if _, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7, 16}, AllowResettable: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	return a
}

func signK(a *Agent) ([]byte, error) {
	d := sha256.Sum256([]byte("kept"))
	return a.Sign(context.Background(), "k", d[:], api.SignOptions{})
}

// The daemon keeps one salted policy session between key uses: a warm sign
// is PolicyPCR, PolicyAuthValue and Sign (issue 14), and the session is one
// handle, flushed by every other operation and at Close.
func TestKeptSessionWarmSign(t *testing.T) {
	env := swtpmtest.Start(t)
	a := keptAgent(t, env)
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	kept := a.opHandle()
	if kept == 0 {
		t.Fatal("no session kept after a sign")
	}
	before := env.TPM.Stats()
	sig, err := signK(a)
	if err != nil {
		t.Fatal(err)
	}
	if n := env.TPM.Stats().Sub(before).Commands; n != 3 {
		t.Errorf("warm sign with the kept session: %d TPM commands, want 3 (PolicyPCR, PolicyAuthValue, Sign)", n)
	}
	d := sha256.Sum256([]byte("kept"))
	pub, _, err := a.KeyPublic(context.Background(), "k")
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("signature does not verify")
	}
	if a.opHandle() != kept {
		t.Errorf("session %x replaced by %x between warm signs", kept, a.opHandle())
	}
	// Any other operation flushes it first.
	if _, err := a.Status(context.Background()); err != nil {
		t.Fatal(err)
	}
	if a.opHandle() != 0 {
		t.Error("the kept session outlived a status")
	}
	if left, err := env.TPM.Leftovers(); err != nil || slices.Contains(left, kept) {
		t.Errorf("kept session %x still loaded after another operation: %x %v", kept, left, err)
	}
	// The status read no object: the key stayed resident, and the next
	// sign only starts a session again.
	before = env.TPM.Stats()
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	if n := env.TPM.Stats().Sub(before).Commands; n != 4 {
		t.Errorf("sign after a status: %d TPM commands, want 4 (StartAuthSession, PolicyPCR, PolicyAuthValue, Sign)", n)
	}
	kept = a.opHandle()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if left, err := env.TPM.Leftovers(); err != nil || slices.Contains(left, kept) {
		t.Errorf("kept session %x still loaded after Close: %x %v", kept, left, err)
	}
}

// A one-shot agent (no KeepSession) keeps nothing after the operation.
func TestOneShotSessionFlushed(t *testing.T) {
	env := swtpmtest.Start(t)
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	if _, err := a.CreateKey(context.Background(), api.CreateRequest{Name: "k", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	if a.opHandle() != 0 {
		t.Fatal("a one-shot agent kept its policy session")
	}
	left, err := env.TPM.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range left {
		if ht := tpm2.TPMHT(h >> 24); ht == tpm2.TPMHTPolicySession || ht == tpm2.TPMHTHMACSession {
			t.Errorf("session %x left loaded", h)
		}
	}
}

// A failure leaves no session in use: a sign refused by the PCR policy
// flushes the kept session rather than reuse one whose policy digest went
// out of step, and the next sign starts afresh and works (PCR 16 reset).
func TestKeptSessionDroppedOnFailure(t *testing.T) {
	env := swtpmtest.Start(t)
	a := keptAgent(t, env)
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	kept := a.opHandle()
	d := sha256.Sum256([]byte("debug"))
	if err := env.TPM.PCRExtend(16, tpm2.TPMAlgSHA256, d[:]); err != nil {
		t.Fatal(err)
	}
	if _, err := signK(a); !errors.Is(err, tpm.ErrPolicyNotSatisfied) {
		t.Fatalf("sign with PCR 16 changed: %v, want ErrPolicyNotSatisfied", err)
	}
	if a.opHandle() != 0 {
		t.Error("a session that failed is kept")
	}
	if left, _ := env.TPM.Leftovers(); slices.Contains(left, kept) {
		t.Errorf("failed session %x left loaded", kept)
	}
	if _, err := (tpm2.PCRReset{PCRHandle: tpm2.AuthHandle{Handle: 16, Auth: tpm2.PasswordAuth(nil)}}).Execute(env.TPM); err != nil {
		t.Fatal(err)
	}
	if _, err := signK(a); err != nil {
		t.Fatalf("sign after PCR 16 was reset: %v", err)
	}
	// A TPM reset under the kept session: the next sign starts another.
	env.PowerCut()
	if _, err := signK(a); err != nil {
		t.Fatalf("sign after a power cut: %v", err)
	}
}

// forgedSession authorizes a command with a policy session's handle and an
// HMAC keyed as the attacker can: with the objects' authValue alone (a copy
// of the state directory gives it), without the salt only the pinned SRK
// decrypts.
type forgedSession struct {
	h          tpm2.TPMHandle
	auth       []byte
	nonceTPM   tpm2.TPM2BNonce
	nonceCalle tpm2.TPM2BNonce
}

func (s *forgedSession) Init(transport.TPM) error           { return nil }
func (s *forgedSession) CleanupFailure(transport.TPM) error { return nil }
func (s *forgedSession) NonceTPM() tpm2.TPM2BNonce          { return s.nonceTPM }
func (s *forgedSession) IsEncryption() bool                 { return false }
func (s *forgedSession) IsDecryption() bool                 { return false }
func (s *forgedSession) Encrypt([]byte) error               { return nil }
func (s *forgedSession) Decrypt([]byte) error               { return nil }
func (s *forgedSession) Handle() tpm2.TPMHandle             { return s.h }
func (s *forgedSession) NewNonceCaller() error              { _, err := rand.Read(s.nonceCalle.Buffer); return err }
func (s *forgedSession) Validate(tpm2.TPMRC, tpm2.TPMCC, []byte, []tpm2.TPM2BName, int, *tpm2.TPMSAuthResponse) error {
	return nil
}

func (s *forgedSession) Authorize(cc tpm2.TPMCC, parms, _ []byte, names []tpm2.TPM2BName, _ int) (*tpm2.TPMSAuthCommand, error) {
	// cpHash = H(cc || names || parms); HMAC(auth, cpHash || nonceCaller || nonceTPM || attrs).
	h := sha256.New()
	var cc4 [4]byte
	cc4[0], cc4[1], cc4[2], cc4[3] = byte(cc>>24), byte(cc>>16), byte(cc>>8), byte(cc)
	h.Write(cc4[:])
	for _, n := range names {
		h.Write(n.Buffer)
	}
	h.Write(parms)
	m := hmac.New(sha256.New, s.auth)
	m.Write(h.Sum(nil))
	m.Write(s.nonceCalle.Buffer)
	m.Write(s.nonceTPM.Buffer)
	m.Write([]byte{1}) // continueSession
	return &tpm2.TPMSAuthCommand{Handle: s.h, Nonce: s.nonceCalle, Attributes: tpm2.TPMASession{ContinueSession: true}, Authorization: tpm2.TPM2BData{Buffer: m.Sum(nil)}}, nil
}

// The kept session's HMAC needs its salt: whoever reaches the TPM between
// two requests and satisfies the session's policy with PolicyAuthValue (the
// policy commands need no authorization) cannot compute the HMAC of a sign
// of its own without the salt, even knowing the objects' authValue. (With
// the authValue, PolicyPassword needs no HMAC at all, through any session:
// TestKeptSessionGivesNothingBeyondTheAuthValue.)
func TestKeptSessionHMACNeedsTheSalt(t *testing.T) {
	env := swtpmtest.Start(t)
	a := keptAgent(t, env)
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	kept := a.op.ps
	key, ok, err := a.keys.Get("k", func() string {
		ks, err := a.readKeyState(context.Background(), "k", true)
		if err != nil {
			t.Fatal(err)
		}
		return ks.rec.cacheID()
	}())
	if err != nil || !ok {
		t.Fatalf("the key is not resident: %v %v", ok, err)
	}
	ks, err := a.readKeyState(context.Background(), "k", true)
	if err != nil {
		t.Fatal(err)
	}
	auth, err := ks.objectAuth()
	if err != nil {
		t.Fatal(err)
	}
	// The attacker's own policy steps on the session.
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(7, 16)}}}
	if err := kept.PolicyPCR(sel, nil); err != nil {
		t.Fatal(err)
	}
	if err := kept.PolicyAuthValue(); err != nil {
		t.Fatal(err)
	}
	mine := sha256.Sum256([]byte("the attacker's message"))
	fs := &forgedSession{h: kept.Handle(), auth: auth, nonceTPM: kept.Session().NonceTPM(), nonceCalle: tpm2.TPM2BNonce{Buffer: make([]byte, 32)}}
	_ = fs.NewNonceCaller()
	_, err = (tpm2.Sign{
		KeyHandle:  tpm2.AuthHandle{Handle: key.Handle, Name: key.Name, Auth: fs},
		Digest:     tpm2.TPM2BDigest{Buffer: mine[:]},
		InScheme:   tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})},
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}).Execute(env.TPM)
	if !errors.Is(err, tpm2.TPMRCAuthFail) && !errors.Is(err, tpm2.TPMRCBadAuth) {
		t.Fatalf("a sign through the kept session without its salt: %v, want TPM_RC_AUTH_FAIL or BAD_AUTH", err)
	}
	t.Logf("the TPM refused: %v (authValue %s… known to the attacker)", err, hex.EncodeToString(auth[:4]))
	// The attacker's policy steps spoiled the session: provd's next sign
	// fails once in it and drops it; the one after works.
	_, _ = signK(a)
	if _, err := signK(a); err != nil {
		t.Fatalf("provd's sign after the attempt: %v", err)
	}
}

// Two keys stay loaded (objcache.DefaultMaxResident): the daemon's signs
// alternating between them are 3 TPM commands each, no context moved.
func TestTwoKeysStayResident(t *testing.T) {
	env := swtpmtest.Start(t)
	a := keptAgent(t, env)
	ctx := context.Background()
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k2", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("two"))
	// Both loaded (a cold load evicts every resident key first: a derived
	// key needs the PK, D and itself loaded), then both resident.
	for _, n := range []string{"k", "k2", "k"} {
		if _, err := a.Sign(ctx, n, d[:], api.SignOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	before := env.TPM.Stats()
	for range 3 {
		for _, n := range []string{"k", "k2"} {
			if _, err := a.Sign(ctx, n, d[:], api.SignOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := env.TPM.Stats().Sub(before).Commands; n != 6*3 {
		t.Errorf("6 signs alternating between two keys: %d TPM commands, want 18", n)
	}
	// An HMAC sequence beside two resident keys trims the cache to its own
	// key first (the sequence takes a slot, its salted sessions another
	// while they start), and works, warm as cold.
	if _, err := officertest.Derive(t, ctx, a, api.DeriveRequest{Name: "mac", Label: "mac", Type: "hmac-sha256"}); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 3000)
	for _, n := range []string{"k", "k2", "mac", "k", "k2", "mac"} {
		var err error
		if n == "mac" {
			_, err = a.HMAC(ctx, n, big)
		} else {
			_, err = a.Sign(ctx, n, d[:], api.SignOptions{})
		}
		if err != nil {
			t.Fatalf("%s beside two resident keys: %v", n, err)
		}
	}
	// An audited operation trims the cache to one key first (the gate key
	// and a salted session's start need two slots), and works.
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k3", Type: "ecc-p256"}); err != nil {
		t.Fatalf("an audited operation beside two resident keys: %v", err)
	}
}
