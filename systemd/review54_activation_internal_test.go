package systemd

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// review54Child runs this test binary as the activation child (TestMain's
// activationChild) with fd passed as fd 3 and LISTEN_PID its own pid, and
// returns the line it printed.
func review54Child(t *testing.T, fd *os.File) (string, *exec.Cmd, *bytes.Buffer) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	stderr := new(bytes.Buffer)
	cmd := exec.Command("/bin/sh", "-c", `export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0"`, exe)
	cmd.Env = append(os.Environ(), childEnv+"=activation", "PROVD_TEST_DIR="+dir)
	cmd.ExtraFiles = []*os.File{fd}
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("child said nothing: %v\nstderr:\n%s", err, stderr)
	}
	go io.Copy(io.Discard, out)
	return line, cmd, stderr
}

// FLAW (failed before the mend): a unix SOCK_SEQPACKET listener passed by socket activation is
// served, although Listeners promises that "any descriptor that is not a
// unix stream listener fails the whole call with ErrActivation".
//
// Who: nobody remote; a provd.socket edited to ListenSequentialPacket= (or
// a drop-in), i.e. the misconfiguration the check exists to catch. The
// check is `l.(*net.UnixListener)`, and net.FileListener returns a
// *net.UnixListener for "unixpacket" too: the daemon then serves HTTP over
// a message socket, where each read returns one datagram and a request
// split across messages or a body larger than one message is cut, instead
// of refusing to start with ErrActivation.
//
// Secure: the child reports an ErrActivation (err activation=true).
func TestReview54SeqpacketListenerRefused(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "provd.sock")
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	line, _, stderr := review54Child(t, f)
	if !strings.HasPrefix(line, "err activation=true ") {
		// Let the child end: it waits for one connection.
		if c, err := net.DialTimeout("unixpacket", path, 5*time.Second); err == nil {
			c.Close()
		}
		t.Errorf("a SOCK_SEQPACKET listener was taken: child reported %q, want an ErrActivation\nstderr: %s", strings.TrimSpace(line), stderr)
	}
}

// Held: the self-bound fallback never takes over, or follows, what another
// user planted at the socket path: a symbolic link (to a live socket, to a
// dead one, to a file), a regular file, a directory. Each is refused with
// ErrNotSocket before anything is bound, and neither the planted entry nor
// what it points at is changed (no chmod or chown through a link).
func TestReview54ListenRefusesPlantedPaths(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "live.sock")
	ll, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer ll.Close()
	dead := filepath.Join(dir, "dead.sock")
	dl, err := net.ListenUnix("unix", &net.UnixAddr{Name: dead, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	dl.SetUnlinkOnClose(false)
	dl.Close()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, plant := range map[string]func(path string) error{
		"link to a live socket": func(p string) error { return os.Symlink(live, p) },
		"link to a dead socket": func(p string) error { return os.Symlink(dead, p) },
		"link to a file":        func(p string) error { return os.Symlink(victim, p) },
		"dangling link":         func(p string) error { return os.Symlink(filepath.Join(dir, "nothing"), p) },
		"regular file":          func(p string) error { return os.WriteFile(p, nil, 0o644) },
		"directory":             func(p string) error { return os.Mkdir(p, 0o755) },
	} {
		t.Run(name, func(t *testing.T) {
			sub := t.TempDir()
			path := filepath.Join(sub, "provd.sock")
			if err := plant(path); err != nil {
				t.Fatal(err)
			}
			before, _ := os.Lstat(path)
			vb, _ := os.Stat(victim)
			db, _ := os.Lstat(dead)
			l, err := Listen(path, 0o666, "")
			if err == nil {
				l.Close()
				t.Fatal("Listen bound over a planted path")
			}
			if !errors.Is(err, ErrNotSocket) {
				t.Errorf("err %v, want ErrNotSocket", err)
			}
			after, err := os.Lstat(path)
			if err != nil || !os.SameFile(before, after) || after.Mode() != before.Mode() {
				t.Errorf("the planted entry was changed: %v", err)
			}
			if va, _ := os.Stat(victim); va.Mode() != vb.Mode() {
				t.Errorf("the link's target changed mode: %v -> %v", vb.Mode(), va.Mode())
			}
			if da, _ := os.Lstat(dead); da.Mode() != db.Mode() {
				t.Errorf("the dead socket changed mode: %v -> %v", db.Mode(), da.Mode())
			}
			if ents, _ := os.ReadDir(sub); len(ents) != 1 {
				t.Errorf("left behind in the directory: %v", ents)
			}
		})
	}
}

// FLAW (failed before the mend: checkSocketDir): the self-bound fallback binds in a directory another user owns or
// may write, and never checks it.
//
// Attack (A2: a local user, when socket.path names a directory that user
// created first or may write: a path under /tmp, /var/tmp, a home, or a
// /run/provd made before provd by something else; `provd serve` run by hand
// as root outside the unit): Listen's MkdirAll accepts an existing
// directory whatever its owner and mode. Its owner can then rename the
// daemon's socket away and bind its own at the path: clients (the CLI,
// tpmkey) send it their requests, seal inputs and unseal answers included,
// and it can relay them to the daemon under its own identity. During
// Listen it can also swap the temporary name for a symbolic link between
// bind and chmod (os.Chmod follows links), so that root applies the
// socket's mode (up to 0777 by the config's rule) to a file of root's
// choosing the attacker names.
//
// The test makes the socket's directory 0777 and owned by uid 4242 (an
// ordinary user) and calls Listen as the daemon would.
//
// Secure: Listen refuses a directory not owned by the daemon's uid (or
// root) or writable by group or others (ErrNotSocket-like error), as
// sshd's StrictModes does for its files.
func TestReview54ListenInAnotherUsersDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "provd.sock")
	l, err := Listen(path, 0o660, "")
	if err == nil {
		defer l.Close()
		fi, _ := os.Stat(dir)
		st := fi.Sys().(*syscall.Stat_t)
		t.Errorf("Listen bound %s in a directory owned by uid %d, mode %v: its owner can replace the daemon's socket", path, st.Uid, fi.Mode().Perm())
	}
}
