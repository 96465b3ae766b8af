package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/provd/provd/api"
	"github.com/provd/provd/cmd/provd/cli"
	"github.com/provd/provd/test/swtpmtest"
)

// cliEnv runs the CLI against one swtpm with one state dir.
type cliEnv struct {
	t     *testing.T
	swtpm *swtpmtest.Env
	dir   string
}

func newCLIEnv(t *testing.T) *cliEnv {
	env := swtpmtest.Start(t)
	env.CloseTPM() // the CLI connects itself; swtpm serves one client
	t.Cleanup(env.Reopen)
	return &cliEnv{t: t, swtpm: env, dir: filepath.Join(t.TempDir(), "state")}
}

func (c *cliEnv) run(args ...string) (string, string, int) {
	c.t.Helper()
	return run(c.t, nil, append([]string{"--tpm", c.swtpm.Spec, "--state-dir", c.dir}, args...)...)
}

func (c *cliEnv) must(args ...string) string {
	c.t.Helper()
	out, stderr, code := c.run(args...)
	if code != 0 {
		c.t.Fatalf("provd %s: exit %d: %s", strings.Join(args, " "), code, stderr)
	}
	return out
}

// With PCR 16 changed, every use of the PK fails with exit 3 naming PCR 16.
func TestPCRChangeLocksThePKExit3(t *testing.T) {
	c := newCLIEnv(t)
	c.must("provision", "--pcrs", "7,16", "--trust-on-first-use", "--allow-resettable")
	secret := filepath.Join(t.TempDir(), "secret")
	sealed := filepath.Join(t.TempDir(), "sealed")
	if err := os.WriteFile(secret, []byte("top secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.must("seal", "--in", secret, "--out", sealed)
	if out := c.must("unseal", "--in", sealed, "--out", "-"); out != "top secret" {
		t.Fatalf("unseal = %q", out)
	}
	c.must("tpm", "pcr", "extend", "16", "--data", "tamper")
	for _, args := range [][]string{
		{"unseal", "--in", sealed, "--out", "-"},
		{"seal", "--in", secret, "--out", sealed + "2"},
	} {
		_, stderr, code := c.run(args...)
		if code != api.ExitPolicy || !strings.Contains(stderr, "PCR 16") {
			t.Errorf("provd %s: exit %d, want 3 naming PCR 16: %s", args[0], code, stderr)
		}
	}
	out := c.must("policy", "show", "-o", "json")
	var ps struct {
		Differ    []int `json:"pcrs_differ"`
		Satisfied bool  `json:"satisfied"`
	}
	if err := json.Unmarshal([]byte(out), &ps); err != nil || ps.Satisfied || len(ps.Differ) != 1 || ps.Differ[0] != 16 {
		t.Fatalf("policy show: %s", out)
	}
	if _, stderr, code := c.run("provision"); code != api.ExitConflict {
		t.Errorf("second provision: exit %d (%s), want %d", code, stderr, api.ExitConflict)
	}
}

// audit verify detects an edited, a truncated and a reordered log (exit 14).
func TestAuditVerifyDetectsTampering(t *testing.T) {
	c := newCLIEnv(t)
	c.must("provision", "--pcrs", "7", "--trust-on-first-use")
	secret := filepath.Join(t.TempDir(), "s")
	os.WriteFile(secret, []byte("x"), 0o600)
	for i := 0; i < 3; i++ {
		c.must("seal", "--in", secret, "--out", secret+".sealed")
	}
	c.must("audit", "verify")
	logPath := filepath.Join(c.dir, "audit.log")
	orig, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(orig, []byte("\n"))
	lines = lines[:len(lines)-1] // the empty piece after the last newline
	for _, tc := range []struct {
		name string
		log  []byte
	}{
		{"edited", bytes.Replace(orig, []byte(`"op":"seal"`), []byte(`"op":"seaL"`), 1)},
		{"truncated", bytes.Join(lines[:len(lines)-1], nil)},
		{"reordered", bytes.Join([][]byte{lines[0], lines[2], lines[1], lines[3]}, nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(logPath, tc.log, 0o600); err != nil {
				t.Fatal(err)
			}
			_, stderr, code := c.run("audit", "verify")
			if code != api.ExitTampered {
				t.Errorf("audit verify on a %s log: exit %d, want %d (%s)", tc.name, code, api.ExitTampered, stderr)
			}
		})
	}
	os.WriteFile(logPath, orig, 0o600)
	c.must("audit", "verify")
}

// kill -9 at any point of a provision leaves the state store valid: after
// each kill, status works (never the "state" exit code), and a crash-torn audit
// trail is repairable.
func TestKillDuringProvisionLeavesValidState(t *testing.T) {
	if os.Getenv("PROVD_TEST_PROVISION_LOOP") != "" {
		provisionLoop()
		return
	}
	c := newCLIEnv(t)
	rng := rand.New(rand.NewPCG(swtpmtest.Seed(t), 1))
	kills, repairs, provisioned := 0, 0, 0
	for i := 0; i < 12; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKillDuringProvisionLeavesValidState$")
		cmd.Env = append(os.Environ(), "PROVD_TEST_PROVISION_LOOP=1", "PROVD_TPM="+c.swtpm.Spec, "PROVD_STATE_DIR="+c.dir)
		cmd.Stdout, cmd.Stderr = nil, nil
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(50+rng.IntN(400)) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		kills++
		out, stderr, code := c.run("status", "-o", "json")
		if code != 0 {
			t.Fatalf("after kill %d: status exit %d: %s", kills, code, stderr)
		}
		var st struct {
			Provisioned bool   `json:"provisioned"`
			AuditError  string `json:"audit_error"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatal(err)
		}
		if st.Provisioned {
			provisioned++
		}
		if st.AuditError != "" {
			repairs++
			// A crash between the log's fsync and the anchor extend, or
			// during the write: what audit repair exists for.
			if _, stderr, code := c.run("audit", "repair", "--anchor-last"); code != 0 {
				t.Fatalf("after kill %d: audit repair: exit %d: %s (%s)", kills, code, stderr, st.AuditError)
			}
		}
	}
	t.Logf("%d kills: %d left a provisioned state, %d needed an audit repair", kills, provisioned, repairs)
	c.must("provision", "--force", "--pcrs", "7", "--trust-on-first-use")
	secret := filepath.Join(t.TempDir(), "s")
	os.WriteFile(secret, []byte("after the storm"), 0o600)
	c.must("seal", "--in", secret, "--out", secret+".sealed")
	if out := c.must("unseal", "--in", secret+".sealed", "--out", "-"); out != "after the storm" {
		t.Fatalf("unseal = %q", out)
	}
	c.must("audit", "verify")
}

// provisionLoop is the child of the kill test: provision --force forever.
func provisionLoop() {
	for {
		var out, errb bytes.Buffer
		cli.Main(context.Background(), []string{"provision", "--force", "--pcrs", "7", "--trust-on-first-use"}, cli.Deps{
			Stdout: &out, Stderr: &errb, Getenv: os.Getenv,
		})
	}
}

// Output files are written through a fresh temp file: a planted symlink or a
// stale temp file with loose permissions cannot redirect or expose a secret.
func TestUnsealOutputFileIsPrivate(t *testing.T) {
	c := newCLIEnv(t)
	c.must("provision", "--pcrs", "7", "--trust-on-first-use")
	dir := t.TempDir()
	secret, sealed, out := filepath.Join(dir, "s"), filepath.Join(dir, "sealed"), filepath.Join(dir, "out")
	os.WriteFile(secret, []byte("private"), 0o600)
	c.must("seal", "--in", secret, "--out", sealed)
	victim := filepath.Join(dir, "victim")
	os.WriteFile(victim, []byte("untouched"), 0o644)
	if err := os.Symlink(victim, out+".tmp"); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(out, nil, 0o644) // an existing, world-readable file is replaced
	c.must("unseal", "--in", sealed, "--out", out)
	if b, _ := os.ReadFile(victim); string(b) != "untouched" {
		t.Fatalf("symlink target overwritten: %q", b)
	}
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("unsealed secret has mode %v, want 0600", fi.Mode().Perm())
	}
	if b, _ := os.ReadFile(out); string(b) != "private" {
		t.Fatalf("out = %q", b)
	}
}

// provd tpm selftest runs the TPM's full self-test on demand and says so.
func TestTPMSelftest(t *testing.T) {
	c := newCLIEnv(t)
	if out := c.must("tpm", "selftest"); !strings.Contains(out, "full self-test passed") {
		t.Fatalf("tpm selftest:\n%s", out)
	}
	if out := c.must("tpm", "selftest", "-o", "json"); !strings.Contains(out, `"result": "success"`) {
		t.Fatalf("tpm selftest -o json:\n%s", out)
	}
}
