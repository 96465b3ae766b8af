package server

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/internal/ratelimit"
)

// review73Trail counts the refusals in the server's trail: those recorded
// one by one, the count records, and uid's refusals in the counts.
func review73Trail(t *testing.T, ts *tpmServer, uids []int) (oneByOne int, counts []audit.Record, counted map[int]int) {
	t.Helper()
	recs, err := ts.ag.AuditRecords(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		switch {
		case r.Op == "refusals":
			counts = append(counts, r)
		case r.Objects["refused"] != "":
			oneByOne++
		}
	}
	counted = map[int]int{}
	for _, uid := range uids {
		counted[uid] = countOf(t, counts, uid)
	}
	return oneByOne, counts, counted
}

// FLAW (failed before the mend: the wait is never longer than countEvery, on the monotonic clock): the count's writer waits for countEvery after the last count by
// the wall clock (lastCount is time.Now().UnixNano(), and time.Unix(0,
// last) carries no monotonic reading, so time.Until compares wall times),
// while the one-by-one limiter runs on the monotonic clock. A wall clock
// stepped back after a count (NTP correcting a clock that ran ahead, an
// RTC-less board that booted with a build date in the future, an
// administrator's date) makes the writer wait the step plus a minute: an
// hour back, and a flood's count stays out of the trail for an hour; past
// opTimeout (10 min) the writer gives up with "context deadline exceeded",
// and the count waits in memory for the daemon's stop (lost at a power
// cut or a crash). A caller with no role who floods while the clock is
// behind leaves no trace in the audit trail for as long as that lasts,
// while docs/api.md says the count is written "at most one a minute".
// Simulated exactly: lastCount set an hour ahead of now is what a count
// written just before an hour's step back leaves. Secure: the count is
// written within countEvery (the wait measured on the monotonic clock, or
// a last count in the future taken as now).
func TestReview73ClockSetBackHoldsTheCount(t *testing.T) {
	t.Parallel()
	ts := serveTPM(t, func(s *Server) {
		s.oneByOne = ratelimit.New(refusalRate, 0, nil) // every refusal counted
		s.countEvery = 300 * time.Millisecond
	})
	t.Cleanup(func() {
		// Whatever the writer still waits for ends with the queue.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = ts.q.close(ctx, nil)
	})
	// A count was written, then the wall clock went back an hour.
	ahead := time.Now().Add(time.Hour).Round(0) // a wall time, as the field held before the mend
	ts.lastCount.Store(&ahead)
	const n = 5
	for range n {
		if code, body := handlerRequest(ts.Server, 4242, api.RouteKeyCreate, `{}`); code != http.StatusForbidden {
			t.Fatalf("a caller with no role: HTTP %d %s, want 403", code, body)
		}
	}
	deadline := time.Now().Add(10 * time.Second) // 30 countEvery
	for time.Now().Before(deadline) {
		if _, counts, c := review73Trail(t, ts, []int{4242}); len(counts) > 0 && c[4242] == n {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, counts, c := review73Trail(t, ts, []int{4242})
	t.Errorf("after a wall clock step back of an hour, %d refusals of uid 4242 are not in the trail 10 s later "+
		"(countEvery %v): %d count records, uid 4242 counted %d; in memory: %v, writer waiting: %v",
		n, ts.countEvery, len(counts), c[4242], ts.uncounted.any(), ts.countWriter.Load())
}

// Held: refusals from many callers at once, racing the count's writer as
// it ends (countEvery short, the one-by-one bucket on a frozen clock so
// that exactly refusalBurst go one by one): every refusal is in the trail,
// one by one or in a count of its caller, the writer ends (no goroutine
// left), and the counts are at most one at once and one per countEvery
// after it.
func TestReview73ConcurrentRefusalsAllAccountedAndBounded(t *testing.T) {
	t.Parallel()
	frozen := time.Now()
	ts := serveTPM(t, func(s *Server) {
		s.oneByOne = ratelimit.New(refusalRate, refusalBurst, func() time.Time { return frozen })
		s.countEvery = 250 * time.Millisecond
	})
	uids := []int{5001, 5002, 5003, 5004, 5005, 5006, 5007, 5008}
	const each = 40
	start := time.Now()
	var wg sync.WaitGroup
	for round := range 4 {
		for _, uid := range uids {
			wg.Go(func() {
				for range each / 4 {
					if code, body := handlerRequest(ts.Server, uid, api.RouteKeyCreate, `{}`); code != http.StatusForbidden {
						t.Errorf("uid %d: HTTP %d %s, want 403", uid, code, body)
					}
				}
			})
		}
		wg.Wait()
		// Let a writer end between rounds now and then: the race between
		// its end and the next refusal.
		if round%2 == 0 {
			time.Sleep(ts.countEvery / 3)
		}
	}
	for deadline := time.Now().Add(20 * time.Second); (ts.uncounted.any() || ts.countWriter.Load()) && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if ts.uncounted.any() || ts.countWriter.Load() {
		t.Fatalf("20 s after the flood: counted %v, writer running %v", ts.uncounted.any(), ts.countWriter.Load())
	}
	elapsed := time.Since(start)
	one, counts, counted := review73Trail(t, ts, uids)
	total := one
	for _, uid := range uids {
		total += counted[uid]
	}
	if one != refusalBurst || total != len(uids)*each {
		t.Errorf("%d refusals: %d one by one (want %d) and %d counted %v: %d accounted", len(uids)*each, one, refusalBurst, total-one, counted, total)
	}
	if limit := 2 + int(elapsed/ts.countEvery); len(counts) > limit {
		t.Errorf("%d count records in %v; at most %d at one per %v", len(counts), elapsed, limit, ts.countEvery)
	}
	for i := 1; i < len(counts); i++ {
		if gap := counts[i].Time.Sub(counts[i-1].Time); gap < ts.countEvery-50*time.Millisecond {
			t.Errorf("counts %d and %d %v apart; want at least %v", i-1, i, gap, ts.countEvery)
		}
	}
	t.Logf("%d refusals: %d one by one, %d count records in %v", len(uids)*each, one, len(counts), elapsed.Round(time.Millisecond))
}
