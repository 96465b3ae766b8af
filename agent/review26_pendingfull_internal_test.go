package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// FLAW (failed before the mend): TestReview26FullPendingFileLosesZeroizesWaitingRecord (a local
// client of the daemon, any uid the daemon serves, plus the honest
// officer's killed reanchor of review23MarkWhileDestroying).
//
// Attack: while zeroize --srk destroys, another process's move is marked
// (the officer's reanchor, killed). Under that mark every other provd
// process's record is refused and kept in audit.pending (the daemon's
// refusals of a local client's requests: RecordRefusal), which a local
// client fills to maxPending (1 MiB) by sending requests (simulated here by
// keepPending itself, with records as large as the file allows, in the
// same window: when the mark is placed; a full disk, where keepPending's
// write fails, leaves the same state). Zeroize's last record is then
// refused (finishMove, the gate held) and keepPending refuses it: the file
// is full. 3472264 finds a waiting zeroize only among the pending records
// (zeroizeWaits), and fails open when it is not there.
//
// Expected: the refusal still holds once zeroize returned: no other
// operation makes the move and puts the evicted SRK back before zeroize run
// again, and zeroize's last record (srk_evicted true) is not lost.
//
// Observed: zeroize reports the keys destroyed and the record's keeping
// failed; the next audited operation of any process (here a one-shot
// refusal's record) finds no zeroize record waiting, makes the move
// (newGatedAnchor: the SRK created and persisted again) and goes on: the SRK
// is back and no file holds zeroize's last record.
//
// Suggested mend: what makes finishMove wait for zeroize must not depend on
// room in audit.pending: zeroize's last record is kept whatever the size
// bound (or zeroize writes its own marker, fsynced, e.g. in audit.gate or a
// zeroize file, before it destroys, cleared by zeroize only), and
// zeroizeWaits fails closed (an unreadable or oversized pending file counts
// as a waiting zeroize).
func TestReview26FullPendingFileLosesZeroizesWaitingRecord(t *testing.T) {
	t.Parallel()
	bz := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bz))
	ctx := context.Background()
	dir := t.TempDir() + "/state"
	_, _, _, mark := zeroizeMarkMount(t, env, bz, dir)
	gatePath := filepath.Join(dir, gateFile)
	z := review8Agent(t, env.TPM, dir)
	// The records the daemon keeps for a local client's refused requests
	// under the mark (another process's file writes: no TPM command).
	fill := func() int {
		other := &Agent{dir: dir}
		n := 0
		for big := 200 << 10; big > 64; big /= 2 {
			for other.keepPending(audit.Record{Op: "seal", UID: 1000, Result: "error: not in the sealers group", Objects: map[string]string{"why": strings.Repeat("x", big)}}) == nil {
				n++
			}
		}
		return n
	}
	var mu sync.Mutex
	placed, extends, kept := false, 0, 0
	bz.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		cc := swtpmtest.CommandCode(cmd)
		if cc == tpm2.TPMCCNVExtend {
			extends++
		}
		if extends == 1 && cc == tpm2.TPMCCGetCapability && !placed {
			placed = os.WriteFile(gatePath, mark, 0o600) == nil
			kept = fill()
		}
		return nil, nil, false
	})
	res, zerr := z.Zeroize(ctx, api.ZeroizeOptions{SRK: true})
	bz.Set(nil)
	if !placed || !res.SRKEvicted || review26SRKThere(env) || !errors.Is(zerr, errZeroizeUnfinished) {
		t.Fatalf("not mounted: placed %v; zeroize %v (srk_evicted %v)", placed, zerr, res.SRKEvicted)
	}
	t.Logf("zeroize --srk: %v (%d refusals kept while it destroyed); a zeroize record waiting: %v", zerr, kept, z.zeroizeWaits())
	next := review8Agent(t, env.TPM, dir)
	nerr := next.RecordRefusal(ctx, "seal", "not in the sealers group")
	back := review26SRKThere(env)
	var holders []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if b, err := os.ReadFile(filepath.Join(dir, e.Name())); err == nil && strings.Contains(string(b), `"srk_evicted":"true"`) {
			holders = append(holders, e.Name())
		}
	}
	t.Logf("the next record: %v; the SRK back %v; files holding zeroize's last record: %v", nerr, back, holders)
	if back {
		t.Errorf("zeroize --srk refused its last record under a mark, audit.pending full; one record of another process later the SRK is back at 0x%08x", uint32(tpm.SRKHandle))
	}
	if len(holders) == 0 {
		t.Errorf("zeroize's last record (srk_evicted true) is in no file")
	}
}
