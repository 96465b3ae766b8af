package agent_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// TPM faults between provd's operations, each a different way for the
// TPM's volatile state to go: a reset the connection survives (swtpm's
// TPM_Init on its control channel: no I/O error tells provd, only
// TPM_RC_INITIALIZE), a graceful restart resumed by firmware's
// Startup(STATE) or left for provd's Startup(CLEAR), a migration (the
// connection breaks, the TPM's volatile state comes back), a power cut.
// Every handle provd holds in its key cache may be gone, its number free
// for the next object loaded (under a signed PK policy, the policy signer's
// key, loaded and flushed in each key use). Every operation after each fault
// succeeds at once; the only errors the TPM gave are the ones that tell
// provd what happened (INITIALIZE; the cached key's handle not loaded; its
// saved context refused), never an authorization failure from a command
// sent to another object at a reused handle; the lockout counter stays 0;
// nothing is left loaded.
func TestTPMFaultsUnderProvd(t *testing.T) {
	t.Parallel()
	codes := &rcLog{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(func(next transport.TPM) transport.TPM { codes.next = next; return codes }))
	env.RequireSimulator()
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	res, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, Signer: signer.Public(), AllowResettable: true})
	if err != nil {
		t.Fatal(err)
	}
	install := func() {
		t.Helper()
		sp, err := agent.SignPKPolicy(signer, currentValues(t, env.TPM, 7), *res.Counter, "", true)
		if err != nil {
			t.Fatal(err)
		}
		b, err := sp.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		if r, err := ag.InstallPolicy(ctx, b); err != nil || !r.Satisfied {
			t.Fatalf("install: %+v %v", r, err)
		}
	}
	install()
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "sig", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	if _, err := officertest.Derive(t, ctx, ag, api.DeriveRequest{Name: "mac", Label: "mac", Type: "hmac-sha256"}); err != nil {
		t.Fatal(err)
	}
	blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("across the reset")})
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("m"))
	for round, fault := range []struct {
		name  string
		cause func()
		wipes bool // PCRs read zero after it
	}{
		{"reset", env.Reset, true},
		{"reset", env.Reset, true},
		{"hibernation, resumed (Startup(STATE))", func() { env.Hibernate(true) }, false},
		{"hibernation, not resumed (provd's Startup(CLEAR))", func() { env.Hibernate(false) }, true},
		{"migration", env.Migrate, false},
		{"power cut", env.PowerCut, true},
	} {
		// One key resident, the other context-saved, at the reset.
		if _, err := ag.HMAC(ctx, "mac", []byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := ag.Sign(ctx, "sig", d[:], api.SignOptions{}); err != nil {
			t.Fatal(err)
		}
		mark := sha256.Sum256([]byte("before the reset"))
		if err := env.TPM.PCRExtend(14, tpm2.TPMAlgSHA256, mark[:]); err != nil {
			t.Fatal(err)
		}
		codes.reset()
		fault.cause()
		if _, err := ag.Sign(ctx, "sig", d[:], api.SignOptions{}); err != nil {
			t.Fatalf("round %d, %s: sign after it: %v", round, fault.name, err)
		}
		if _, err := ag.HMAC(ctx, "mac", []byte("x")); err != nil {
			t.Fatalf("round %d, %s: HMAC after it: %v", round, fault.name, err)
		}
		if got, err := ag.Unseal(ctx, blob); err != nil || string(got) != "across the reset" {
			t.Fatalf("round %d, %s: unseal: %q %v", round, fault.name, got, err)
		}
		if _, err := ag.AuditVerify(ctx); err != nil {
			t.Fatalf("round %d, %s: audit verify: %v", round, fault.name, err)
		}
		for _, rc := range codes.failures() {
			switch {
			case rc == tpm2.TPMRCInitialize, rc == tpm2.TPMRCReferenceH0, rc&0xBF == tpm2.TPMRCIntegrity: // format 1 without its parameter number
			default:
				t.Errorf("round %d, %s: the TPM answered %v after it", round, fault.name, rc)
			}
		}
		vals, err := env.TPM.PCRRead(tpm2.TPMAlgSHA256, []int{14})
		if err != nil || (string(vals[14]) == string(make([]byte, 32))) != fault.wipes {
			t.Fatalf("round %d, %s: PCR 14 is %x (%v): the fault was not the one named", round, fault.name, vals[14], err)
		}
		info, err := env.TPM.Info()
		if err != nil {
			t.Fatal(err)
		}
		if info.Lockout.Counter != 0 {
			t.Fatalf("round %d, %s: the lockout counter is %d after it", round, fault.name, info.Lockout.Counter)
		}
	}
	if err := ag.Close(); err != nil {
		t.Fatal(err)
	}
}

// rcLog notes the error code of every command that got one.
type rcLog struct {
	next transport.TPM
	mu   sync.Mutex
	bad  []tpm2.TPMRC
}

func (l *rcLog) Send(cmd []byte) ([]byte, error) {
	rsp, err := l.next.Send(cmd)
	if err == nil && len(rsp) >= 10 {
		if rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10])); rc != tpm2.TPMRCSuccess {
			l.mu.Lock()
			l.bad = append(l.bad, rc)
			l.mu.Unlock()
		}
	}
	return rsp, err
}

func (l *rcLog) reset() { l.mu.Lock(); l.bad = nil; l.mu.Unlock() }

func (l *rcLog) failures() []tpm2.TPMRC {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]tpm2.TPMRC(nil), l.bad...)
}
