package cli_test

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest"
)

const review67UserChild = "PROVD_REVIEW67_USER_ARGS"

// FLAW (failed before the mend): resolvedStateDir walks --state-dir (trustedpath.Walk) for every
// command that might touch a state file, and fails the command on any
// error but ErrNotExist. Walk lstats every component; for a user who is
// not root, a state directory inside a directory they may not search
// (systemd's DynamicUser=/StateDirectory= layout: /var/lib/provd a root
// link to private/provd, /var/lib/private 0700 root; the default state
// directory on such a device) answers EACCES, so a command that needs no
// state at all now fails outright: here "provd fw log --log FILE" by an
// unprivileged user, printing a firmware event log they were handed, exits
// with "permission denied" on /var/lib/private/provd, where before review
// 66's mend it printed the log (filepath.Abs never touched the disk; the
// state's own log was only compared, and a stat that failed meant "not
// the state's log"). tpm pcr read for a tss-group user fails the same way
// (before: the plain, unauthenticated read, its state unreachable).
// Attacker: none; a regression on a legitimate setup. Suggested fix:
// resolve the state directory only where a state file is used (fw log's
// default log, the sameFile comparison), and take a state directory the
// caller cannot reach (EACCES) as one not there for the reading commands,
// as pcr read's "no state" path already does for ErrNotExist.
func TestReview67NonRootFWLogOfAGivenFile(t *testing.T) {
	if a := os.Getenv(review67UserChild); a != "" {
		var args []string
		if err := json.Unmarshal([]byte(a), &args); err != nil {
			fmt.Println("args:", err)
			os.Exit(3)
		}
		out, stderr, code := run(t, nil, args...)
		fmt.Printf("EXIT %d\n%s%s", code, out, stderr)
		os.Exit(0)
	}
	base := t.TempDir()
	// Others may search down to base (t.TempDir's directories are 0700).
	for _, d := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The test binary, where the other user may run it.
	bin := filepath.Join(base, "cli.test")
	src, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	dst, err := os.OpenFile(bin, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	src.Close()
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	// DynamicUser='s layout: lib/provd -> private/provd, private 0700 root.
	lib := filepath.Join(base, "lib")
	if err := os.MkdirAll(filepath.Join(lib, "private", "provd"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(lib, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("private/provd", filepath.Join(lib, "provd")); err != nil {
		t.Fatal(err)
	}
	// A firmware event log the user was handed.
	l, err := attest.NewEventLog(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	fwLog := filepath.Join(base, "fw.log")
	if err := os.WriteFile(fwLog, b, 0o644); err != nil {
		t.Fatal(err)
	}
	args, _ := json.Marshal([]string{"--state-dir", filepath.Join(lib, "provd"), "fw", "log", "--log", fwLog})
	cmd := exec.Command(bin, "-test.run=^TestReview67NonRootFWLogOfAGivenFile$", "-test.count=1")
	cmd.Env = append(os.Environ(), review67UserChild+"="+string(args))
	cmd.Dir = base
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	t.Logf("fw log --log %s as uid 65534: %v\n%s", fwLog, err, out)
	if err != nil || !strings.Contains(string(out), "EXIT 0\n") {
		t.Errorf("an unprivileged user's fw log of a file they name fails on the state directory they cannot search (%s)", filepath.Join(lib, "private", "provd"))
	}
}
