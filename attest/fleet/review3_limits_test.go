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
// public area; EK certificates are public) and sends junk challenges and
// attestations under it from its own address, without any credential:
// the device's own requests, from its address, are not refused.
func TestNoLockOutByOthers(t *testing.T) {
	now := time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)
	st, err := fleet.Open(context.Background(), "sqlite://"+filepath.Join(t.TempDir(), "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	id := strings.Repeat("ab", 32)
	secret := sha256.Sum256([]byte("victim"))
	if err := st.PutPending(ctx, fleet.Device{ID: id, Class: "gateway", EKPublic: []byte{1}, EKCert: []byte{1}, AKPublic: []byte{1}, SecretHash: secret[:], EnrolledAt: now}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Activate(ctx, id, secret[:], now); err != nil {
		t.Fatal(err)
	}
	h := (&fleet.Server{E: fleet.New(fleet.Config{Store: st, Now: func() time.Time { return now }})}).Handler()
	post := func(from, route string, in any) int {
		b, _ := json.Marshal(in)
		r := httptest.NewRequest(http.MethodPost, route, bytes.NewReader(b))
		r.RemoteAddr = from + ":40000"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	for range 3 * int(fleet.DeviceBurst) {
		post("198.51.100.7", "/v1/challenge", fleetapi.ChallengeRequest{DeviceID: id})
		post("198.51.100.7", "/v1/attest", fleetapi.AttestRequest{DeviceID: id, Nonce: []byte("junk")})
	}
	if code := post("198.51.100.7", "/v1/challenge", fleetapi.ChallengeRequest{DeviceID: id}); code != http.StatusTooManyRequests {
		t.Fatalf("the flooding client is not limited: %d", code)
	}
	if code := post("192.0.2.10", "/v1/challenge", fleetapi.ChallengeRequest{DeviceID: id}); code != http.StatusOK {
		t.Fatalf("the device, from its own address, after another client's flood: %d", code)
	}
}
