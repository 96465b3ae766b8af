package server

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provd/provd/audit"
	"github.com/provd/provd/test/swtpmtest"
)

// FLAW (failed before the mend: the count written holding the closed queue): refusals counted while an operation holds the queue through the
// stop never reach the trail. Run writes the count after the drain with
// the drain's own context (dctx: what is left of DrainTimeout, 10 s in
// the unit), at the queue's turn: behind an operation that outlasts it (a
// key's creation, an RSA keygen, a slow TPM, which review 33's stop waits
// for up to CloseTimeout) it gives up, logs "refusal count not audited
// before the stop", and the queue closes. The count's own goroutine,
// waiting in the queue since the refusals, is then turned away as
// stopping (q.closed, errStopping) at its turn, and the counts die with
// the process. Who: a caller with no role flooding refused requests
// while a long operation runs (its own records time out, then all are
// counted), then a stop (an upgrade, a restart, an administrator): the
// trail shows nothing of the flood, though the threat model says the
// count is written "after the drain when the daemon stops" (review 55's
// mend for exactly this loss).
// Mend: write the count inside queue.close's turn (close takes the slot
// once the operation ends: write the count there, before closed turns
// everything away, bounded by CloseTimeout), or give Run's
// writeRefusalCount the close timeout, not the drain's remainder, and let
// a daemon-own waiter admitted before close run.
func TestReview56RefusalCountLostWhenAnOperationOutlastsTheDrain(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	env.CloseTPM()
	state := filepath.Join(t.TempDir(), "state")
	d := startDaemon(t, env, state, 300*time.Millisecond, 20*time.Second)
	d.srv.timeout.Store(int64(200 * time.Millisecond))
	release := holdQueue(t, d.srv, func(stop <-chan struct{}) error { <-stop; return nil })
	released := false
	defer func() {
		if !released {
			release()
		}
	}()
	const flood = maxRefusals + 4
	refuseMany(t, d.srv, flood)() // every refusal counted: the records waited past the request timeout
	if !d.srv.uncounted.any() || !d.srv.countWriter.Load() {
		t.Fatalf("after the flood: counted %v, writer %v; want both", d.srv.uncounted.any(), d.srv.countWriter.Load())
	}
	d.stop()
	// The drain ends (no connection is open), and the stop begins to
	// close the queue behind the operation (review 76: this waited for a
	// log line the daemon no longer writes, its whole 10 s each run).
	select {
	case <-d.srv.q.stopping:
	case <-time.After(10 * time.Second):
		t.Fatal("the queue does not begin to close 10 s after the stop")
	}
	released = true
	release() // the operation ends within the close timeout
	select {
	case err := <-d.done:
		t.Logf("Run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return")
	}
	recs, err := audit.ReadRecords(filepath.Join(state, audit.FileName))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if strings.Contains(r.Objects["refused"], "refusals not recorded one by one (uid 4242: ") {
			return
		}
	}
	var lines []string
	for _, l := range strings.Split(d.logs.String(), "\n") {
		if strings.Contains(l, "refusal count") {
			lines = append(lines, l)
		}
	}
	t.Errorf("%d refusals of uid 4242 counted before the stop: no count in the trail (%d records); the daemon logged:\n%s",
		flood, len(recs), strings.Join(lines, "\n"))
}
