package systemd

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// otherGroup is a group Listen can chown to that differs from the one a new
// file gets, so the test sees the chown happen: any group when running as
// root, else a supplementary group (no CAP_CHOWN needed for those).
func otherGroup(t *testing.T) (name string, gid int) {
	t.Helper()
	var candidates []int
	if os.Geteuid() == 0 {
		for _, n := range []string{"daemon", "nogroup", "bin", "sys"} {
			if g, err := user.LookupGroup(n); err == nil {
				id, _ := strconv.Atoi(g.Gid)
				candidates = append(candidates, id)
			}
		}
	} else {
		candidates, _ = os.Getgroups()
	}
	for _, id := range candidates {
		if id == os.Getegid() {
			continue
		}
		if g, err := user.LookupGroupId(strconv.Itoa(id)); err == nil {
			return g.Name, id
		}
	}
	t.Fatal("no group other than the primary one to chown the socket to (Debian has daemon, nogroup, bin, sys)")
	return "", 0
}

// dialOK proves the listener accepts: a client connects and the server side
// sees the connection.
func dialOK(t *testing.T, l net.Listener, path string) {
	t.Helper()
	accepted := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	c.Close()
	if err := <-accepted; err != nil {
		t.Fatalf("accept: %v", err)
	}
}

func TestListenCreatesSocket(t *testing.T) {
	group, gid := otherGroup(t)
	dir := filepath.Join(t.TempDir(), "run", "provd") // parent does not exist yet
	path := filepath.Join(dir, "provd.sock")

	l, err := Listen(path, 0o660, group)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want socket with 0660", fi.Mode())
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Gid) != gid {
		t.Errorf("socket gid %d, want %d (%s)", st.Gid, gid, group)
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o755 {
		t.Errorf("directory mode %v, want 0755", di.Mode().Perm())
	}
	if got := l.Addr().String(); got != path {
		t.Errorf("Addr %q, want %q", got, path)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the socket (temporary name left behind?)", len(entries))
	}
	dialOK(t, l, path)

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket still there after Close: %v", err)
	}
}

// A socket left by a crashed daemon answers nothing and is replaced.
func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "provd.sock")
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}

	l, err := Listen(path, 0o660, "")
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer l.Close()
	dialOK(t, l, path)
}

// A socket someone answers on is never taken over: that would cut a running
// daemon off from its clients.
func TestListenRefusesLiveSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "provd.sock")
	first, err := Listen(path, 0o660, "")
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()

	second, err := Listen(path, 0o660, "")
	if !errors.Is(err, ErrSocketInUse) {
		if second != nil {
			second.Close()
		}
		t.Fatalf("second Listen: %v, want ErrSocketInUse", err)
	}
	dialOK(t, first, path) // the first daemon still serves
}

func TestListenRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "provd.sock")
	if err := os.WriteFile(path, []byte("not a socket"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(path, 0o660, ""); !errors.Is(err, ErrNotSocket) {
		t.Fatalf("Listen over a regular file: %v, want ErrNotSocket", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "not a socket" {
		t.Error("the regular file was touched")
	}
}

func TestListenUnknownGroup(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "provd.sock")
	_, err := Listen(path, 0o660, "provd-no-such-group-7f3a")
	var unknown user.UnknownGroupError
	if !errors.As(err, &unknown) {
		t.Fatalf("Listen with a missing group: %v, want user.UnknownGroupError", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left %d entries behind", len(entries))
	}
}

// Closing an old listener must not delete the socket of the daemon that
// replaced it.
func TestListenCloseKeepsReplacement(t *testing.T) {
	path := filepath.Join(t.TempDir(), "provd.sock")
	old, err := Listen(path, 0o660, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	l, err := Listen(path, 0o660, "")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	old.Close()
	dialOK(t, l, path)
}
