package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/agent/client"
	"github.com/provd/provd/api"
	"github.com/provd/provd/keywrap"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// review52KEK is a KEK import request for name from two random AES-256
// components, and the combined key.
func review52KEK(t *testing.T, name string) (api.KEKImportRequest, []byte) {
	t.Helper()
	req := api.KEKImportRequest{Name: name}
	for range 2 {
		c := make([]byte, 32)
		rand.Read(c)
		k, err := keywrap.KCV(c)
		if err != nil {
			t.Fatal(err)
		}
		req.Components = append(req.Components, c)
		req.KCVs = append(req.KCVs, hex.EncodeToString(k[:]))
	}
	key, err := keywrap.Combine(req.Components)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := keywrap.KCV(key)
	req.KCV = hex.EncodeToString(k[:])
	return req, key
}

// Held: the daemon's wire path checks the export approval's KEK part as the
// in-process agent does. Through the socket (agent/client and a raw HTTP
// body), an officer-role caller with the officer's approval of "ext" under
// the custodians' KEK: the approved export works and opens with the
// custodians' key (control); the same approval under A3's own KEK is
// not_permitted (exit 5) and its audit record names no KEK object; the old
// duplication-only approval, an approval with "kek" and "KEK", and a
// request with "kek" and "KEK" (A3's KEK in one) are bad requests (HTTP 400)
// that reach no operation (the trail takes no key-export record).
func TestReview52ExportApprovalOverTheWire(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	ctx := context.Background()
	state := filepath.Join(t.TempDir(), "state")
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "ext", Type: "ecc-p256", Extractable: true}); err != nil {
		t.Fatal(err)
	}
	if err := ag.Close(); err != nil {
		t.Fatal(err)
	}
	env.CloseTPM()
	d := startDaemon(t, env, state, 5*time.Second, 20*time.Second)
	defer func() {
		d.stop()
		select {
		case <-d.done:
		case <-time.After(30 * time.Second):
			t.Error("Run did not return")
		}
	}()
	c := client.New(d.sock)
	creq, custodians := review52KEK(t, "backup-kek")
	if _, err := c.ImportKEK(ctx, creq); err != nil {
		t.Fatal(err)
	}
	mreq, _ := review52KEK(t, "mine")
	if _, err := c.ImportKEK(ctx, mreq); err != nil {
		t.Fatal(err)
	}
	ap := officertest.ApproveExport(t, ctx, c, "ext", "backup-kek")
	wrapped, err := c.ExportKey(ctx, api.KeyExportRequest{Name: "ext", KEK: "backup-kek", Approval: ap})
	if err != nil {
		t.Fatalf("control, the approved export over the wire: %v", err)
	}
	if der, err := keywrap.Unwrap(custodians, wrapped); err != nil {
		t.Fatalf("control: the custodians' key does not open it: %v", err)
	} else if _, err := x509.ParsePKCS8PrivateKey(der); err != nil {
		t.Fatalf("control: %v", err)
	}

	_, err = c.ExportKey(ctx, api.KeyExportRequest{Name: "ext", KEK: "mine", Approval: ap})
	if !errors.Is(err, api.ErrNotPermitted) || api.ExitCode(err) != 5 {
		t.Errorf("the custodians' approval under A3's KEK over the wire: %v (exit %d), want not_permitted, exit 5", err, api.ExitCode(err))
	}
	recs, err := c.AuditRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	last := recs[len(recs)-1]
	if last.Op != "key-export" || last.Objects["kek_object"] != "" || last.Objects["kek"] != "mine" {
		t.Errorf("the refused export's audit record %+v, want key-export under mine, no KEK object", last)
	}
	exports := len(recs)

	b, err := json.Marshal(ap)
	if err != nil {
		t.Fatal(err)
	}
	var parts map[string]json.RawMessage
	if err := json.Unmarshal(b, &parts); err != nil {
		t.Fatal(err)
	}
	dup := string(parts["duplication"])
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", d.sock)
	}}}
	for what, body := range map[string]string{
		"the old duplication-only approval": `{"name":"ext","kek":"mine","approval":` + dup + `}`,
		"an approval with kek and KEK":      `{"name":"ext","kek":"mine","approval":{"format":1,"duplication":` + dup + `,"kek":` + string(parts["kek"]) + `,"KEK":` + string(parts["kek"]) + `}}`,
		"a request with kek and KEK":        `{"name":"ext","kek":"backup-kek","KEK":"mine","approval":` + string(b) + `}`,
	} {
		rsp, err := hc.Post("http://provd"+api.RouteKeyExport.Path, "application/json", bytes.NewReader([]byte(body)))
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(rsp.Body)
		rsp.Body.Close()
		if rsp.StatusCode != http.StatusBadRequest || !strings.Contains(string(msg), "bad_input") {
			t.Errorf("%s: HTTP %d %s, want 400 bad_input", what, rsp.StatusCode, msg)
		}
	}
	recs, err = c.AuditRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != exports {
		t.Errorf("the bad requests reached an operation: %d audit records, then %d: %+v", exports, len(recs), recs[exports:])
	}
}
