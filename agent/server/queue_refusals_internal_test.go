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
// their own, and the next refusal recorded names how many were not: the
// trail loses no refusal's count, and a flood of them holds no client's
// place (review 54).
func TestRefusalsPastTheBoundAreCountedInTheNextRecord(t *testing.T) {
	t.Parallel()
	ts := serveTPM(t)
	release := holdQueue(t, ts.Server, func(stop <-chan struct{}) error { <-stop; return nil })
	const extra = 5
	var wg sync.WaitGroup
	for range maxRefusals + extra {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code, body := handlerRequest(ts.Server, 4242, api.RouteKeyCreate, `{}`); code != http.StatusForbidden {
				t.Errorf("a caller with no role: HTTP %d %s, want 403", code, body)
			}
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for (ts.q.waiting.Load() < maxRefusals || ts.unrecordedRefusals.Load() < extra) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n, u := ts.q.waiting.Load(), ts.unrecordedRefusals.Load(); n != maxRefusals || u != extra {
		release()
		wg.Wait()
		t.Fatalf("%d refusals' records waiting and %d not recorded, want %d and %d", n, u, maxRefusals, extra)
	}
	// A user-role request meanwhile finds its place.
	got := make(chan int, 1)
	go func() {
		code, _ := handlerRequest(ts.Server, 0, api.RouteKeyList, "")
		got <- code
	}()
	time.Sleep(100 * time.Millisecond)
	release()
	wg.Wait()
	if code := <-got; code == http.StatusServiceUnavailable {
		t.Errorf("a user-role request beside %d refusals' records: busy", maxRefusals)
	}
	if code, _ := handlerRequest(ts.Server, 4242, api.RouteKeyCreate, `{}`); code != http.StatusForbidden {
		t.Fatalf("the last refusal: HTTP %d", code)
	}
	recs, err := ts.ag.AuditRecords(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	refusals, named := 0, false
	for _, r := range recs {
		if r.Objects["refused"] != "" {
			refusals++
			named = named || strings.Contains(r.Objects["refused"], fmt.Sprintf("and %d refusals before this one", extra))
		}
	}
	if refusals != maxRefusals+1 || !named {
		t.Errorf("%d refusals recorded, the count of those not recorded named: %v; want %d and true", refusals, named, maxRefusals+1)
	}
	if ts.unrecordedRefusals.Load() != 0 {
		t.Errorf("%d refusals still uncounted", ts.unrecordedRefusals.Load())
	}
}
