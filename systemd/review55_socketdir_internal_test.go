package systemd

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// FLAW (failed before the mend: trustedpath.Walk): checkSocketDir checks the socket directory with its links
// resolved, and never the path as written: a socket.path through another
// user's directory by a symlink (other/run -> a root-owned directory)
// passes, since the resolved directory and its ancestors are root's. The
// owner of the directory holding the link (uid 60001 here: a user, or a
// service account whose directory an admin links into) replaces the link
// whenever they like: the daemon binds where the link then points (the
// window between the check and the bind), and, with no race at all,
// every client dialing socket.path later follows the new link to that
// user's own socket and hands it its seal and unseal traffic. This is the
// attack the check was added for (review 54: "the self-bound socket in a
// directory another user owns or may write"), one link away.
// Mend: walk the path as written (filepath.Clean, each component's Lstat):
// every directory and every symlink on it must be root's or the daemon's,
// a directory holding one writable by no other (sticky excepted for a
// directory, never for a link's directory); or refuse a socket path with
// any symlink in it.
func TestReview55ListenThroughAnotherUsersLink(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "real")
	other := filepath.Join(base, "other")
	evil := filepath.Join(other, "evil")
	for _, d := range []string{real, other, evil} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{other, evil} {
		if err := os.Chown(d, 60001, 60001); err != nil {
			t.Fatal(err)
		}
	}
	link := filepath.Join(other, "run")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, 60001, 60001); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(link, "provd.sock")
	l, err := Listen(path, 0o660, "")
	if errors.Is(err, ErrUnsafeDir) {
		return
	}
	if err != nil {
		t.Fatalf("Listen %s: %v", path, err)
	}
	defer l.Close()

	// uid 60001, owner of other, points the link at its own directory and
	// listens there (done here as root, as that user may).
	theirs, err := net.Listen("unix", filepath.Join(evil, "provd.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer theirs.Close()
	tmp := filepath.Join(other, "run.new")
	if err := os.Symlink(evil, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("a client dialing %s: %v", path, err)
	}
	defer c.Close()
	got := make(chan string, 1)
	go func() {
		ac, err := theirs.Accept()
		if err != nil {
			got <- "the daemon"
			return
		}
		ac.Close()
		got <- "uid 60001's listener"
	}()
	select {
	case who := <-got:
		t.Errorf("Listen bound %s through %s, a link owned by uid 60001 in its directory: after the link changed, a client dialing the daemon's path reached %s", path, link, who)
	case <-time.After(2 * time.Second):
		t.Errorf("Listen bound %s through %s, a link owned by uid 60001 in its directory", path, link)
	}
}

// Held: a root-owned socket directory of mode 0755 whose access ACL gives
// another user write is refused: the ACL's mask shows in the group bits
// (0775), which checkSocketDir reads as writable by another. And Listen's
// own MkdirAll under a umask of 0 makes directories of 0755, accepted.
func TestReview55SocketDirACLAndUmask(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// system.posix_acl_access: version 2; user::rwx, user:60001:rwx,
	// group::r-x, mask::rwx, other::r-x.
	acl := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range []struct {
		tag, perm uint16
		id        uint32
	}{{0x01, 7, ^uint32(0)}, {0x02, 7, 60001}, {0x04, 5, ^uint32(0)}, {0x10, 7, ^uint32(0)}, {0x20, 5, ^uint32(0)}} {
		acl = binary.LittleEndian.AppendUint16(acl, e.tag)
		acl = binary.LittleEndian.AppendUint16(acl, e.perm)
		acl = binary.LittleEndian.AppendUint32(acl, e.id)
	}
	if err := unix.Setxattr(dir, "system.posix_acl_access", acl, 0); err != nil {
		t.Fatalf("setting the ACL: %v", err)
	}
	if l, err := Listen(filepath.Join(dir, "provd.sock"), 0o660, ""); !errors.Is(err, ErrUnsafeDir) {
		if l != nil {
			l.Close()
		}
		t.Errorf("a directory whose ACL lets uid 60001 write: %v, want ErrUnsafeDir", err)
	}

	made := filepath.Join(t.TempDir(), "a", "b") // the test's own directory made under the usual umask
	old := unix.Umask(0)
	defer unix.Umask(old)
	l, err := Listen(filepath.Join(made, "provd.sock"), 0o660, "")
	if err != nil {
		t.Fatalf("Listen in directories it made under umask 0: %v", err)
	}
	l.Close()
	if fi, err := os.Stat(made); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("Listen's directory: %v %v", fi.Mode(), err)
	}
}
