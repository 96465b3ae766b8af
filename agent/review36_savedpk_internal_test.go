package agent

// Review 36: c2ff9ed's withLoadedPKGuard, which calls tpm.PersistSRK before
// the daemon's saved PK context is used, so that "a provisioned state whose
// SRK was evicted (by anyone but zeroize) has it persisted again ...
// whether the PK loads from its blob or from the daemon's saved context".
//
// FLAW (failed before the mend): TestReview36SavedPKUsePersistsTheEvictedSRK —
// a warm daemon (KeepSession; the PK's context saved by an earlier request)
// whose SRK another program evicts: the next seal, which uses the PK from
// its saved context, succeeds but leaves 0x81000001 empty. PersistSRK
// returns the persistent SRK the connection cached without a command; the
// seal's salted StartAuthSession is then answered TPM_RC_HANDLE, and
// srkAgain, under the agent's TransientSRKOnly, makes a transient copy,
// which the operation's end flushes. The SRK comes back only with a later
// request that finds the cache empty.
//
// HELD: nothing is left loaded that the agent does not hold after the
// seal, and the seal works (checked in the same test).
import (
	"context"
	"testing"

	"github.com/provd/provd/api"
)

func TestReview36SavedPKUsePersistsTheEvictedSRK(t *testing.T) {
	for _, rm := range []bool{false, true} {
		t.Run(map[bool]string{false: "exclusive", true: "resource manager"}[rm], func(t *testing.T) {
			ctx := context.Background()
			env, b, a, _ := review35WarmDaemon(t, rm)
			if a.pk == nil {
				t.Fatal("no saved PK context: the daemon path is not the one under test")
			}
			review31EvictSRK(t, env, b)
			_, err := a.Seal(ctx, api.SealRequest{Data: []byte("x")})
			saved := a.pk != nil
			there := review26SRKThere(env)
			review32Unheld(t, env, a, "seal")
			if err != nil {
				t.Fatalf("seal with the SRK evicted under the warm daemon: %v", err)
			}
			if !there {
				t.Errorf("after a seal that used the PK (its saved context kept: %v) in a provisioned state whose SRK another program evicted, "+
					"0x81000001 is still empty: withLoadedPKGuard's PersistSRK answered the cached entry, and the seal ran on a transient copy", saved)
			}
		})
	}
}
