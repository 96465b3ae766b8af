package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

func newAgent(t *testing.T, env *swtpmtest.Env, dir string) *agent.Agent {
	t.Helper()
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ag.Close() })
	return ag
}

// signingAgent is newAgent on a fresh state, provisioned (PCR 7, the test
// officer, trust on first use) with one ECC P-256 signing key, "sig": what
// the fault tests start from.
func signingAgent(t *testing.T, env *swtpmtest.Env) *agent.Agent {
	t.Helper()
	ag, _ := signingState(t, env)
	return ag
}

// signingState is signingAgent with its state directory, for a test that
// opens it again as a one-shot process would.
func signingState(t *testing.T, env *swtpmtest.Env) (*agent.Agent, string) {
	t.Helper()
	ctx := context.Background()
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "sig", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	return ag, dir
}

func extend16(t *testing.T, tp *tpm.TPM) {
	t.Helper()
	d := sha256.Sum256([]byte("debug event"))
	if err := tp.PCRExtend(16, tpm2.TPMAlgSHA256, d[:]); err != nil {
		t.Fatal(err)
	}
}

func TestProvisionSealUnsealPCR16(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	res, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7, 16}, AllowResettable: true})
	if err != nil {
		t.Fatalf("provision: %v", err)
	}
	if res.PolicyKind != agent.PolicyPCR || res.DName == "" {
		t.Fatalf("result %+v", res)
	}
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true}); !errors.Is(err, api.ErrAlreadyProvisioned) {
		t.Fatalf("second provision: %v", err)
	}
	for _, size := range []int{16, 128, 129, 5000} {
		secret := bytes.Repeat([]byte{byte(size)}, size)
		blob, err := ag.Seal(ctx, api.SealRequest{Data: secret})
		if err != nil {
			t.Fatalf("seal %d: %v", size, err)
		}
		got, err := ag.Unseal(ctx, blob)
		if err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("unseal %d: %v", size, err)
		}
	}
	blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("s3cret")})
	if err != nil {
		t.Fatal(err)
	}
	extend16(t, env.TPM)
	_, err = ag.Unseal(ctx, blob)
	var pe *api.PolicyError
	if !errors.As(err, &pe) || !errors.Is(err, tpm.ErrPolicyNotSatisfied) {
		t.Fatalf("unseal after PCR 16 changed: %v", err)
	}
	if len(pe.Differ) != 1 || pe.Differ[0] != 16 {
		t.Fatalf("differ = %v, want [16]", pe.Differ)
	}
	if _, err := ag.AuditVerify(context.Background()); err != nil {
		t.Fatalf("audit verify: %v", err)
	}
}

// stateDir is a fresh private state directory (store.Open refuses a
// group/other-accessible one).
func stateDir(t *testing.T) string {
	t.Helper()
	return t.TempDir() + "/state"
}

// Neither seal nor unseal puts the secret on the bus in plaintext (the unseal
// runs in one salted policy session that also encrypts the response).
func TestSealUnsealSecretNeverOnTheBus(t *testing.T) {
	rec := &swtpmtest.Recorder{}
	env := swtpmtest.Start(t, swtpmtest.WithRecorder(rec))
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	secret := make([]byte, 64)
	rand.Read(secret)
	blob, err := ag.Seal(ctx, api.SealRequest{Data: secret})
	if err != nil {
		t.Fatal(err)
	}
	got, err := ag.Unseal(ctx, blob)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("unseal: %v", err)
	}
	if i := rec.Leak(secret); i >= 0 {
		t.Fatalf("secret bytes %d..%d crossed the TPM interface in plaintext", i, i+8)
	}
}

// HMAC data and the MAC cross the bus only encrypted, on the one-shot path
// and on the sequence path (more than one TPM buffer).
func TestHMACNeverOnTheBus(t *testing.T) {
	rec := &swtpmtest.Recorder{}
	env := swtpmtest.Start(t, swtpmtest.WithRecorder(rec))
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if _, err := officertest.Derive(t, ctx, ag, api.DeriveRequest{Name: "mac", Label: "mac", Type: "hmac-sha256"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{64, 3000} {
		data := make([]byte, n)
		rand.Read(data)
		rec.Reset()
		mac, err := ag.HMAC(ctx, "mac", data)
		if err != nil || len(mac) != 32 {
			t.Fatalf("HMAC of %d bytes: %v", n, err)
		}
		if i := rec.Leak(data); i >= 0 {
			t.Errorf("HMAC of %d bytes: data bytes %d..%d crossed the bus in plaintext", n, i, i+8)
		}
		if i := rec.Leak(mac); i >= 0 {
			t.Errorf("HMAC of %d bytes: the MAC crossed the bus in plaintext", n)
		}
	}
}

// Why PCRs 16..23 are refused in policies: software resets them. Sealed to
// PCR 16 (allowed explicitly), a secret locked by an extend of PCR 16 is
// unlocked again by TPM2_PCR_Reset, from any process. Without
// AllowResettable, provision and seal refuse such a policy before any TPM
// command.
func TestResettablePCRsAreRefused(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	for _, pcrs := range [][]int{{7, 16}, {23}, {17}} {
		if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: pcrs}); !errors.Is(err, api.ErrNotPermitted) {
			t.Errorf("provision over PCRs %v: %v, want not permitted", pcrs, err)
		}
	}
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.Seal(ctx, api.SealRequest{Data: []byte("s"), PCRs: []int{16}}); !errors.Is(err, api.ErrNotPermitted) {
		t.Errorf("seal to PCR 16: %v, want not permitted", err)
	}

	// The attack the refusal prevents.
	blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("locked by PCR 16"), PCRs: []int{16}, AllowResettable: true})
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("a bad boot"))
	if err := env.TPM.PCRExtend(16, tpm2.TPMAlgSHA256, d[:]); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.Unseal(ctx, blob); !errors.Is(err, tpm.ErrPolicyNotSatisfied) {
		t.Fatalf("unseal after PCR 16 moved: %v", err)
	}
	if _, err := (tpm2.PCRReset{PCRHandle: tpm2.AuthHandle{Handle: 16, Auth: tpm2.PasswordAuth(nil)}}).Execute(env.TPM); err != nil {
		t.Fatal(err)
	}
	if got, err := ag.Unseal(ctx, blob); err != nil || string(got) != "locked by PCR 16" {
		t.Fatalf("after a PCR reset: %q %v (the reset should have unlocked it: that is why 16 is refused)", got, err)
	}
}
