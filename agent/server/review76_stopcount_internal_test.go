package server

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/provd/provd/api"
	"github.com/provd/provd/internal/ratelimit"
)

// FLAW (a regression of 7216644 with 164a04b; failed before the mend: the
// timed wait ends errStopping, and the writer that ends after the stop's
// last count logs what is left): a refusal counted after the stop's last count is lost from both
// the trail and the journal's "not audited" line whenever a count was
// written less than countEvery before it, which is always so when the
// stop itself wrote a count (its lastCount is then "now"). 7216644 claims
// such a refusal "reaches the journal with its caller"
// (TestRefusalCountedAfterTheStopIsLogged), but that test sets lastCount
// to nil first: with a recent lastCount the writer goes to
// writeRefusalCount's timer wait, whose <-s.q.stopping case returns nil
// ("the stop writes what is left"), although the stop has already run its
// last count; countRefusal's switch sees no errStopping, logs nothing,
// and the count stays in s.uncounted until the process exits. Run's own
// take after close has already run. Who: a caller with no role refused
// while the daemon stops after a flood (a handler still running past a
// timed-out drain): the refusal is in no count record and no count line
// (only the per-request "request refused" warning remains, and nothing
// says it was not audited). Here the sequence is Run's, step by step:
// a count written, a second waiting for its minute, the queue closed with
// Run's lastCount, Run's take, then one more refusal through the handler.
// Secure: within 10 s the writer has ended and uid 4343's refusal is in
// the trail or in a "refusal count not audited" journal line; nothing is
// left held.
func TestReview76RefusalAfterTheStopsCountIsLost(t *testing.T) {
	t.Parallel()
	ts := serveTPM(t, func(s *Server) {
		s.oneByOne = ratelimit.New(refusalRate, 0, nil) // every refusal counted
		s.countEvery = time.Hour
	})
	refuse := func(uid int) {
		if code, body := handlerRequest(ts.Server, uid, api.RouteKeyCreate, `{}`); code != http.StatusForbidden {
			t.Fatalf("a caller with no role: HTTP %d %s, want 403", code, body)
		}
	}
	settle := func(what string, cond func() bool) {
		for deadline := time.Now().Add(10 * time.Second); !cond() && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		if !cond() {
			t.Fatalf("after 10 s: %s", what)
		}
	}
	refuse(4242) // the first count is written at once
	settle("the first count is not written", func() bool { return !ts.uncounted.any() && !ts.countWriter.Load() })
	refuse(4242) // the second waits for its hour
	if !ts.countWriter.Load() {
		t.Fatal("no writer waits for the second count")
	}

	// Run's deferred stop, as daemon.go does it.
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lastCount := func() {
		if err := ts.recordRefusalCount(cctx); err != nil {
			t.Errorf("the stop's last count: %v", err)
		}
	}
	if err := ts.q.close(cctx, lastCount); err != nil {
		t.Fatal(err)
	}
	if c := ts.uncounted.take(); len(c) > 0 {
		ts.log.Error("refusal count not audited: the daemon stopped", "refusals", c.String())
	}
	settle("the waiting writer did not end at the stop", func() bool { return !ts.countWriter.Load() })
	if _, _, counted := review73Trail(t, ts, []int{4242}); counted[4242] != 2 {
		t.Fatalf("uid 4242's refusals in the trail's counts: %d, want 2", counted[4242])
	}

	// A refusal after the stop's last count (a handler still running).
	refuse(4343)
	for deadline := time.Now().Add(10 * time.Second); ts.countWriter.Load() && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if ts.countWriter.Load() {
		t.Fatal("the count's writer still runs 10 s after the refusal")
	}
	_, _, counted := review73Trail(t, ts, []int{4343})
	logged := false
	for _, l := range strings.Split(ts.logs.String(), "\n") {
		if strings.Contains(l, "refusal count not audited") && strings.Contains(l, "uid 4343: 1") {
			logged = true
		}
	}
	if counted[4343] == 0 && !logged {
		t.Errorf("uid 4343's refusal after the stop's last count: not in the trail, not in a \"refusal count not audited\" journal line; still held in memory: %v", ts.uncounted.any())
	}
	if ts.uncounted.any() {
		t.Errorf("counts still held after the writer ended: %s", ts.uncounted.take().String())
	}
}

