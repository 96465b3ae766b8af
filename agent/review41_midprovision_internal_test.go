package agent

// Review 41: the SRK evicted by another program while a provision works
// (the cached SRK is a transient copy when the commit's
// tpm.PersistSRKAgain runs).
//
// Attack (another local process with the owner hierarchy's empty
// authorization, e.g. another provd's zeroize --srk of another state
// directory, or tpm2_evictcontrol): the SRK at 0x81000001 is evicted while
// a provision in this process works. Provision, unlike a PK's use, does
// not set tpm.PersistMissingSRK: a command that meets the empty handle has
// srkAgain make a transient copy (TransientSRKOnly), and the commit's
// PersistSRKAgain persists that copy.
//
// HELD: TestReview41EvictedBeforeThePKsCreateLoaded (one-shot and daemon).
// Evicted right before the PK's TPM2_CreateLoaded: srkAgain sends it
// again under a transient copy, D is made under the PK, and the commit
// persists the copy at 0x81000001 (PersistSRKAgain: cached copy, srkAs
// persists it and flushes it). The state is provisioned, the SRK is there
// with its pinned name, nothing is left loaded.
//
// HELD: TestReview41EvictedBeforeThePKsSession (one-shot and daemon).
// Evicted after provision's authenticated PCR read, before the session
// that guards the PK's TPM2_CreateLoaded (provision's PersistSRK sends
// nothing then: the SRK is cached): the session's start meets the empty
// handle and srkAgain makes the transient copy, the CreateLoaded goes
// under it, and the commit persists it: provisioned, SRK there with the
// pinned name, nothing loaded, the new PK works.
//
// HELD (by reading, no test): the commit's PersistSRKAgain cannot persist
// a key other than the SRK through provd that A1 could not persist
// itself: TPM2_EvictControl takes the owner's (empty) password, no HMAC,
// so its object handle is the bus's to rewrite on any persist; the copy
// it would persist was checked against the pin when made (pinnedSRK).
import (
	"context"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// review41EvictOnce is a hook that evicts the SRK through next (another
// program) before the first command match says yes to, once armed says so.
func review41EvictOnce(t *testing.T, match func(cmd []byte) bool, done *bool) swtpmtest.Hook {
	return swtpmtest.BeforeOnce(match, done, func(next transport.TPM) { review40EvictSRK(t, next) })
}

func review41MidProvision(t *testing.T, daemon bool, match func(armed *bool) func(cmd []byte) bool) (err error) {
	t.Helper()
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	s := &review32Steps{t: t, env: env, b: b, dir: t.TempDir() + "/state", daemon: daemon}
	s.open()
	armed, done := false, false
	b.Set(review41EvictOnce(t, match(&armed), &done))
	_, err = s.a.Provision(ctx, review8Req())
	b.Set(nil)
	if !done {
		t.Fatalf("not mounted (%v)", err)
	}
	t.Logf("provision with the SRK evicted by another program mid-way: %v (SRK there after: %v)", err, review26SRKThere(env))
	review32Unheld(t, env, s.a, "provision")
	if err == nil {
		if !review40Provisioned(t, s.dir) {
			t.Errorf("provision succeeded, the state is not provisioned")
		}
		if got, pinned := review41SRKName(env), s.a.t.PinnedSRKName(); len(pinned) == 0 || string(got) != string(pinned) {
			t.Errorf("provisioned state, 0x81000001 holds %x, the SRK is %x", got, pinned)
		}
		// The new PK works.
		if _, err := s.a.CreateKey(ctx, review41KeyReq("after")); err != nil {
			t.Errorf("key create after that provision: %v", err)
		}
	}
	return err
}

func TestReview41EvictedBeforeThePKsCreateLoaded(t *testing.T) {
	for _, daemon := range []bool{false, true} {
		t.Run(review26Mode(daemon), func(t *testing.T) {
			err := review41MidProvision(t, daemon, func(*bool) func([]byte) bool {
				return func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == tpm2.TPMCCCreateLoaded }
			})
			if err != nil {
				t.Errorf("provision with the SRK evicted before the PK's TPM2_CreateLoaded: %v", err)
			}
		})
	}
}

// TestReview41EvictedBeforeThePKsSession: evicted after provision's
// authenticated PCR read (the last command before provision's PersistSRK,
// which sends nothing when the SRK is cached), i.e. before the session
// that guards the PK's TPM2_CreateLoaded starts.
func TestReview41EvictedBeforeThePKsSession(t *testing.T) {
	for _, daemon := range []bool{false, true} {
		t.Run(review26Mode(daemon), func(t *testing.T) {
			err := review41MidProvision(t, daemon, func(armed *bool) func([]byte) bool {
				return func(cmd []byte) bool {
					switch swtpmtest.CommandCode(cmd) {
					case tpm2.TPMCCPCRRead:
						*armed = true
					case tpm2.TPMCCStartAuthSession:
						return *armed
					}
					return false
				}
			})
			if err != nil {
				t.Errorf("provision with the SRK evicted before the session guarding the PK's creation: %v", err)
			}
		})
	}
}

// review41KeyReq is a key create request for name.
func review41KeyReq(name string) api.CreateRequest {
	return api.CreateRequest{Name: name, Type: "ecc-p256"}
}
