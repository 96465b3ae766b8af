package agent

// Review 41: evictSRKUnowed and a local attacker who can write the state
// directory (or put a copy of it in place), without the owner hierarchy.
//
// HELD: TestReview41StateDirWriterGetsNoEviction.
// Attack: evictSRKUnowed evicts whatever 0x81000001 holds (tpm.EvictSRK:
// TPM2_EvictControl with the owner's empty password) when the state, read
// again at the operation's end, is neither provisioned nor pinned. The
// attacker empties the state (its records and blobs; what a copy of a
// wiped state put in place gives) while an operation uses the PK:
// (a) the SRK at 0x81000001 all along: the operation persisted nothing
// (PersistMissingSRK(false) reports nothing), so no eviction: the SRK
// stays; (b) the SRK evicted before the operation (which takes the owner
// hierarchy: someone who can evict it anyway): the PK's use persists it,
// and the end evicts it again: 0x81000001 as it was before the operation.
// In neither case does the attacker get an SRK evicted that was there;
// what the state's wipe costs (the PK's blob, the keys' records) it could
// delete anyway. The eviction decides from the state, never from the bus,
// and only for an SRK this operation itself put back.
import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

func TestReview41StateDirWriterGetsNoEviction(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		evictBefore bool
	}{{"srk-there", false}, {"srk-evicted-before", true}} {
		for _, daemon := range []bool{false, true} {
			t.Run(tc.name+"/"+review26Mode(daemon), func(t *testing.T) {
				s := review32Mount(t, daemon)
				s.a.pk = nil // the PK loads from its blob, under the SRK
				if tc.evictBefore {
					review31EvictSRK(t, s.env, s.b)
				}
				done := false
				s.b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					if done || swtpmtest.CommandCode(cmd) != tpm2.TPMCCCreate {
						return nil, nil, false
					}
					done = true
					review40Wipe(t, s.dir, next, false) // the state emptied, the SRK untouched
					return nil, nil, false
				})
				_, err := s.a.CreateKey(context.Background(), review41KeyReq("k"))
				s.b.Set(nil)
				if !done {
					t.Fatalf("not mounted (%v)", err)
				}
				t.Logf("key create with the state emptied by a state-directory writer: %v (exit %d; SRK there after: %v)", err, api.ExitCode(err), review26SRKThere(s.env))
				if !errors.Is(err, api.ErrNotProvisioned) {
					t.Errorf("want ErrNotProvisioned: %v", err)
				}
				if there := review26SRKThere(s.env); there == tc.evictBefore {
					t.Errorf("SRK at 0x81000001 after: %v, before the operation: %v", there, !tc.evictBefore)
				}
				review40Empty(t, s.dir, "the refused key create")
				review32Unheld(t, s.env, s.a, "the refused key create")
			})
		}
	}
}
