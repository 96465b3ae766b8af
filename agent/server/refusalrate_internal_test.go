package server

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/internal/ratelimit"
	"github.com/provd/provd/test/swtpmtest"
)

// A caller with no role flooding refused requests one after the other
// (none waits, so the queue's bound of 16 waiting records never counts
// them) costs the TPM at most refusalBurst records one by one, then one a
// minute, and a count at most every refusalCountEvery: every record is an
// NV write in the TPM (the anchor's extend), which wears, and which a TPM
// refuses for a while once written too often (TPM_RC_NV_RATE), failing
// every caller's audited operation with it. Before the bound, 200
// refusals were 200 records, 200 NV writes, and filled the trail towards
// audit.MaxLogSize at the TPM's pace. No refusal is lost: those not
// recorded one by one are in the counts, by caller.
func TestRefusalFloodCostsBoundedRecords(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	ts := serveTPM(t, func(s *Server) {
		s.oneByOne = ratelimit.New(refusalRate, refusalBurst, clock)
		s.countEvery = 2 * time.Second
	})
	flood := func(uid, n int) {
		for range n {
			if code, body := handlerRequest(ts.Server, uid, api.RouteKeyCreate, `{}`); code != http.StatusForbidden {
				t.Fatalf("a caller with no role: HTTP %d %s, want 403", code, body)
			}
		}
	}
	settled := func() {
		for deadline := time.Now().Add(20 * time.Second); (ts.uncounted.any() || ts.countWriter.Load()) && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		if ts.uncounted.any() || ts.countWriter.Load() {
			t.Fatal("the refusals' count is not written 20 s after the flood")
		}
	}
	trail := func() (oneByOne int, counts []audit.Record) {
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
		return oneByOne, counts
	}

	// The first count is written at once, the rest refusalCountEvery
	// after it.
	const first = 200
	flood(4242, first)
	settled()
	one, counts := trail()
	if one != refusalBurst || len(counts) > 2 || countOf(t, counts, 4242) != first-refusalBurst {
		t.Fatalf("%d refusals: %d records one by one and counts %v; want %d and at most two counts of uid 4242's %d", first, one, counts, refusalBurst, first-refusalBurst)
	}

	// A second flood, of two callers, within refusalCountEvery of the
	// last count: counted, and written once that time has passed, in one
	// record.
	flood(4242, 30)
	flood(4243, 7)
	if _, c := trail(); len(c) != len(counts) {
		t.Errorf("a count written %v after the last, within refusalCountEvery (%v)", c[len(c)-1].Time.Sub(c[len(c)-2].Time), ts.countEvery)
	}
	settled()
	one, after := trail()
	if one != refusalBurst || len(after) != len(counts)+1 || !strings.Contains(after[len(counts)].Objects["refused"], "(uid 4242: 30, uid 4243: 7)") {
		t.Fatalf("after the second flood: %d one by one, counts %v; want %d and one more count, of 30 and 7", one, after, refusalBurst)
	}
	for i := 1; i < len(after); i++ {
		if gap := after[i].Time.Sub(after[i-1].Time); gap < ts.countEvery-100*time.Millisecond {
			t.Errorf("counts %d and %d %v apart; want at least %v", i-1, i, gap, ts.countEvery)
		}
	}

	// A minute later one more refusal is recorded one by one.
	mu.Lock()
	now = now.Add(time.Minute)
	mu.Unlock()
	flood(4243, 2)
	settled()
	if one, _ := trail(); one != refusalBurst+1 {
		t.Errorf("a minute later: %d refusals one by one, want %d", one, refusalBurst+1)
	}
}

// The count's writer waiting for refusalCountEvery does not hold the
// daemon's stop, and what it waited to write is written at the stop.
func TestRefusalCountWaitingAtTheStop(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	env.CloseTPM()
	state := filepath.Join(t.TempDir(), "state")
	d := startDaemon(t, env, state, 300*time.Millisecond, 20*time.Second)
	d.srv.countEvery = time.Hour
	for range refusalBurst + 3 { // the first count is written at once
		refusedRequest(t, d.srv)
	}
	for deadline := time.Now().Add(20 * time.Second); (d.srv.uncounted.any() || d.srv.countWriter.Load()) && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	for range 5 {
		refusedRequest(t, d.srv)
	}
	if !d.srv.countWriter.Load() {
		t.Fatal("no writer waits for the second count")
	}
	d.stop()
	select {
	case err := <-d.done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return 15 s after the stop: the count's writer held it")
	}
	recs, err := audit.ReadRecords(filepath.Join(state, audit.FileName))
	if err != nil {
		t.Fatal(err)
	}
	var counts []string
	for _, r := range recs {
		if r.Op == "refusals" {
			counts = append(counts, r.Objects["refused"])
		}
	}
	if len(counts) != 2 || countOf(t, counts, 4242) != 8 {
		t.Errorf("counts in the trail: %q; want two, of uid 4242's 8 in all, the second at the stop", counts)
	}
}

// countOf sums the refusals of uid in counts' records.
func countOf[R audit.Record | string](t *testing.T, counts []R, uid int) int {
	t.Helper()
	re := regexp.MustCompile(fmt.Sprintf(`[(,] ?uid %d: (\d+)[,)]`, uid))
	n := 0
	for _, c := range counts {
		text := ""
		switch c := any(c).(type) {
		case audit.Record:
			text = c.Objects["refused"]
		case string:
			text = c
		}
		for _, m := range re.FindAllStringSubmatch(text, -1) {
			v, err := strconv.Atoi(m[1])
			if err != nil {
				t.Fatal(err)
			}
			n += v
		}
	}
	return n
}

// A refusal counted once the queue has closed (after the stop's last
// count) reaches the journal with its caller, and its writer ends at
// once: the queue never turns again (review 73: the writer waited for its
// 10-minute deadline after the daemon had stopped, and the count died with
// it unlogged).
func TestRefusalCountedAfterTheStopIsLogged(t *testing.T) {
	t.Parallel()
	ts := serveTPM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ts.q.close(ctx, nil); err != nil {
		t.Fatal(err)
	}
	ts.lastCount.Store(nil)
	ts.countRefusal(4242)
	for deadline := time.Now().Add(10 * time.Second); ts.countWriter.Load() && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if ts.countWriter.Load() {
		t.Fatal("the count's writer still waits 10 s after the queue closed")
	}
	if !strings.Contains(ts.logs.String(), "refusal count not audited: the daemon stopped") || !strings.Contains(ts.logs.String(), "uid 4242: 1") {
		t.Errorf("the count is not in the journal: %s", ts.logs.String())
	}
	if ts.uncounted.any() {
		t.Error("the count is still held")
	}
}
