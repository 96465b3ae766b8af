package cli_test

import (
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FLAW (failed before the mend: the answer is parsed and encoded again, and
// one that is no approval or peer file is refused): `provd fleet approve
// --out -` (and `--peer-out -`) writes the
// fleet endpoint's answer to stdout raw, around emit and terminalSafe:
// res.Approval and res.Peer are json.RawMessage, copied byte for byte from
// the endpoint's body, and JSON lets a string hold C1 controls (U+009B,
// the 8-bit CSI) and bidi overrides (U+202E) raw, and lets CR stand as
// whitespace between tokens. A compromised or confused endpoint (or
// whoever holds the pinned certificate's key) answers an approval whose
// text clears and redraws the operator's terminal, in the command whose
// output the operator hands to `dup export --approval`. This is review
// 55's `fleet authority` flaw (mended there by re-encoding the key) on the
// neighbouring command: the threat model's row names "an endpoint's
// answers" among the texts that must not drive the terminal.
// Mend: decode res.Approval and res.Peer into their types
// (policy.Approval's UnmarshalJSON, api.PeerIdentity) and write them
// re-encoded (json.Marshal escapes nothing of C1 either: write through
// terminalSafe{json: true} when the path is "-"), or refuse "-" for them.
func TestReview56FleetApprovePrintsTheEndpointsAnswerRaw(t *testing.T) {
	body := "{\"device_id\":\"d1\",\"object_name\":\"000b00\",\"pk_name\":\"000b01\",\r" +
		"\"approval\":{\"note\":\"\u009b2J\u009bH\u202eevorppa\",\r\"n\":1},\r" +
		"\"peer\":{\"note\":\"\u009b2J\"}}"
	if !json.Valid([]byte(body)) {
		t.Fatal("the endpoint's answer is not JSON")
	}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/dup-approval") {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	ca := filepath.Join(dir, "endpoint.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("t0ken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, stderr, code := run(t, nil, "fleet", "approve", "d1", "--object-name", "000b00",
		"--out", "-", "--peer-out", filepath.Join(dir, "peer.json"),
		"--endpoint", srv.URL, "--ca-cert", ca, "--token-file", token)
	t.Logf("exit %d, stderr %q", code, stderr)
	review53NoRaw(t, "fleet approve --out -", out+stderr)
	// Mended: an answer that is no approval is refused, and nothing of it
	// is written.
	if code == 0 || strings.Contains(out, "evorppa") {
		t.Errorf("fleet approve took an answer that is no approval: exit %d, stdout %q", code, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "peer.json")); err == nil {
		t.Errorf("fleet approve wrote the peer file of a refused answer")
	}
}
