package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/agent/client"
	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// Role test identities: numeric gids need no /etc/group entry, since the
// test config maps them and the kernel reports them as they are.
const (
	nobodyUID  = 65534
	officerUID = 65533
	adminGID   = 64001 // crypto officers in the test config
	userGID    = 64002 // users in the test config
)

// syncBuffer is a bytes.Buffer safe for a child's output and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// notifySocket is a fake NOTIFY_SOCKET: every datagram's lines, in order.
type notifySocket struct {
	path  string
	lines chan string
}

func listenNotify(t *testing.T, dir string) *notifySocket {
	t.Helper()
	path := filepath.Join(dir, "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	n := &notifySocket{path: path, lines: make(chan string, 1024)}
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			for _, l := range strings.Split(string(buf[:k]), "\n") {
				n.lines <- l
			}
		}
	}()
	return n
}

// await returns the lines seen up to and including want; it fails the test
// after timeout.
func (n *notifySocket) await(t *testing.T, want string, timeout time.Duration) []string {
	t.Helper()
	var seen []string
	deadline := time.After(timeout)
	for {
		select {
		case l := <-n.lines:
			seen = append(seen, l)
			if l == want {
				return seen
			}
		case <-deadline:
			t.Fatalf("no %s within %v; saw %q", want, timeout, seen)
		}
	}
}

