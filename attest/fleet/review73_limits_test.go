package fleet_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
)

// Held: the fleet endpoint's limits on internal/ratelimit (review 73,
// commit 7f80d7b moved the token bucket there) behave as before and hold
// against a clock set back: a client's enroll bucket and a device's
// challenge bucket (per device and client address) give their burst and
// no more; a clock set back an hour refills nothing, nor does coming back
// to where it was; one token comes per second of time past the latest the
// bucket saw; another client's and another address's buckets are their
// own.
func TestReview73FleetLimitsHoldAgainstAClockSetBack(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	move := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	st, err := fleet.Open(context.Background(), "sqlite://"+filepath.Join(t.TempDir(), "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	id := strings.Repeat("cd", 32)
	secret := sha256.Sum256([]byte("device"))
	if err := st.PutPending(ctx, fleet.Device{ID: id, Class: "gateway", EKPublic: []byte{1}, EKCert: []byte{1}, AKPublic: []byte{1}, SecretHash: secret[:], EnrolledAt: clock()}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Activate(ctx, id, secret[:], clock()); err != nil {
		t.Fatal(err)
	}
	h := (&fleet.Server{E: fleet.New(fleet.Config{Store: st, Now: clock})}).Handler()
	post := func(from, route string, in any) int {
		b, _ := json.Marshal(in)
		r := httptest.NewRequest(http.MethodPost, route, bytes.NewReader(b))
		r.RemoteAddr = from + ":40000"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	enroll := func(from string) int {
		return post(from, "/v1/enroll", fleetapi.EnrollRequest{EKCertificates: [][]byte{{1}}, AKPublic: []byte{1}, Class: "gateway"})
	}
	challenge := func(from string) int { return post(from, "/v1/challenge", fleetapi.ChallengeRequest{DeviceID: id}) }
	type limited struct {
		name  string
		burst int
		call  func(from string) int
	}
	for _, l := range []limited{{"enroll", int(fleet.ClientBurst), enroll}, {"challenge", int(fleet.DeviceBurst), challenge}} {
		const from = "203.0.113.9"
		for i := range l.burst {
			if code := l.call(from); code == http.StatusTooManyRequests {
				t.Fatalf("%s: request %d of the burst of %d limited", l.name, i+1, l.burst)
			}
		}
		if code := l.call(from); code != http.StatusTooManyRequests {
			t.Fatalf("%s: a request past the burst: HTTP %d, want 429", l.name, code)
		}
		move(-time.Hour)
		if code := l.call(from); code != http.StatusTooManyRequests {
			t.Errorf("%s: a clock set back an hour refilled the bucket: HTTP %d", l.name, code)
		}
		move(time.Hour) // back where it was
		if code := l.call(from); code != http.StatusTooManyRequests {
			t.Errorf("%s: the clock back where it was refilled the bucket: HTTP %d", l.name, code)
		}
		move(time.Second)
		if code := l.call(from); code == http.StatusTooManyRequests {
			t.Errorf("%s: no token a second later", l.name)
		}
		if code := l.call(from); code != http.StatusTooManyRequests {
			t.Errorf("%s: two tokens for one second: HTTP %d", l.name, code)
		}
		if code := l.call("198.51.100.22"); code == http.StatusTooManyRequests {
			t.Errorf("%s: another client's bucket was taken by the first's", l.name)
		}
		move(time.Hour) // every bucket full again for the next
	}
}
