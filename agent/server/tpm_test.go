package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// tpmServer is a Server with an agent on a fresh swtpm, served on a unix
// socket, and what it logged.
type tpmServer struct {
	*Server
	env   *swtpmtest.Env
	hc    *http.Client
	logs  *lockedBuffer
	state string
	sock  string // the unix socket it serves on
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// serveTPM starts a swtpm, an agent on it and a Server for both; the caller
// holds both roles. Clean-up stops the server and closes the agent before
// the swtpm harness checks for leaked handles.
func serveTPM(t *testing.T, configure ...func(*Server)) *tpmServer {
	t.Helper()
	env := swtpmtest.Start(t)
	ts := &tpmServer{env: env, logs: &lockedBuffer{}, state: filepath.Join(t.TempDir(), "state")}
	log := slog.New(slog.NewJSONHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: ts.state, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	me := RoleMembers{UIDs: []int{os.Getuid()}}
	s, err := New(Options{Agent: ag, TPM: env.TPM, Roles: &Roles{Officer: me, User: me}, RequestTimeout: 30 * time.Second, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ts.Server = s
	for _, c := range configure {
		c(s)
	}
	sock := filepath.Join(t.TempDir(), "s.sock")
	ts.sock = sock
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		if err := s.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
		if err := <-served; err != nil {
			t.Error(err)
		}
		if err := ag.Close(); err != nil {
			t.Error(err)
		}
	})
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	ts.hc = &http.Client{Transport: tr}
	return ts
}

// call sends body (nil: none) and returns the status and the answer.
func (ts *tpmServer) call(t *testing.T, method, path string, body any) (int, []byte) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://provd"+path, r)
	if err != nil {
		t.Fatal(err)
	}
	rsp, err := ts.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer rsp.Body.Close()
	b, err := io.ReadAll(rsp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return rsp.StatusCode, b
}

// The request log holds exactly what docs/api.md ("Requests and limits")
// says: the operation, the caller, duration, TPM commands, the key name for
// key endpoints, and the error's kinds and message; never body bytes.
func TestRequestLogFields(t *testing.T) {
	ts := serveTPM(t)
	marker := []byte("body-bytes-that-must-not-be-logged")
	for _, rq := range []struct {
		path string
		body any
	}{
		{"/v1/keys/hmac", api.DataRequest{Name: "mac-key", Data: marker}},
		{"/v1/seal", api.SealRequest{Data: marker}},
		{"/v1/keys/public", api.KeyName{Name: "pub-key"}},
	} {
		if status, b := ts.call(t, "POST", rq.path, rq.body); status == http.StatusOK {
			t.Fatalf("%s on an unprovisioned TPM: %s", rq.path, b)
		}
	}
	if status, b := ts.call(t, "GET", "/v1/status", nil); status != http.StatusOK {
		t.Fatalf("status: %d %s", status, b)
	}

	documented := map[string]bool{"time": true, "level": true, "msg": true,
		"operation": true, "caller_uid": true, "caller_pid": true, "duration": true, "tpm_commands": true,
		"key_name": true, "cached": true, "error_kinds": true, "error": true}
	keyNames := map[string]string{}
	logs := ts.logs.String()
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if rec["msg"] != "request" && rec["msg"] != "request failed" {
			continue // the agent's own lines
		}
		for k := range rec {
			if !documented[k] {
				t.Errorf("request log field %q is not in docs/api.md: %s", k, line)
			}
		}
		op, _ := rec["operation"].(string)
		if kn, ok := rec["key_name"].(string); ok {
			keyNames[op] = kn
		}
	}
	if keyNames["key-hmac"] != "mac-key" || keyNames["key-public"] != "pub-key" || keyNames["seal"] != "" || len(keyNames) != 2 {
		t.Errorf("key names logged %v, want the hmac and public requests' only", keyNames)
	}
	if strings.Contains(logs, string(marker)) || strings.Contains(logs, base64.StdEncoding.EncodeToString(marker)) {
		t.Errorf("body bytes in the log:\n%s", logs)
	}
}

// holdQueue admits an operation that runs work until release is called.
func holdQueue(t *testing.T, s *Server, work func(stop <-chan struct{}) error) (release func()) {
	t.Helper()
	stop := make(chan struct{})
	admitted := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- s.q.do(context.Background(), clientOf(0), func() error {
			close(admitted)
			return work(stop)
		})
	}()
	<-admitted
	return func() {
		close(stop)
		if err := <-done; err != nil {
			t.Errorf("the operation holding the queue: %v", err)
		}
	}
}

