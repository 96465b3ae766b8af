package server

import (
	"context"
	"crypto"
	"encoding/json"
	"net/http"
	"slices"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/test/officertest"
)

// A hash outside approved mode is refused alike in-process and through the
// daemon: the client sends its name (api.HashName), the daemon refuses it by
// name, and both give the same kinds and exit code (5).
func TestUnapprovedHashSameBothWays(t *testing.T) {
	ts := serveTPM(t)
	code, b := ts.call(t, "POST", "/v1/provision", api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	if code != http.StatusOK {
		t.Fatalf("provision: HTTP %d %s", code, b)
	}
	var res api.ProvisionResult
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	req := api.DeriveRequest{Name: "k", Label: "l", Type: "ecc-p256", Usage: catalog.UsageSign}
	req.Approval = officertest.Approve(t, res.PolicyDigest, req)
	if code, b := ts.call(t, "POST", "/v1/keys/derive", req); code != http.StatusOK {
		t.Fatalf("derive: HTTP %d %s", code, b)
	}
	for _, h := range []crypto.Hash{crypto.SHA512, crypto.SHA1} {
		digest := make([]byte, h.Size())
		_, inErr := ts.ag.Sign(context.Background(), "k", digest, api.SignOptions{Hash: h})
		code, b := ts.call(t, "POST", "/v1/keys/sign", api.SignRequest{Name: "k", Digest: digest, Hash: api.HashName(h)})
		var eb api.ErrorBody
		if err := json.Unmarshal(b, &eb); err != nil {
			t.Fatal(err)
		}
		if api.ExitCode(inErr) != api.ExitNotPermitted || eb.Error.ExitCode != api.ExitNotPermitted || code != http.StatusForbidden ||
			!slices.Equal(eb.Error.Kinds, api.ErrorKinds(inErr)) {
			t.Errorf("%v: in-process kinds %v exit %d; daemon HTTP %d kinds %v exit %d",
				h, api.ErrorKinds(inErr), api.ExitCode(inErr), code, eb.Error.Kinds, eb.Error.ExitCode)
		}
	}
}
