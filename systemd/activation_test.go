package systemd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The activation tests re-run this test binary as the "daemon": under
// systemd-socket-activate, or with LISTEN_FDS set by hand. TestMain sends such
// a child to activationChild instead of the tests.
const childEnv = "PROVD_SYSTEMD_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "activation" {
		os.Exit(activationChild())
	}
	os.Exit(m.Run())
}

// activationChild is what `provd serve` does with its listener: it calls
// ListenOrActivated (falling back to $PROVD_TEST_DIR/fallback.sock), prints
// one line on stdout saying what it got, then answers one connection.
func activationChild() int {
	fallback := filepath.Join(os.Getenv("PROVD_TEST_DIR"), "fallback.sock")
	l, err := ListenOrActivated(fallback, 0o660, "")
	if err != nil {
		fmt.Printf("err activation=%t %v\n", errors.Is(err, ErrActivation), err)
		return 0
	}
	defer l.Close()
	fmt.Printf("ok addr=%s LISTEN_FDS=%q\n", l.Addr(), os.Getenv("LISTEN_FDS"))
	if ul, ok := l.(interface{ SetDeadline(time.Time) error }); ok {
		ul.SetDeadline(time.Now().Add(20 * time.Second))
	}
	c, err := l.Accept()
	if err != nil {
		fmt.Fprintln(os.Stderr, "accept:", err)
		return 1
	}
	defer c.Close()
	fmt.Fprintf(c, "hello from %s\n", l.Addr())
	return 0
}

// hello connects to path (retrying while the child starts up) and returns
// the child's greeting.
func hello(t *testing.T, path string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				t.Fatalf("reading greeting from %s: %v", path, err)
			}
			return strings.TrimSpace(line)
		}
		if time.Now().After(deadline) {
			t.Fatalf("dial %s: %v", path, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitChild(t *testing.T, cmd *exec.Cmd, stderr *bytes.Buffer) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("child: %v\nstderr:\n%s", err, stderr)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("child did not exit\nstderr:\n%s", stderr)
	}
}

// TestSocketActivation runs the child under systemd's own test tool, which
// sets LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES exactly as the service
// manager does for provd.socket.
func TestSocketActivation(t *testing.T) {
	tool, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Fatalf("systemd-socket-activate not found (apt-get install systemd): %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "provd.sock")
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(tool, "-l", sock,
		"-E", childEnv+"=activation", "-E", "PROVD_TEST_DIR="+dir, exe)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// systemd-socket-activate starts the child on the first connection.
	got := hello(t, sock)
	waitChild(t, cmd, &stderr)

	if want := "hello from " + sock; got != want {
		t.Errorf("greeting %q, want %q", got, want)
	}
	if want := fmt.Sprintf("ok addr=%s LISTEN_FDS=%q\n", sock, ""); stdout.String() != want {
		t.Errorf("child reported %q, want %q (activated, LISTEN_* unset for its children)", stdout.String(), want)
	}
	if _, err := os.Lstat(filepath.Join(dir, "fallback.sock")); err == nil {
		t.Error("child bound its own socket although it was activated")
	}
}

// TestSocketActivationManual passes descriptors the way the service manager
// does, with LISTEN_PID naming the child's own pid: the shell exports $$ and
// execs the test binary, which keeps that pid.
func TestSocketActivationManual(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	run := func(t *testing.T, fd *os.File, listenPID string) (stdout string, cmd *exec.Cmd, stderr *bytes.Buffer, dir string) {
		t.Helper()
		dir = t.TempDir()
		stderr = new(bytes.Buffer)
		cmd = exec.Command("/bin/sh", "-c", `export LISTEN_PID=`+listenPID+` LISTEN_FDS=1; exec "$0"`, exe)
		cmd.Env = append(os.Environ(), childEnv+"=activation", "PROVD_TEST_DIR="+dir)
		cmd.ExtraFiles = []*os.File{fd} // becomes fd 3, SD_LISTEN_FDS_START
		cmd.Stderr = stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil {
			t.Fatalf("child said nothing: %v\nstderr:\n%s", err, stderr)
		}
		go io.Copy(io.Discard, out)
		return line, cmd, stderr, dir
	}
	listener := func(t *testing.T) (*os.File, string) {
		t.Helper()
		path := filepath.Join(t.TempDir(), "provd.sock")
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		f, err := l.File()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f, path
	}

	t.Run("activated", func(t *testing.T) {
		f, path := listener(t)
		line, cmd, stderr, dir := run(t, f, "$$")
		if want := fmt.Sprintf("ok addr=%s LISTEN_FDS=%q\n", path, ""); line != want {
			t.Errorf("child reported %q, want %q", line, want)
		}
		if got, want := hello(t, path), "hello from "+path; got != want {
			t.Errorf("greeting %q, want %q", got, want)
		}
		waitChild(t, cmd, stderr)
		if _, err := os.Lstat(filepath.Join(dir, "fallback.sock")); err == nil {
			t.Error("child bound its own socket although it was activated")
		}
	})

	// Descriptors meant for another process (LISTEN_PID is not ours) are
	// not taken: the child binds its own socket.
	t.Run("other pid", func(t *testing.T) {
		f, _ := listener(t)
		line, cmd, stderr, dir := run(t, f, "1")
		fallback := filepath.Join(dir, "fallback.sock")
		if want := fmt.Sprintf("ok addr=%s LISTEN_FDS=%q\n", fallback, ""); line != want {
			t.Errorf("child reported %q, want %q", line, want)
		}
		if got, want := hello(t, fallback), "hello from "+fallback; got != want {
			t.Errorf("greeting %q, want %q", got, want)
		}
		waitChild(t, cmd, stderr)
	})

	// A descriptor that is not a listening unix socket means provd.socket
	// is wrong; the child must say so instead of serving elsewhere.
	t.Run("not a socket", func(t *testing.T) {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		line, cmd, stderr, _ := run(t, f, "$$")
		if !strings.HasPrefix(line, "err activation=true ") {
			t.Errorf("child reported %q, want an ErrActivation", line)
		}
		waitChild(t, cmd, stderr)
	})
}