// Held: the queue's stop channel turns away only waits that meet a closed
// queue. Before close, a request waiting behind a held operation runs when
// it ends (never busy), and a second request after it too; at close, the
// requests still waiting (a client's, a refusal's record, the daemon's
// own) end with errStopping at once, before the operation holding the
// queue ends; that operation runs to its end, close's last runs after it,
// once; a second close does not run last again nor reopen anything; the
// queue's counts balance (nothing waiting, no place held).
func TestReview76QueueStopTurnsAwayOnlyAtClose(t *testing.T) {
	t.Parallel()
	q := newQueue(8)
	hold := func() (release func() error) {
		admitted, stop, done := make(chan struct{}), make(chan struct{}), make(chan error, 1)
		go func() {
			done <- q.do(context.Background(), clientOf(1), func() error { close(admitted); <-stop; return nil })
		}()
		select {
		case <-admitted:
		case <-time.After(10 * time.Second):
			t.Fatal("the holding operation was not admitted")
		}
		return func() error { close(stop); return <-done }
	}
	waitFor := func(n int64) {
		for deadline := time.Now().Add(10 * time.Second); q.waiting.Load() != n && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		if got := q.waiting.Load(); got != n {
			t.Fatalf("%d waiting, want %d", got, n)
		}
	}

	// Not stopping: a waiter runs once the slot is free.
	release := hold()
	ran := make(chan error, 2)
	for _, w := range []waiter{clientOf(2), daemonOwn} {
		go func() { ran <- q.do(context.Background(), w, func() error { return nil }) }()
	}
	waitFor(2)
	select {
	case err := <-ran:
		t.Fatalf("a wait ended while the queue was open and held: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case err := <-ran:
			if err != nil {
				t.Errorf("a request waiting while the daemon is not stopping: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a waiter did not run 10 s after the slot was freed")
		}
	}

	// Stopping: waiters end at once; the held operation runs to its end.
	release = hold()
	ended := make(chan error, 3)
	for _, w := range []waiter{clientOf(3), refusalRecord, daemonOwn} {
		go func() { ended <- q.do(context.Background(), w, func() error { return errors.New("ran after close") }) }()
	}
	waitFor(3)
	lastRuns := 0
	closed := make(chan error, 1)
	go func() {
		closed <- q.close(context.Background(), func() { lastRuns++ })
	}()
	for range 3 {
		select {
		case err := <-ended:
			if !errors.Is(err, errStopping) || !errors.Is(err, api.ErrBusy) {
				t.Errorf("a wait at the stop: %v, want errStopping", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a wait at the stop did not end within 10 s while the operation held the queue")
		}
	}
	if q.lastRan.Load() {
		t.Fatal("close ran last while the operation still held the queue")
	}
	if err := release(); err != nil {
		t.Errorf("the operation holding the queue at the stop: %v", err)
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("close did not return 10 s after the operation ended")
	}
	if !q.lastRan.Load() || lastRuns != 1 {
		t.Errorf("last ran %d times (lastRan %v), want once", lastRuns, q.lastRan.Load())
	}
	// A second close: last not run again, it gives up at its context.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := q.close(ctx, func() { lastRuns++ }); !errors.Is(err, context.DeadlineExceeded) || lastRuns != 1 {
		t.Errorf("a second close: %v, last ran %d times", err, lastRuns)
	}
	if err := q.do(context.Background(), clientOf(4), func() error { return errors.New("ran after close") }); !errors.Is(err, errStopping) {
		t.Errorf("a request after close: %v, want errStopping", err)
	}
	if ok, _ := q.tryDo(func() error { return errors.New("ran after close") }); ok {
		t.Error("tryDo ran after close")
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.waiting.Load() != 0 || q.clients != 0 || q.refusals != 0 || len(q.byUID) != 0 {
		t.Errorf("counts after the stop: waiting %d, clients %d, refusals %d, byUID %v", q.waiting.Load(), q.clients, q.refusals, q.byUID)
	}
}
