package server

import (
	"net/http"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
)

// One user-role client's oversized or malformed inputs do not break the
// daemon for anyone (found by review: a 100,000-byte decrypt put the TPM
// stream out of step, and 5,000 bytes leaked sessions until every caller got
// exit 10): each is refused, the next request succeeds, and the harness's
// leak check at the end finds no handle or session left.
func TestHostileInputsLeaveTheDaemonWorking(t *testing.T) {
	ts := serveTPM(t)
	if code, b := ts.call(t, "POST", "/v1/provision", api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); code != http.StatusOK {
		t.Fatalf("provision: HTTP %d %s", code, b)
	}
	if code, b := ts.call(t, "POST", "/v1/keys/create", api.CreateRequest{Name: "oaep", Type: "rsa-2048", Usage: "decrypt"}); code != http.StatusOK {
		t.Fatalf("create: HTTP %d %s", code, b)
	}
	for _, n := range []int{100_000, 5_000, 257, 0} {
		code, b := ts.call(t, "POST", "/v1/keys/decrypt", api.DecryptRequest{Name: "oaep", Ciphertext: make([]byte, n)})
		if code != http.StatusBadRequest {
			t.Errorf("decrypt of %d bytes: HTTP %d %s, want 400", n, code, b)
		}
		if code, b := ts.call(t, "POST", "/v1/seal", api.SealRequest{Data: []byte("still working")}); code != http.StatusOK {
			t.Fatalf("seal after a decrypt of %d bytes: HTTP %d %s", n, code, b)
		}
	}
	if left, err := ts.env.TPM.Leftovers(); err != nil || len(left) != 0 {
		t.Fatalf("handles left: %v %v", left, err)
	}
}
