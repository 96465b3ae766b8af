package systemd

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FLAW (failed before the mend: a socket path that Clean changes is
// refused): a socket.path with ".." after a link in another user's directory
// is checked where ".." lexically leads and bound where the kernel leads.
// checkSocketDir walks filepath.Abs(dir), and Listen takes
// filepath.Dir(path): both Clean the path, dropping "other/l/.." before
// any component is checked, while the rename onto path (as written) and
// every client's dial follow the link l (owned by another user, in that
// user's directory) and then "..". So /base/other/l/../../real/provd.sock
// is checked as /base/real (root's, passes) and the socket lands in
// /base/other/real, another user's directory: that user replaces it with
// their own socket, or repoints l, and takes the clients' seal and unseal
// traffic (review 54's attack, one ".." away). Who: any user whose
// directory such a path goes through (an admin's socket.path, or a path
// built by joining a user-chosen prefix and "../"). The daemon never
// checks the path the kernel resolves.
// Mend: walk the path as written without Clean (".." resolved against the
// walk's resolved directory, as trustedpath.Walk already does for its own
// components), and bind and rename at the resolved path trustedpath.Walk
// returns; or refuse a socket path holding "." or ".." components
// (config validation: filepath.Clean(p) == p).
func TestReview56ListenThroughDotDotAfterAnotherUsersLink(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "real")
	other := filepath.Join(base, "other")
	for _, d := range []string{real, other, filepath.Join(other, "x"), filepath.Join(other, "x", "y"), filepath.Join(other, "real")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{other, filepath.Join(other, "x"), filepath.Join(other, "x", "y"), filepath.Join(other, "real")} {
		if err := os.Chown(d, 60001, 60001); err != nil {
			t.Fatal(err)
		}
	}
	link := filepath.Join(other, "l")
	if err := os.Symlink(filepath.Join(other, "x", "y"), link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, 60001, 60001); err != nil {
		t.Fatal(err)
	}
	// As written: other/l/../../real; lexically base/real, the kernel's
	// base/other/x/y/../../real = base/other/real.
	path := base + "/other/l/../../real/provd.sock"
	l, err := Listen(path, 0o660, "")
	if errors.Is(err, ErrUnsafeDir) {
		return
	}
	if err != nil {
		t.Fatalf("Listen %s: %v (refused, but not as an unsafe directory)", path, err)
	}
	defer l.Close()
	where := "?"
	if _, err := os.Lstat(filepath.Join(other, "real", "provd.sock")); err == nil {
		where = filepath.Join(other, "real", "provd.sock") + " (uid 60001's directory)"
	} else if _, err := os.Lstat(filepath.Join(real, "provd.sock")); err == nil {
		where = filepath.Join(real, "provd.sock")
	}
	t.Fatalf("Listen %s through uid 60001's link and \"..\": accepted; the socket is at %s", path, where)
}

// Held: a link loop, a chain of more than 40 links, and a link (root's,
// in a root directory) to a relative target whose ".." climbs into
// another user's directory are refused: the loop and the chain as too
// many links, the relative target by the owner of the directory it
// reaches (trustedpath.Walk joins a relative target to the link's resolved
// directory, and checks every component it then walks).
func TestReview56ListenRefusesLoopsAndRelativeClimbs(t *testing.T) {
	base := t.TempDir()
	other := filepath.Join(base, "other")
	if err := os.MkdirAll(filepath.Join(other, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(other, 60001, 60001); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(base, "root"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A loop.
	if err := os.Symlink("b", filepath.Join(base, "a")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("a", filepath.Join(base, "b")); err != nil {
		t.Fatal(err)
	}
	// A chain of 50.
	for i := range 50 {
		target := "c" + string(rune('A'+i+1))
		if i == 49 {
			target = "root"
		}
		if err := os.Symlink(target, filepath.Join(base, "c"+string(rune('A'+i)))); err != nil {
			t.Fatal(err)
		}
	}
	// A root link whose relative target climbs into other's directory.
	if err := os.Symlink("../other/d", filepath.Join(base, "root", "up")); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{
		filepath.Join(base, "a"),
		filepath.Join(base, "cA"),
		filepath.Join(base, "root", "up"),
	} {
		err := checkSocketDir(dir)
		if err == nil {
			t.Errorf("checkSocketDir %s: accepted", dir)
			continue
		}
		t.Logf("checkSocketDir %s: %v", dir, err)
	}
	if err := checkSocketDir(filepath.Join(base, "root", "up")); !errors.Is(err, ErrUnsafeDir) {
		t.Errorf("checkSocketDir through a climb into uid 60001's directory: %v, want ErrUnsafeDir", err)
	}
}
