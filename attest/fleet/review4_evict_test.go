package fleet_test

// Found by a fourth review: challenges stored per device, capped, let anyone
// evict a device's nonce. Nonces are now authenticated, stored only once
// used.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/test/swtpmtest"
)

// TestChallengesDoNotEvictTheDevicesNonce: buckets per (device, client)
// let anyone with a few addresses request as many challenges under a
// victim's (public) device ID as it likes, each within its own limit; a
// device keeps MaxNoncesPerDevice (8) and a new challenge drops the oldest:
// 8 unauthenticated challenges between the genuine device's challenge and
// its attestation drop its nonce, and its genuine evidence fails
// (nonce_unknown). No request is ever rate limited.
func TestChallengesDoNotEvictTheDevicesNonce(t *testing.T) {
	env := swtpmtest.Start(t)
	f := reviewEndpoint(t, env)
	d := newReviewDevice(t, env)
	id, err := d.enroll(f, "gateway", d.certs[:1])
	if err != nil {
		t.Fatal(err)
	}
	h := (&fleet.Server{E: f.e}).Handler()
	post := func(from, route string, in, out any) int {
		b, _ := json.Marshal(in)
		r := httptest.NewRequest(http.MethodPost, route, bytes.NewReader(b))
		r.RemoteAddr = from + ":40000"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if out != nil && w.Code == http.StatusOK {
			_ = json.Unmarshal(w.Body.Bytes(), out)
		}
		return w.Code
	}
	round := func(attackers int) (fleetapi.Verdict, int) {
		var ch fleetapi.Challenge
		if c := post("192.0.2.10", "/v1/challenge", fleetapi.ChallengeRequest{DeviceID: id}, &ch); c != http.StatusOK {
			t.Fatalf("victim challenge: %d", c)
		}
		limited := 0
		for k := range attackers {
			if post(fmt.Sprintf("198.51.100.%d", k+1), "/v1/challenge", fleetapi.ChallengeRequest{DeviceID: id}, nil) != http.StatusOK {
				limited++
			}
		}
		var v fleetapi.Verdict
		if c := post("192.0.2.10", "/v1/attest", d.evidence(id, ch), &v); c != http.StatusOK {
			t.Fatalf("victim attest: %d", c)
		}
		return v, limited
	}
	if v, _ := round(0); !v.Pass {
		t.Fatalf("control: the genuine device does not pass: %+v", v)
	}
	const rounds = 10
	evicted, limited := 0, 0
	for range rounds {
		v, l := round(32)
		limited += l
		if !v.Pass && len(v.Reasons) > 0 && v.Reasons[0].Code == fleet.CodeNonceUnknown {
			evicted++
		}
	}
	if evicted > 0 {
		t.Fatalf("%d of %d genuine attestations failed nonce_unknown after 32 challenges from other addresses under the device's ID (%d rate limited)", evicted, rounds, limited)
	}
}
