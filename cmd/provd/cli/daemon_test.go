package cli_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/agent/server"
	"github.com/provd/provd/api"
	"github.com/provd/provd/cmd/provd/cli"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// bothWays runs the same CLI commands in-process (--tpm) and through the
// daemon's API, on one swtpm and one state directory, and compares stdout,
// stderr and exit codes. swtpm serves one connection at a time, so each run
// gets the TPM to itself: the in-process CLI opens it by its spec, the daemon
// (served in this process, as `provd serve` serves it) uses the harness's
// connection.
type bothWays struct {
	t     *testing.T
	env   *swtpmtest.Env
	state string
	sock  string
}

type result struct {
	out, err string
	code     int
}

func (b *bothWays) inProcess(args ...string) result {
	b.t.Helper()
	b.env.CloseTPM()
	out, stderr, code := run(b.t, nil, append([]string{"--tpm", b.env.Spec, "--state-dir", b.state}, args...)...)
	return result{out, stderr, code}
}

func (b *bothWays) daemon(args ...string) result {
	b.t.Helper()
	if b.env.TPM == nil {
		b.env.Reopen()
	}
	ag, err := agent.New(agent.Config{TPM: b.env.TPM, StateDir: b.state})
	if err != nil {
		b.t.Fatal(err)
	}
	root := server.RoleMembers{UIDs: []int{0}}
	srv, err := server.New(server.Options{Agent: ag, TPM: b.env.TPM, Roles: &server.Roles{Officer: root, User: root}, ExitCode: cli.ExitCode})
	if err != nil {
		b.t.Fatal(err)
	}
	os.Remove(b.sock)
	ln, err := net.Listen("unix", b.sock)
	if err != nil {
		b.t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	// No --tpm, and a state dir that does not exist: only the daemon can
	// answer.
	out, stderr, code := run(b.t, map[string]string{"PROVD_SOCKET": b.sock, "PROVD_STATE_DIR": "/nonexistent"}, args...)
	if err := srv.Shutdown(context.Background()); err != nil {
		b.t.Fatal(err)
	}
	if err := <-served; err != nil {
		b.t.Fatal(err)
	}
	if err := ag.Close(); err != nil {
		b.t.Fatal(err)
	}
	return result{out, stderr, code}
}

// same runs args both ways and wants identical results and exit code want.
func (b *bothWays) same(want int, args ...string) result {
	b.t.Helper()
	in := b.inProcess(args...)
	d := b.daemon(args...)
	if in != d {
		b.t.Errorf("provd %s differs:\nin-process: exit %d\n%s%s\ndaemon:     exit %d\n%s%s",
			strings.Join(args, " "), in.code, in.out, in.err, d.code, d.out, d.err)
	}
	if in.code != want {
		b.t.Errorf("provd %s: exit %d, want %d\n%s", strings.Join(args, " "), in.code, want, in.err)
	}
	return in
}

func TestCLIBothWays(t *testing.T) {
	env := swtpmtest.Start(t)
	dir := t.TempDir()
	b := &bothWays{t: t, env: env, state: filepath.Join(dir, "state"), sock: filepath.Join(dir, "provd.sock")}
	file := func(name string) string { return filepath.Join(dir, name) }
	if err := os.WriteFile(file("secret"), []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file("garbage"), []byte("not a sealed blob"), 0o600); err != nil {
		t.Fatal(err)
	}

	b.same(api.ExitOK, "status")
	b.same(api.ExitNotProvisioned, "policy", "show")
	b.same(api.ExitOK, "tpm", "info", "-o", "json")
	officerKey, officerPub := officertest.Files(t, dir)
	if r := b.daemon("provision", "--pcrs", "7,16", "--trust-on-first-use", "--allow-resettable", "--officer-key", officerPub); r.code != 0 {
		t.Fatalf("provision through the daemon: exit %d %s", r.code, r.err)
	}
	b.same(api.ExitConflict, "provision")
	b.same(api.ExitOK, "status")
	b.same(api.ExitOK, "status", "-o", "json")
	b.same(api.ExitOK, "policy", "show")

	// Each way seals; each way unseals both blobs.
	if r := b.inProcess("seal", "--in", file("secret"), "--out", file("a.sealed")); r.code != 0 {
		t.Fatalf("seal in-process: %s", r.err)
	}
	if r := b.daemon("seal", "--in", file("secret"), "--out", file("b.sealed")); r.code != 0 {
		t.Fatalf("seal through the daemon: %s", r.err)
	}
	for _, blob := range []string{"a.sealed", "b.sealed"} {
		if r := b.same(api.ExitOK, "unseal", "--in", file(blob), "--out", "-"); r.out != "s3cret" {
			t.Errorf("unseal %s: %q", blob, r.out)
		}
	}
	b.same(api.ExitUsage, "unseal", "--in", file("garbage"), "--out", "-")
	b.same(api.ExitOK, "audit", "verify")

	// Keys: derived through the daemon; the same list, public key, HMAC
	// (deterministic) and refusals both ways; signatures verify both ways.
	var st struct {
		PolicyDigest string `json:"policy_digest"`
	}
	if r := b.inProcess("status", "-o", "json"); r.code != 0 || json.Unmarshal([]byte(r.out), &st) != nil {
		t.Fatalf("status: exit %d %s", r.code, r.err)
	}
	for _, a := range [][]string{{"tls", "tls", "dev-1", "ecc-p256"}, {"mac", "mac", "", "hmac-sha256"}} {
		if r := b.inProcess("key", "approve", "--officer", officerKey, "--pk-policy", st.PolicyDigest, "--out", file(a[0]+".approval"),
			"--label", a[1], "--context", a[2], "--type", a[3]); r.code != 0 {
			t.Fatalf("key approve: exit %d %s", r.code, r.err)
		}
	}
	if r := b.daemon("key", "derive", "tls", "--label", "tls", "--context", "dev-1", "--type", "ecc-p256", "--approval", file("tls.approval")); r.code != 0 {
		t.Fatalf("key derive through the daemon: exit %d %s", r.code, r.err)
	}
	if r := b.inProcess("key", "derive", "mac", "--label", "mac", "--type", "hmac-sha256", "--approval", file("mac.approval")); r.code != 0 {
		t.Fatalf("key derive in-process: exit %d %s", r.code, r.err)
	}
	b.same(api.ExitOK, "key", "hmac", "mac", "--in", file("secret"), "-o", "json")
	b.same(api.ExitConflict, "key", "derive", "tls", "--label", "tls", "--type", "ecc-p256")
	b.same(api.ExitOK, "key", "list", "-o", "json")
	b.same(api.ExitOK, "key", "pub", "tls")
	b.same(api.ExitNotFound, "key", "pub", "nope")
	b.same(api.ExitUsage, "key", "derive", "bad/name", "--label", "x", "--type", "ecc-p256")
	for _, run := range []func(...string) result{b.inProcess, b.daemon} {
		if r := run("key", "sign", "tls", "--in", file("secret"), "--out", file("sig")); r.code != 0 {
			t.Errorf("key sign: exit %d %s", r.code, r.err)
		}
		if r := run("key", "csr", "tls", "--subject", "CN=dev-1", "--out", file("tls.csr")); r.code != 0 {
			t.Errorf("key csr: exit %d %s", r.code, r.err)
		}
	}

	// The ceremony and a backup through the daemon, a KEK each way: the
	// daemon's with a note that the components crossed its socket.
	cust := newCustodians(t, 2, 32)
	var bk, kekW struct {
		ObjectName string `json:"object_name"`
	}
	if r := b.daemon(append([]string{"-o", "json", "kek", "import", "kek-w", "--components", "2", "--kcv", cust.kcv}, cust.fds(t, nil)...)...); r.code != 0 || !strings.Contains(r.err, "note: the components go to the daemon") || json.Unmarshal([]byte(r.out), &kekW) != nil {
		t.Fatalf("kek import through the daemon: exit %d %s", r.code, r.err)
	}
	if r := b.inProcess(append([]string{"kek", "import", "kek-u", "--usage", "unwrap", "--components", "2", "--kcv", cust.kcv}, cust.fds(t, nil)...)...); r.code != 0 || strings.Contains(r.err, "note:") {
		t.Fatalf("kek import in-process: exit %d %s", r.code, r.err)
	}
	if r := b.daemon("key", "create", "bk", "--type", "ecc-p256", "--extractable"); r.code != 0 {
		t.Fatalf("key create: %s", r.err)
	}
	if r := b.inProcess("key", "pub", "bk", "-o", "json"); r.code != 0 || json.Unmarshal([]byte(r.out), &bk) != nil {
		t.Fatalf("key pub: %s", r.err)
	}
	if r := b.inProcess("key", "approve", "--officer", officerKey, "--pk-policy", st.PolicyDigest, "--export", "--object-name", bk.ObjectName, "--kek-object-name", kekW.ObjectName, "--out", file("bk.export")); r.code != 0 {
		t.Fatalf("key approve --export: %s", r.err)
	}
	if r := b.daemon("key", "export", "bk", "--kek", "kek-w", "--approval", file("bk.export"), "--out", file("bk.kwp")); r.code != 0 {
		t.Fatalf("key export through the daemon: %s", r.err)
	}
	if r := b.daemon("key", "import", "bk2", "--kek", "kek-u", "--in", file("bk.kwp")); r.code != 0 {
		t.Fatalf("key import through the daemon: %s", r.err)
	}
	if p1, p2 := b.same(api.ExitOK, "key", "pub", "bk"), b.same(api.ExitOK, "key", "pub", "bk2"); p1.out != p2.out {
		t.Error("the key imported through the daemon is not the one exported")
	}
	if r := b.daemon("peer", "identity", "--out", "-"); r.code != 0 || !strings.Contains(r.out, `"parent_name"`) {
		t.Errorf("peer identity through the daemon: exit %d %s", r.code, r.err)
	}
	b.same(api.ExitNotPermitted, "key", "export", "tls", "--kek", "kek-w", "--approval", file("bk.export"), "--out", file("x.kwp"))

	// PCR 16 moves: both ways refuse with exit 3, naming PCR 16.
	if env.TPM == nil {
		env.Reopen()
	}
	d := sha256.Sum256([]byte("debug event"))
	if err := env.TPM.PCRExtend(16, tpm2.TPMAlgSHA256, d[:]); err != nil {
		t.Fatal(err)
	}
	for _, blob := range []string{"a.sealed", "b.sealed"} {
		r := b.same(api.ExitPolicy, "unseal", "--in", file(blob), "--out", "-")
		if !strings.Contains(r.err, "PCR 16") {
			t.Errorf("unseal after extend: %q does not name PCR 16", r.err)
		}
	}
	b.same(api.ExitOK, "policy", "show", "-o", "json")
	b.same(api.ExitOK, "audit", "show", "-o", "json")

	if r := b.daemon("zeroize", "--yes"); r.code != 0 {
		t.Fatalf("zeroize through the daemon: %s", r.err)
	}
	b.same(api.ExitNotProvisioned, "unseal", "--in", file("a.sealed"), "--out", "-")
	b.same(api.ExitOK, "status")
	env.Reopen() // the leak check
}
