package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/provd/provd/api"
	"github.com/provd/provd/internal/strictjson"
)

func TestQueueDeadlineAndLimit(t *testing.T) {
	q := newQueue(1)
	hold := make(chan struct{})
	started := make(chan struct{})
	go q.do(context.Background(), clientOf(0), func() error { close(started); <-hold; return nil })
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	waiting := make(chan error)
	go func() { waiting <- q.do(ctx, clientOf(0), func() error { return nil }) }()
	time.Sleep(10 * time.Millisecond)
	// One waits already: a second waiter is refused at once.
	if err := q.do(context.Background(), clientOf(0), func() error { return nil }); !errors.Is(err, api.ErrBusy) {
		t.Errorf("over the limit: %v, want ErrBusy", err)
	}
	if err := <-waiting; !errors.Is(err, api.ErrBusy) {
		t.Errorf("past the deadline: %v, want ErrBusy", err)
	}
	cctx, ccancel := context.WithCancel(context.Background())
	ccancel()
	if err := q.do(cctx, clientOf(0), func() error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("caller gone: %v", err)
	}
	close(hold)
	if err := q.do(context.Background(), clientOf(0), func() error { return nil }); err != nil {
		t.Errorf("after release: %v", err)
	}
}

// serveNoTPM serves a Server without agent or TPM: enough for everything
// decided before the queue (roles, bodies, routes).
func serveNoTPM(t *testing.T, roles *Roles) *http.Client {
	t.Helper()
	s := newServer(Options{Roles: roles, RequestTimeout: time.Second, MaxWaiting: 4, ExitCode: func(error) int { return 42 }})
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
}

func TestBodiesAndRoutes(t *testing.T) {
	me := RoleMembers{UIDs: []int{os.Getuid()}}
	hc := serveNoTPM(t, &Roles{Officer: me, User: me})
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		kind                     string
	}{
		{"unknown field", "POST", "/v1/unseal", `{"blob":"AA==","x":1}`, 400, "bad_input"},
		{"trailing data", "POST", "/v1/seal", `{"data":"AA=="} {}`, 400, "bad_input"},
		{"not JSON", "POST", "/v1/keys/sign", `sign please`, 400, "bad_input"},
		{"empty body", "POST", "/v1/provision", ``, 400, "bad_input"},
		{"nested 800,000 deep", "POST", "/v1/seal", `{"data":"AA==","bank":` + strings.Repeat(`{"a":`, 800_000), 400, "bad_input"},
		{"nested in pcr_values", "POST", "/v1/provision", `{"pcr_values":` + strings.Repeat(`[`, 100) + strings.Repeat(`]`, 100) + `}`, 400, "bad_input"},
		{"duplicate key in pcr_values", "POST", "/v1/provision", `{"pcr_values":{"bank":"sha256","bank":"sha384","pcrs":{"7":"` + strings.Repeat("00", 32) + `"}}}`, 400, "bad_input"},
		{"too large", "POST", "/v1/seal", `{"data":"` + strings.Repeat("A", MaxRequestBody) + `"}`, 413, "bad_input"},
		{"no such endpoint", "GET", "/v1/nothing", ``, 404, "not_found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, "http://provd"+tc.path, strings.NewReader(tc.body))
			rsp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer rsp.Body.Close()
			var eb api.ErrorBody
			b := make([]byte, 4096)
			n, _ := rsp.Body.Read(b)
			if err := strictjson.Decode(b[:n], &eb); err != nil {
				t.Fatalf("error body: %v: %s", err, b[:n])
			}
			if rsp.StatusCode != tc.status || len(eb.Error.Kinds) == 0 || eb.Error.Kinds[0] != tc.kind || eb.Error.ExitCode != 42 {
				t.Errorf("HTTP %d %+v, want %d %s", rsp.StatusCode, eb.Error, tc.status, tc.kind)
			}
		})
	}
}