// The watchdog's check passes while an admitted operation holds the queue
// longer than the check may wait, as long as it makes progress (TPM commands
// answered, or admitted recently); an operation that holds the queue with
// no TPM answer past the stall limit fails it.
func TestHealthWhileAnOperationHoldsTheQueue(t *testing.T) {
	ts := serveTPM(t)
	ts.healthWait = 50 * time.Millisecond
	ts.stallAfter = 600 * time.Millisecond
	ctx := context.Background()
	if err := ts.Health(ctx); err != nil {
		t.Fatalf("idle: %v", err)
	}

	// A long operation of many TPM commands, as a big HMAC: healthy
	// throughout, well past the stall limit.
	release := holdQueue(t, ts.Server, func(stop <-chan struct{}) error {
		for {
			select {
			case <-stop:
				return nil
			default:
			}
			if _, err := ts.t.PCRUpdateCounter(); err != nil {
				return err
			}
		}
	})
	for i := range 6 {
		time.Sleep(200 * time.Millisecond)
		if err := ts.Health(ctx); err != nil {
			t.Fatalf("check %d while the TPM works for an operation: %v", i, err)
		}
	}
	release()

	// One long TPM command (or a lock wait): no command answered, but the
	// operation is young.
	release = holdQueue(t, ts.Server, func(stop <-chan struct{}) error { <-stop; return nil })
	if err := ts.Health(ctx); err != nil {
		t.Fatalf("an operation admitted just now: %v", err)
	}
	// Stuck: no TPM answer for longer than the stall limit.
	time.Sleep(ts.stallAfter + 100*time.Millisecond)
	if err := ts.Health(ctx); !errors.Is(err, api.ErrBusy) {
		t.Errorf("held past the stall limit with no TPM command answered: Health = %v, want ErrBusy", err)
	}
	release()
	if err := ts.Health(ctx); err != nil {
		t.Fatalf("after the stuck operation ended: %v", err)
	}
}

// Status polls within statusTTL answer from the last result without the TPM
// (each poll otherwise loads the PK and runs a policy session); any other
// operation makes the next poll run again, so status never hides a change
// the daemon made.
func TestStatusCached(t *testing.T) {
	ts := serveTPM(t)
	ts.reads.ttl = time.Hour // only a change invalidates; a second test below
	status := func() api.Status {
		t.Helper()
		code, b := ts.call(t, "GET", "/v1/status", nil)
		if code != http.StatusOK {
			t.Fatalf("status: HTTP %d %s", code, b)
		}
		var st api.Status
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	if code, b := ts.call(t, "POST", "/v1/provision", api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); code != http.StatusOK {
		t.Fatalf("provision: HTTP %d %s", code, b)
	}
	first := status()
	before := ts.t.Stats().Commands
	for range 5 {
		if st := status(); st.Keys != first.Keys || st.AuditLines != first.AuditLines {
			t.Fatalf("cached status %+v differs from %+v", st, first)
		}
	}
	if n := ts.t.Stats().Commands - before; n != 0 {
		t.Errorf("5 status polls within the TTL sent %d TPM commands, want 0", n)
	}
	if code, b := ts.call(t, "GET", "/v1/policy", nil); code != http.StatusOK {
		t.Fatalf("policy show: HTTP %d %s", code, b)
	}
	before = ts.t.Stats().Commands
	if code, b := ts.call(t, "GET", "/v1/policy", nil); code != http.StatusOK {
		t.Fatalf("policy show: HTTP %d %s", code, b)
	}
	if n := ts.t.Stats().Commands - before; n != 0 {
		t.Errorf("a second policy show within the TTL sent %d TPM commands, want 0", n)
	}

	// A key derived through the daemon shows at once.
	req := api.DeriveRequest{Name: "k", Label: "cache", Type: "ecc-p256", Usage: catalog.UsageSign}
	req.Approval = officertest.Approve(t, first.PolicyDigest, req)
	if code, b := ts.call(t, "POST", "/v1/keys/derive", req); code != http.StatusOK {
		t.Fatalf("derive: HTTP %d %s", code, b)
	}
	if st := status(); st.Keys != first.Keys+1 || st.AuditLines <= first.AuditLines {
		t.Errorf("status after a derive: %d keys, %d audit lines; want %d keys and more than %d lines", st.Keys, st.AuditLines, first.Keys+1, first.AuditLines)
	}

	// Past the TTL, a poll runs again.
	ts.reads.mu.Lock()
	ts.reads.ttl = 50 * time.Millisecond
	ts.reads.mu.Unlock()
	status()
	time.Sleep(60 * time.Millisecond)
	before = ts.t.Stats().Commands
	status()
	if ts.t.Stats().Commands == before {
		t.Error("a status poll past the TTL sent no TPM command")
	}
	if !strings.Contains(ts.logs.String(), `"cached":true`) {
		t.Error("no cached request in the log")
	}
}
