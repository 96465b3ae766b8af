package fleet_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
)

// TestMetricsAndLimits: /metrics counts appraisals by result and reason and
// refused requests; a device that asks for challenges faster than its
// bucket refills is refused (429), another device is not.
func TestMetricsAndLimits(t *testing.T) {
	ctx := context.Background()
	st, err := fleet.Open(ctx, "sqlite://"+filepath.Join(t.TempDir(), "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)
	d1, d2 := strings.Repeat("d1", 32), strings.Repeat("d2", 32)
	for _, id := range []string{d1, d2} {
		secret := sha256.Sum256([]byte(id))
		if err := st.PutPending(ctx, fleet.Device{ID: id, Class: "gateway", EKPublic: []byte{1}, EKCert: []byte{1}, AKPublic: []byte{1}, SecretHash: secret[:], EnrolledAt: now}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Activate(ctx, id, secret[:], now); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewServer((&fleet.Server{E: fleet.New(fleet.Config{Store: st, Now: func() time.Time { return now }})}).Handler())
	defer srv.Close()
	post := func(path string, v any) int {
		b, _ := json.Marshal(v)
		rsp, err := http.Post(srv.URL+path, "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, rsp.Body)
		rsp.Body.Close()
		return rsp.StatusCode
	}
	for i := range int(fleet.DeviceBurst) {
		if code := post("/v1/challenge", fleetapi.ChallengeRequest{DeviceID: d1}); code != http.StatusOK {
			t.Fatalf("challenge %d: %d", i, code)
		}
	}
	if code := post("/v1/challenge", fleetapi.ChallengeRequest{DeviceID: d1}); code != http.StatusTooManyRequests {
		t.Fatalf("beyond the burst: %d", code)
	}
	if code := post("/v1/challenge", fleetapi.ChallengeRequest{DeviceID: d2}); code != http.StatusOK {
		t.Fatalf("another device: %d", code)
	}
	// A device ID that is not one is refused before it costs anything.
	if code := post("/v1/challenge", fleetapi.ChallengeRequest{DeviceID: strings.Repeat("x", 1<<20)}); code != http.StatusBadRequest {
		t.Fatalf("a megabyte device ID: %d", code)
	}
	if code := post("/v1/attest", fleetapi.AttestRequest{DeviceID: d2, Nonce: []byte("never issued")}); code != http.StatusOK {
		t.Fatalf("attest: %d", code)
	}
	rsp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rsp.Body)
	rsp.Body.Close()
	for _, want := range []string{`provd_fleet_rate_limited_total{route="challenge"} 1`, `provd_fleet_appraisals_total{reason="nonce_unknown",result="fail"} 1`, "provd_fleet_appraisal_seconds_count 1"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(string(b), d1) || strings.Contains(string(b), d2) {
		t.Error("metrics name a device")
	}
}
