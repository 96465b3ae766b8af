package server

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/provd/provd/api"
)

// Refusals past maxRefusals waiting are answered at once, with no record of
// their own, and their number, by caller, is written in a record of the
// daemon's at the queue's next turn: the trail loses no refusal's count,
// and a flood of them holds no client's place (reviews 54, 55).
func TestRefusalsPastTheBoundAreCounted(t *testing.T) {
	t.Parallel()
	ts := serveTPM(t)
	release := holdQueue(t, ts.Server, func(stop <-chan struct{}) error { <-stop; return nil })
	const extra = 5
	wait := refuseMany(t, ts.Server, maxRefusals+extra)
	deadline := time.Now().Add(10 * time.Second)
	for (ts.q.waiting.Load() < maxRefusals || !ts.uncounted.any()) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := ts.q.waiting.Load(); n < maxRefusals || !ts.uncounted.any() {
		release()
		wait()
		t.Fatalf("%d refusals' records waiting, counted: %v; want %d and some", n, ts.uncounted.any(), maxRefusals)
	}
	// A user-role request meanwhile finds its place.
	got := make(chan int, 1)
	go func() {
		code, _ := handlerRequest(ts.Server, 0, api.RouteKeyList, "")
		got <- code
	}()
	time.Sleep(100 * time.Millisecond)
	release()
	wait()
	if code := <-got; code == http.StatusServiceUnavailable {
		t.Errorf("a user-role request beside %d refusals' records: busy", maxRefusals)
	}
	// The count is written at the queue's next turn, in a record of its own.
	for (ts.uncounted.any() || ts.countWriter.Load()) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	recs, err := ts.ag.AuditRecords(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	refusals, counted := 0, ""
	for _, r := range recs {
		switch {
		case r.Op == "refusals":
			counted = r.Objects["refused"]
		case r.Objects["refused"] != "":
			refusals++
		}
	}
	if refusals != maxRefusals || !strings.Contains(counted, fmt.Sprintf("uid 4242: %d", extra)) {
		t.Errorf("%d refusals recorded one by one, the count %q; want %d and uid 4242's %d", refusals, counted, maxRefusals, extra)
	}
}

// A refusal count names the callers with the most refusals first, at most
// maxCountsListed of them, and sums the rest: its record's size is bounded
// whatever the number of uids (review 56).
func TestRefusalCountIsBounded(t *testing.T) {
	c := countsByUID{}
	var total int64
	for uid := range 65536 {
		c[100000+uid] = 1
		total++
	}
	c[4242] = 500
	total += 500
	got := c.String()
	if !strings.HasPrefix(got, "uid 4242: 500, ") || len(got) > 1024 {
		t.Errorf("%d bytes: %.120q", len(got), got)
	}
	want := fmt.Sprintf(", and %d more callers: %d", 65536+1-maxCountsListed, total-500-int64(maxCountsListed-1))
	if !strings.HasSuffix(got, want) {
		t.Errorf("%q does not end with %q", got[max(0, len(got)-80):], want)
	}
	if got := (countsByUID{7: 2, 3: 2, 5: 9}).String(); got != "uid 5: 9, uid 3: 2, uid 7: 2" {
		t.Errorf("got %q", got)
	}
}

// refuseMany sends n requests the daemon refuses (a caller with no role,
// uid 4242, asking key create) at once through s's handler, each checked
// to be answered 403; wait returns once every one is answered.
func refuseMany(t *testing.T, s *Server, n int) (wait func()) {
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if code, body := handlerRequest(s, 4242, api.RouteKeyCreate, `{}`); code != http.StatusForbidden {
				t.Errorf("a caller with no role: HTTP %d %s, want 403", code, body)
			}
		})
	}
	return wg.Wait
}
