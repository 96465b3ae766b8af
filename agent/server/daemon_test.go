package server

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// daemonRun is one Run of the daemon on a test's swtpm.
type daemonRun struct {
	srv  *Server
	sock string
	logs *lockedBuffer
	stop context.CancelFunc
	done chan error
}

// startDaemon runs Run on env's TPM (closed by the caller first: swtpm serves
// one connection) with the given drain and close timeouts.
func startDaemon(t *testing.T, env *swtpmtest.Env, state string, drain, closeWait time.Duration) *daemonRun {
	t.Helper()
	me := RoleMembers{UIDs: []int{os.Getuid()}}
	d := &daemonRun{sock: filepath.Join(t.TempDir(), "provd.sock"), logs: &lockedBuffer{}, done: make(chan error, 1)}
	ready := make(chan *Server, 1)
	ctx, cancel := context.WithCancel(context.Background())
	d.stop = cancel
	go func() {
		d.done <- Run(ctx, DaemonConfig{
			Config: Config{TPM: env.Spec, Socket: SocketConfig{Path: d.sock}, Roles: &Roles{Officer: me, User: me},
				RequestTimeout: 30 * time.Second, MaxWaiting: 16, LogLevel: slog.LevelDebug},
			StateDir: state,
			Listen: func(path string, _ os.FileMode, _ string) (net.Listener, error) {
				return net.Listen("unix", path)
			},
			Logger:       slog.New(slog.NewTextHandler(d.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			DrainTimeout: drain,
			CloseTimeout: closeWait,
			Ready:        func(s *Server) { ready <- s },
		})
	}()
	select {
	case d.srv = <-ready:
	case err := <-d.done:
		t.Fatalf("Run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the daemon is not ready after 30 s")
	}
	return d
}

// signFor admits an operation that signs with key for dur (a slow request
// that outlives a short drain) and reports each signature's error.
func signFor(t *testing.T, s *Server, key string, dur time.Duration) (done <-chan error) {
	t.Helper()
	admitted := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- s.q.do(context.Background(), clientOf(0), func() error {
			close(admitted)
			d := sha256.Sum256([]byte("drain"))
			for end := time.Now().Add(dur); time.Now().Before(end); {
				if _, err := s.ag.Sign(context.Background(), key, d[:], api.SignOptions{}); err != nil {
					return err
				}
			}
			return nil
		})
	}()
	<-admitted
	return errc
}

// A stop whose drain times out while an admitted operation still runs in the
// TPM queue: Run waits for it before closing the agent and the TPM (no handle
// flushed or Shutdown(STATE) under it, no concurrent use of the key cache:
// -race), turns away the requests still waiting, and past CloseTimeout
// leaves the agent and the TPM open and says so.
func TestStopWaitsForTheOperationInTheQueue(t *testing.T) {
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
	if _, err := officertest.Derive(t, ctx, ag, api.DeriveRequest{Name: "sig", Label: "drain", Type: "ecc-p256", Usage: catalog.UsageSign}); err != nil {
		t.Fatal(err)
	}
	if err := ag.Close(); err != nil {
		t.Fatal(err)
	}
	env.CloseTPM()

	t.Run("the operation ends within the close timeout", func(t *testing.T) {
		d := startDaemon(t, env, state, 50*time.Millisecond, 20*time.Second)
		op := signFor(t, d.srv, "sig", 1500*time.Millisecond)
		// A request waiting behind it keeps the drain from finishing.
		hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", d.sock)
		}}}
		waiting := make(chan int, 1)
		go func() {
			rsp, err := hc.Get("http://provd/v1/status")
			if err != nil {
				waiting <- 0
				return
			}
			rsp.Body.Close()
			waiting <- rsp.StatusCode
		}()
		for d.srv.q.waiting.Load() == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		d.stop()
		var runErr error
		select {
		case runErr = <-d.done:
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return")
		}
		select {
		case err := <-op:
			if err != nil {
				t.Errorf("the operation in the queue failed: %v", err)
			}
		default:
			t.Fatal("Run returned while the operation still ran in the queue")
		}
		if !errors.Is(runErr, context.DeadlineExceeded) {
			t.Errorf("Run: %v, want the drain's timeout", runErr)
		}
		if code := <-waiting; code != http.StatusServiceUnavailable {
			t.Errorf("the request waiting at stop: HTTP %d, want 503", code)
		}
		logs := d.logs.String()
		if !strings.Contains(logs, "TPM shut down (STATE) and closed") || strings.Contains(logs, "transient handles left") {
			t.Errorf("unclean close:\n%s", logs)
		}
	})

	t.Run("the operation outlives the close timeout", func(t *testing.T) {
		d := startDaemon(t, env, state, 50*time.Millisecond, 200*time.Millisecond)
		op := signFor(t, d.srv, "sig", 1500*time.Millisecond)
		d.stop()
		var runErr error
		select {
		case runErr = <-d.done:
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return")
		}
		if runErr == nil || !strings.Contains(d.logs.String(), "an operation still holds the TPM") {
			t.Errorf("Run: %v, want an error and a log line for the operation left running\n%s", runErr, d.logs.String())
		}
		// Left alone, the operation finishes with the agent and TPM intact.
		if err := <-op; err != nil {
			t.Errorf("the operation left running failed: %v", err)
		}
		// The test closes what the daemon left open, as the process exit would.
		if err := d.srv.ag.Close(); err != nil {
			t.Error(err)
		}
		if err := closeTPM(d.srv.t, slog.New(slog.DiscardHandler)); err != nil {
			t.Error(err)
		}
	})
}