// A known path asked with another method is 405 with the methods it takes
// in Allow; an unknown path is 404 whatever the method.
func TestMethodNotAllowed(t *testing.T) {
	me := RoleMembers{UIDs: []int{os.Getuid()}}
	hc := serveNoTPM(t, &Roles{Officer: me, User: me})
	for _, tc := range []struct {
		method, path string
		status       int
		allow, kind  string
	}{
		{"DELETE", "/v1/status", http.StatusMethodNotAllowed, "GET, HEAD", "bad_input"},
		{"POST", "/v1/keys", http.StatusMethodNotAllowed, "GET, HEAD", "bad_input"},
		{"GET", "/v1/keys/sign", http.StatusMethodNotAllowed, "POST", "bad_input"},
		{"PUT", "/v1/seal", http.StatusMethodNotAllowed, "POST", "bad_input"},
		{"DELETE", "/v1/nothing", http.StatusNotFound, "", "not_found"},
		{"GET", "/v1/status/", http.StatusNotFound, "", "not_found"},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, "http://provd"+tc.path, nil)
			rsp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer rsp.Body.Close()
			b, _ := io.ReadAll(rsp.Body)
			var eb api.ErrorBody
			if err := strictjson.Decode(b, &eb); err != nil {
				t.Fatalf("error body: %v: %s", err, b)
			}
			if rsp.StatusCode != tc.status || rsp.Header.Get("Allow") != tc.allow || len(eb.Error.Kinds) == 0 || eb.Error.Kinds[0] != tc.kind {
				t.Errorf("HTTP %d Allow %q %+v, want %d Allow %q kind %s", rsp.StatusCode, rsp.Header.Get("Allow"), eb.Error, tc.status, tc.allow, tc.kind)
			}
		})
	}
}

// Every endpoint names a role; the user role never reaches an officer's
// operation and the reverse.
func TestEndpointRoles(t *testing.T) {
	officer := map[string]bool{"provision": true, "policy-install": true, "zeroize": true, "audit-show": true, "audit-repair": true, "audit-reanchor": true,
		"key-derive": true, "key-create": true, "key-delete": true, "key-export-blob": true, "key-import-blob": true,
		"kek-import": true, "key-export": true, "key-import": true,
		"peer-identity": true, "dup-export": true, "dup-import": true, "pk-export": true, "peer-prove": true, "provision-from": true,
		"attest-identity": true, "attest-activate": true, "attest-quote": true, "attest-install": true, "attest-record": true}
	any := map[string]bool{"status": true, "tpm-info": true, "tpm-identity": true, "policy-show": true, "audit-verify": true}
	seen := map[string]bool{}
	for _, ep := range Endpoints {
		if seen[ep.Method+ep.Path] {
			t.Errorf("%s %s twice", ep.Method, ep.Path)
		}
		seen[ep.Method+ep.Path] = true
		want := RoleUser
		if officer[ep.Op] {
			want = RoleOfficer
		} else if any[ep.Op] {
			want = RoleAny
		}
		if ep.Role != want {
			t.Errorf("%s: role %v, want %v", ep.Op, ep.Role, want)
		}
	}
}

// After a burst of concurrent clients and Shutdown, no goroutine is left.
func TestNoGoroutineLeak(t *testing.T) {
	base := runtime.NumGoroutine()
	me := RoleMembers{UIDs: []int{os.Getuid()}}
	s := newServer(Options{Roles: &Roles{Officer: me, User: me}, RequestTimeout: time.Second, MaxWaiting: 4})
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", sock)
			}}
			defer tr.CloseIdleConnections()
			for range 10 {
				rsp, err := (&http.Client{Transport: tr}).Post("http://provd/v1/unseal", "application/json", strings.NewReader(`{"x":1}`))
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, rsp.Body)
				rsp.Body.Close()
			}
		}()
	}
	wg.Wait()
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The daemon caps HMAC input and sign digests before the queue: a request
// over the cap never holds the TPM (this server has none to hold).
func TestInputLimits(t *testing.T) {
	me := RoleMembers{UIDs: []int{os.Getuid()}}
	hc := serveNoTPM(t, &Roles{Officer: me, User: me})
	for _, tc := range []struct {
		name, path string
		body       any
	}{
		{"hmac over the cap", "/v1/keys/hmac", api.DataRequest{Name: "k", Data: make([]byte, MaxHMACInput+1)}},
		{"digest over the cap", "/v1/keys/sign", api.SignRequest{Name: "k", Digest: make([]byte, MaxSignDigest+1)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := json.Marshal(tc.body)
			if err != nil {
				t.Fatal(err)
			}
			rsp, err := hc.Post("http://provd"+tc.path, "application/json", bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			defer rsp.Body.Close()
			rb, _ := io.ReadAll(rsp.Body)
			var eb api.ErrorBody
			if err := strictjson.Decode(rb, &eb); err != nil {
				t.Fatalf("error body: %v: %s", err, rb)
			}
			if rsp.StatusCode != http.StatusRequestEntityTooLarge || len(eb.Error.Kinds) == 0 || eb.Error.Kinds[0] != "bad_input" {
				t.Errorf("HTTP %d %+v, want 413 bad_input", rsp.StatusCode, eb.Error)
			}
		})
	}
}
