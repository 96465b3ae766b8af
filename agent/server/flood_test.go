package server

import (
	"bytes"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
)

// A bounded flood of hostile bodies from user-role clients (oversized,
// truncated, malformed, wrong types, deeply nested, duplicate keys) to every
// POST endpoint: each is refused with a 4xx, another client's request
// succeeds during and after it, and the daemon's goroutines and heap come back
// to where they were.
func TestHostileFloodLeavesTheDaemonFlat(t *testing.T) {
	ts := serveTPM(t)
	if code, b := ts.call(t, "POST", "/v1/provision", api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); code != http.StatusOK {
		t.Fatalf("provision: HTTP %d %s", code, b)
	}
	bodies := [][]byte{
		bytes.Repeat([]byte("a"), MaxRequestBody+1),
		[]byte(`{"name": "k", "data": "`),
		[]byte(`{"name": 17}`),
		[]byte(`[]`),
		[]byte(strings.Repeat("[", 100000) + strings.Repeat("]", 100000)),
		[]byte(`{"name": "a", "name": "b"}`),
		[]byte(`{"unknown": true}`),
		{0xff, 0xfe, 0x00},
	}
	var paths []string
	for _, ep := range Endpoints {
		if ep.Method == "POST" {
			paths = append(paths, ep.Path)
		}
	}
	// settle closes the client's idle connections and waits (up to 3 s) for
	// the goroutine count to fall to want or below.
	settle := func(want int) (int, uint64) {
		ts.hc.Transport.(*http.Transport).CloseIdleConnections()
		var g int
		for range 150 {
			runtime.GC()
			if g = runtime.NumGoroutine(); g <= want {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return g, m.HeapInuse
	}
	g0, h0 := settle(0)

	const workers, rounds = 8, 3
	var wg sync.WaitGroup
	var mu sync.Mutex
	var bad []string
	for w := range workers {
		wg.Go(func() {
			for r := range rounds {
				for i, p := range paths {
					body := bodies[(w+r+i)%len(bodies)]
					rsp, err := ts.hc.Post("http://provd"+p, "application/json", bytes.NewReader(body))
					if err != nil {
						mu.Lock()
						bad = append(bad, p+": "+err.Error())
						mu.Unlock()
						continue
					}
					_, _ = io.Copy(io.Discard, rsp.Body)
					rsp.Body.Close()
					if rsp.StatusCode < 400 || rsp.StatusCode >= 500 {
						mu.Lock()
						bad = append(bad, p+": "+rsp.Status)
						mu.Unlock()
					}
				}
			}
		})
	}
	// Another client meanwhile.
	if code, b := ts.call(t, "POST", "/v1/seal", api.SealRequest{Data: []byte("during the flood")}); code != http.StatusOK {
		t.Errorf("a seal during the flood: HTTP %d %s", code, b)
	}
	wg.Wait()
	if len(bad) > 0 {
		t.Errorf("%d hostile requests not refused with a 4xx: %v", len(bad), bad[:min(len(bad), 5)])
	}
	if code, b := ts.call(t, "POST", "/v1/seal", api.SealRequest{Data: []byte("after the flood")}); code != http.StatusOK {
		t.Fatalf("a seal after the flood: HTTP %d %s", code, b)
	}
	g1, h1 := settle(g0 + 5)
	t.Logf("%d hostile requests; goroutines %d -> %d, heap in use %d -> %d KiB", workers*rounds*len(paths), g0, g1, h0>>10, h1>>10)
	if g1 > g0+5 {
		t.Errorf("goroutines grew from %d to %d", g0, g1)
	}
	if h1 > h0+32<<20 {
		t.Errorf("heap in use grew from %d to %d KiB", h0>>10, h1>>10)
	}
}
