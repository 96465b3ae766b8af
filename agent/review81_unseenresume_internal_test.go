package agent

import (
	"context"
	"crypto/sha256"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// review81SuspendBeforeSign suspends and resumes the TPM, unseen by provd,
// just before the first TPM2_Sign that follows a TPM2_Load under the PK:
// TPM2_Shutdown(STATE) as the kernel sends it before a suspend on
// /dev/tpm0, TPM_Init (swtpm's control channel), TPM2_Startup(STATE) as
// firmware sends it at resume; the connection stays, no command of
// provd's meets TPM_RC_INITIALIZE, and the transient objects and loaded
// sessions are gone (TPM 2.0 Part 1: any Startup). Then the sign is
// passed on. done reports whether it happened.
func review81SuspendBeforeSign(t *testing.T, env *swtpmtest.Env, bus *swtpmtest.Bus) (done func() bool) {
	var mu sync.Mutex
	loaded, resumed := false, false
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case resumed:
		case review77LoadUnderT(cmd):
			loaded = true
		case loaded && swtpmtest.CommandCode(cmd) == tpm2.TPMCCSign:
			resumed = true
			if _, err := (tpm2.Shutdown{ShutdownType: tpm2.TPMSUState}).Execute(next); err != nil {
				t.Errorf("suspend: TPM2_Shutdown(STATE): %v", err)
			}
			env.Reset()
			if _, err := (tpm2.Startup{StartupType: tpm2.TPMSUState}).Execute(next); err != nil {
				t.Errorf("resume: TPM2_Startup(STATE): %v", err)
			}
		}
		return nil, nil, false
	})
	return func() bool {
		bus.Set(nil)
		mu.Lock()
		defer mu.Unlock()
		return resumed
	}
}

// FLAW (failed before the mend: exit 15; mended: the key is loaded and
// used once more, and signs): an honest suspend and resume between a key's load and its use is
// reported as a forged TPM answer (exit 15). On /dev/tpm0 (no resource
// manager: a kernel without one, or `tpm: /dev/tpm0`) the kernel sends
// TPM2_Shutdown(STATE) before a suspend and firmware TPM2_Startup(STATE)
// at resume; the device stays open, no TPM_RC_INITIALIZE comes, and every
// transient object is gone (tpm/shared.go names this very event: "a
// suspend and resume behind /dev/tpm0, after which loaded sessions are
// gone and no TPM_RC_INITIALIZE comes"). A process frozen for the suspend
// between its TPM2_Load and its TPM2_Sign (separate writes) meets
// TPM_RC_REFERENCE_H0 at the sign. provd's generation did not move (no
// Startup of its own, no lost connection), so refusedFresh calls it "no
// object at the handle: forged", exit 15, whose remedy is "check for
// hardware between the CPU and the TPM"; before review 80 it was exit 7.
// Steps: a created key; (1) a one-shot agent, (2) a daemon (KeepSession)
// with the key's cache entry dropped; the sign with the suspend and resume
// just before TPM2_Sign. Seen: exit 15 in both. Nothing is on the bus.
// Mend: a freshly loaded key whose handle the TPM says holds nothing
// (REFERENCE_H0/HANDLE/VALUE for handle 1) is first loaded again and used
// once more, as a cached one is (the honest case then signs); only a
// refusal of the second use in the same generation is forged. Or ask the
// TPM in an authenticated answer whether it was restarted or resumed since
// the load (TPM2_ReadClock's restartCount and resetCount in an audit
// session salted to the pinned SRK) before calling the refusal forged.
func TestReview81UnseenResumeBetweenLoadAndSignIsForged(t *testing.T) {
	t.Parallel()
	for _, daemon := range []bool{false, true} {
		name := "oneshot"
		if daemon {
			name = "daemon"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			bus := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
			env.RequireSimulator()
			a := provisioned(t, env)
			if daemon {
				dir := a.dir
				a.Close()
				var err error
				if a, err = New(Config{TPM: env.TPM, StateDir: dir, KeepSession: true}); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { a.Close() })
			}
			if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "c", Type: "ecc-p256"}); err != nil {
				t.Fatal(err)
			}
			if daemon {
				signVerifies(t, a, a, "c")
				a.pk = nil
			}
			if err := a.keys.Drop("c"); err != nil {
				t.Fatal(err)
			}
			done := review81SuspendBeforeSign(t, env, bus)
			d := sha256.Sum256([]byte("c"))
			_, err := a.Sign(ctx, "c", d[:], api.SignOptions{})
			if !done() {
				t.Fatal("not mounted: no sign after a load under the PK")
			}
			t.Logf("sign with a suspend and resume between load and sign: %v (exit %d)", err, api.ExitCode(err))
			if c := api.ExitCode(err); c == api.ExitIdentity {
				t.Errorf("an honest suspend and resume between the key's load and its sign: exit %d (forged: %v), want a signature or an honest error", c, err)
			}
			signVerifies(t, a, a, "c")
			if left := unheldLeft(t, a); len(left) != 0 {
				t.Errorf("held by nobody after the next sign: %v", left)
			}
		})
	}
}
