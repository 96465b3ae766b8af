package fleet_test

// Found by a third adversarial review of the fleet endpoint; each broke
// it before its fix and is kept as a test.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
)

func review3Server(t *testing.T, now func() time.Time) (*httptest.Server, fleet.Store) {
	t.Helper()
	ctx := context.Background()
	st, err := fleet.Open(ctx, "sqlite://"+filepath.Join(t.TempDir(), "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv := httptest.NewServer((&fleet.Server{E: fleet.New(fleet.Config{Store: st, Now: now})}).Handler())
	t.Cleanup(srv.Close)
	return srv, st
}

func review3Post(t *testing.T, url string, v any) int {
	t.Helper()
	b, _ := json.Marshal(v)
	rsp, err := http.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, rsp.Body)
	rsp.Body.Close()
	return rsp.StatusCode
}

// TestLimiterRefusesHugeKeys: the per-device limiter is keyed by the
// device ID as the (unauthenticated) body says, before anything checks it:
// a 4 MiB body holds a ~4 MiB "device ID", kept as a map key. maxBuckets
// bounds the count (65536), not the size: 65536 x 4 MiB. Here 48 requests
// of 2 MiB IDs.
func TestLimiterRefusesHugeKeys(t *testing.T) {
	now := time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)
	srv, _ := review3Server(t, func() time.Time { return now })
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const n, size = 48, 2 << 20
	for i := range n {
		id := fmt.Sprintf("%06d", i) + strings.Repeat("a", size)
		review3Post(t, srv.URL+"/v1/challenge", fleetapi.ChallengeRequest{DeviceID: id})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("heap after GC grew by %d MiB for %d MiB of request bodies", grew>>20, (n*size)>>20)
	if grew > n*size*3/4 {
		t.Fatalf("BREAK: %d MiB stay on the heap after GC: every unauthenticated 'device ID' is a limiter key, length unbounded (65536 keys x 4 MiB bodies = 256 GiB)", grew>>20)
	}
}

// TestNoLockOutByOthers: A8 knows a device's ID (SHA-256 of its EK's
// public area; EK certificates are public) and sends junk attestations
// under it, without any credential: two a second keep the device's bucket
// empty, and the device's own challenges and attestations get 429 for as
// long as A8 keeps going.
func TestNoLockOutByOthers(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	srv, st := review3Server(t, clock)
	ctx := context.Background()
	secret := sha256.Sum256([]byte("victim"))
	if err := st.PutPending(ctx, fleet.Device{ID: "victim", Class: "gateway", EKPublic: []byte{1}, EKCert: []byte{1}, AKPublic: []byte{1}, SecretHash: secret[:], EnrolledAt: now}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Activate(ctx, "victim", secret[:], now); err != nil {
		t.Fatal(err)
	}
	junk := func(route string) {
		if route == "/v1/attest" {
			review3Post(t, srv.URL+route, fleetapi.AttestRequest{DeviceID: "victim", Nonce: []byte("junk")})
		} else {
			review3Post(t, srv.URL+route, fleetapi.ChallengeRequest{DeviceID: "victim"})
		}
	}
	for range int(fleet.DeviceBurst) {
		junk("/v1/challenge")
		junk("/v1/attest")
	}
	refused := 0
	const seconds = 30
	for range seconds {
		mu.Lock()
		now = now.Add(time.Second)
		mu.Unlock()
		junk("/v1/challenge") // the attacker's request of this second comes first
		junk("/v1/attest")
		if review3Post(t, srv.URL+"/v1/challenge", fleetapi.ChallengeRequest{DeviceID: "victim"}) == http.StatusTooManyRequests {
			refused++
		}
	}
	if refused == seconds {
		t.Fatalf("BREAK: an unauthenticated client sending one junk request a second under the victim's device ID kept the victim's own challenge refused (429) %d times out of %d", refused, seconds)
	}
	t.Logf("held: the victim was refused %d of %d times", refused, seconds)
}