// buildProvd builds the provd binary into dir.
func buildProvd(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "provd")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// publicDir is a directory other uids can traverse, for the binary and the
// socket (t.TempDir's are 0700).
func publicDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "provd-serve-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestServe runs `provd serve` under systemd-socket-activate on swtpm, with
// a NOTIFY_SOCKET the test reads: READY=1, 32 concurrent clients signing with
// derived keys, role separation with child processes of other uids, SIGHUP,
// SIGTERM with STOPPING=1 and a clean exit, and no handle left in the TPM.
func TestServe(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("TestServe drops privileges for its role tests: run it as root (make test does)")
	}
	tool, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Fatalf("systemd-socket-activate not found (apt-get install systemd): %v", err)
	}
	env := swtpmtest.Start(t)
	ctx := context.Background()
	state := filepath.Join(t.TempDir(), "state")

	// Provision and derive the signing keys in-process, then hand the TPM over.
	const nKeys = 4
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatalf("provision: %v", err)
	}
	for i := range nKeys {
		if _, err := officertest.Derive(t, ctx, ag, api.DeriveRequest{Name: fmt.Sprintf("sign-%d", i), Label: "serve-test", Context: strconv.Itoa(i), Type: "ecc-p256", Usage: catalog.UsageSign}); err != nil {
			t.Fatalf("derive: %v", err)
		}
	}
	sealed, err := ag.Seal(ctx, api.SealRequest{Data: []byte("role test secret")})
	if err != nil {
		t.Fatal(err)
	}
	if err := ag.Close(); err != nil {
		t.Fatal(err)
	}
	env.CloseTPM()

	pub := publicDir(t)
	bin := buildProvd(t, pub)
	sock := filepath.Join(pub, "provd.sock")
	sealedFile := filepath.Join(pub, "secret.sealed")
	if err := os.WriteFile(sealedFile, sealed, 0o644); err != nil {
		t.Fatal(err)
	}
	badPolicy := filepath.Join(pub, "bad-policy.json")
	if err := os.WriteFile(badPolicy, []byte(`{"not":"a policy"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "provd.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, `
log:
  level: info
limits:
  request_timeout: 60s
roles:
  crypto-officer:
    users: [root]
    groups: [%d]
  user:
    users: [root]
    groups: [%d]
`, adminGID, userGID), 0o600); err != nil {
		t.Fatal(err)
	}

	notify := listenNotify(t, t.TempDir())
	var stderr syncBuffer
	cmd := exec.Command(tool, "-l", sock,
		"-E", "NOTIFY_SOCKET="+notify.path,
		bin, "--tpm", env.Spec, "--state-dir", state, "serve", "--config", cfg)
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	done := make(chan struct{})
	go func() { exited <- cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
			<-done
		}
	})
	// systemd-socket-activate binds at once and starts provd on the first
	// connection. The socket gets the umask's mode: open it to the role
	// tests' uids (provd.socket would say SocketMode=0660, SocketGroup=provd).
	waitFor(t, func() bool { _, err := os.Stat(sock); return err == nil }, "socket bound")
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	// The socket file exists from bind(2), before listen(2): a connection
	// in between is refused, so wait for one that is accepted.
	waitFor(t, func() bool { return client.Answers(ctx, sock) }, "activation socket answers")
	seen := notify.await(t, "READY=1", 60*time.Second)
	if !hasPrefix(seen, "STATUS=opening the TPM") {
		t.Errorf("no STATUS line before READY=1: %q", seen)
	}
	seen = notify.await(t, "STATUS=serving on "+sock+", TPM "+env.Spec, 10*time.Second)
	t.Logf("notifications up to ready: %q", seen)

	t.Run("32 clients sign", func(t *testing.T) {
		c := client.New(sock)
		defer c.Close()
		pubs := make([]*ecdsa.PublicKey, nKeys)
		for i := range nKeys {
			p, _, err := c.KeyPublic(ctx, fmt.Sprintf("sign-%d", i))
			if err != nil {
				t.Fatal(err)
			}
			pubs[i] = p.(*ecdsa.PublicKey)
		}
		const clients, perClient = 32, 25
		var wg sync.WaitGroup
		errs := make(chan error, clients)
		start := time.Now()
		for w := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := client.New(sock)
				defer c.Close()
				for i := range perClient {
					k := (w + i) % nKeys
					msg := make([]byte, 32)
					rand.Read(msg)
					d := sha256.Sum256(msg)
					sig, err := c.Sign(ctx, fmt.Sprintf("sign-%d", k), d[:], api.SignOptions{})
					if err != nil {
						errs <- fmt.Errorf("client %d request %d: %w", w, i, err)
						return
					}
					if !ecdsa.VerifyASN1(pubs[k], d[:], sig) {
						errs <- fmt.Errorf("client %d request %d: signature does not verify", w, i)
						return
					}
				}
			}()
		}
		wg.Wait()
		elapsed := time.Since(start)
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		n := clients * perClient
		t.Logf("%d signatures from %d concurrent clients in %v: %.0f requests/s", n, clients, elapsed, float64(n)/elapsed.Seconds())
	})

	t.Run("roles", func(t *testing.T) {
		nobody := &syscall.Credential{Uid: nobodyUID, Gid: nobodyUID, Groups: []uint32{}}
		user := &syscall.Credential{Uid: nobodyUID, Gid: nobodyUID, Groups: []uint32{userGID}}
		officer := &syscall.Credential{Uid: officerUID, Gid: officerUID, Groups: []uint32{adminGID}}
		for _, tc := range []struct {
			who  string
			cred *syscall.Credential
			args []string
			code int
		}{
			{"nobody", nobody, []string{"status"}, api.ExitNotPermitted},
			{"nobody", nobody, []string{"unseal", "--in", sealedFile, "--out", "-"}, api.ExitNotPermitted},
			{"nobody", nobody, []string{"zeroize", "--yes"}, api.ExitNotPermitted},
			{"user", user, []string{"status"}, api.ExitOK},
			{"user", user, []string{"policy", "show"}, api.ExitOK},
			{"user", user, []string{"unseal", "--in", sealedFile, "--out", "-"}, api.ExitOK},
			{"user", user, []string{"audit", "verify"}, api.ExitOK},
			{"user", user, []string{"audit", "show"}, api.ExitNotPermitted},
			{"user", user, []string{"policy", "install", badPolicy}, api.ExitNotPermitted},
			{"user", user, []string{"provision", "--force"}, api.ExitNotPermitted},
			{"user", user, []string{"zeroize", "--yes"}, api.ExitNotPermitted},
			{"officer", officer, []string{"status"}, api.ExitOK},
			{"officer", officer, []string{"audit", "show"}, api.ExitOK},
			// Past the role check, the agent refuses the file itself.
			{"officer", officer, []string{"policy", "install", badPolicy}, api.ExitUsage},
			// Separation of duties: an officer does not use keys.
			{"officer", officer, []string{"unseal", "--in", sealedFile, "--out", "-"}, api.ExitNotPermitted},
		} {
			t.Run(tc.who+" "+strings.Join(tc.args[:min(2, len(tc.args))], " "), func(t *testing.T) {
				c := exec.Command(bin, tc.args...)
				c.Env = []string{"PROVD_SOCKET=" + sock, "PATH=/usr/bin:/bin", "HOME=/"}
				c.Dir = "/"
				c.SysProcAttr = &syscall.SysProcAttr{Credential: tc.cred}
				out, err := c.CombinedOutput()
				code := 0
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					code = ee.ExitCode()
				} else if err != nil {
					t.Fatal(err)
				}
				if code != tc.code {
					t.Errorf("exit %d, want %d\n%s", code, tc.code, out)
				}
				if tc.code == api.ExitOK && tc.args[0] == "unseal" && string(out) != "role test secret" {
					t.Errorf("unsealed %q", out)
				}
			})
		}
	})

	t.Run("SIGHUP reloads", func(t *testing.T) {
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		seen := notify.await(t, "READY=1", 10*time.Second)
		if !hasPrefix(seen, "RELOADING=1") || !hasPrefix(seen, "MONOTONIC_USEC=") {
			t.Errorf("reload notifications %q, want RELOADING=1 with MONOTONIC_USEC before READY=1", seen)
		}
	})

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	notify.await(t, "STOPPING=1", 10*time.Second)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("provd serve: %v\n%s", err, stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("provd serve did not stop\n%s", stderr.String())
	}
	logs := stderr.String()
	if m := regexp.MustCompile(`requests=(\d+) refused=(\d+) tpm_commands=(\d+)`).FindStringSubmatch(logs); m != nil {
		reqs, _ := strconv.Atoi(m[1])
		cmds, _ := strconv.Atoi(m[3])
		t.Logf("daemon: %s requests, %s refused, %s TPM commands (%.1f per request)", m[1], m[2], m[3], float64(cmds)/float64(max(reqs, 1)))
	} else {
		t.Errorf("no stop statistics in the daemon's log:\n%s", logs)
	}
	if !strings.Contains(logs, "TPM shut down (STATE) and closed") || strings.Contains(logs, "level=ERROR") {
		t.Errorf("unclean stop:\n%s", logs)
	}

	// The TPM: no leftovers (Reopen checks), and the refusals in the audit trail.
	env.Reopen()
	left, err := env.TPM.Leftovers()
	if err != nil || len(left) > 0 {
		t.Fatalf("leftover handles after stop: %v %v", left, err)
	}
	ag, err = agent.New(agent.Config{TPM: env.TPM, StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Close()
	if _, err := ag.AuditVerify(context.Background()); err != nil {
		t.Errorf("audit verify: %v", err)
	}
	recs, err := ag.AuditRecords(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	refused := map[string]bool{}
	for _, r := range recs {
		if r.Objects["refused"] != "" {
			refused[fmt.Sprintf("%d %s", r.UID, r.Op)] = true
			if !strings.HasPrefix(r.Result, "error: ") {
				t.Errorf("refusal recorded as %q", r.Result)
			}
		}
	}
	for _, want := range []string{"65534 status", "65534 unseal", "65534 zeroize", "65534 provision", "65534 audit-show", "65534 policy-install", "65533 unseal"} {
		if !refused[want] {
			t.Errorf("refusal %q not in the audit trail; refusals: %v", want, refused)
		}
	}
	if len(refused) != 7 {
		t.Errorf("refusals in the audit trail: %v, want exactly 7", refused)
	}
}

func hasPrefix(lines []string, p string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, p) {
			return true
		}
	}
	return false
}

func waitFor(t *testing.T, ok func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
