package server

import (
	"crypto/sha256"
	"net/http"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
)

// A TPM power cut under the daemon: it dials again and starts the TPM up by
// itself; at most the request in flight fails, and the ones after succeed,
// cached keys loaded again.
func TestDaemonSurvivesAPowerCut(t *testing.T) {
	ts := serveTPM(t)
	ts.env.RequireSimulator()
	if code, b := ts.call(t, "POST", "/v1/provision", api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); code != http.StatusOK {
		t.Fatalf("provision: HTTP %d %s", code, b)
	}
	if code, b := ts.call(t, "POST", "/v1/keys/create", api.CreateRequest{Name: "sig", Type: "ecc-p256"}); code != http.StatusOK {
		t.Fatalf("create: HTTP %d %s", code, b)
	}
	d := sha256.Sum256([]byte("m"))
	sign := func() (int, []byte) {
		return ts.call(t, "POST", "/v1/keys/sign", api.SignRequest{Name: "sig", Digest: d[:]})
	}
	if code, b := sign(); code != http.StatusOK {
		t.Fatalf("sign: HTTP %d %s", code, b)
	}
	for cut := range 3 {
		ts.env.PowerCut()
		code, b := sign()
		if code != http.StatusOK {
			t.Logf("cut %d: the first request after it: HTTP %d %s", cut, code, b)
			if code, b = sign(); code != http.StatusOK {
				t.Fatalf("cut %d: the second request after it: HTTP %d %s", cut, code, b)
			}
		}
		if code, b := ts.call(t, "POST", "/v1/seal", api.SealRequest{Data: []byte("after the cut")}); code != http.StatusOK {
			t.Fatalf("cut %d: seal: HTTP %d %s", cut, code, b)
		}
		if code, b := ts.call(t, "GET", "/v1/audit/verify", nil); code != http.StatusOK {
			t.Fatalf("cut %d: audit verify: HTTP %d %s", cut, code, b)
		}
	}
}
