package systemd

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FLAW (failed before the mend): review 56's ".." survives inside a link's target. Listen refuses a
// socket path that Clean changes, but trustedpath.Walk joins a link's
// target with filepath.Join, which Cleans it: a root link whose target is
// "pub/x/../run" is checked as pub/run, x never looked at, while bind and
// every client's dial follow x (another user's link, in a sticky
// directory) and then "..". With x pointing into uid 4242's directory the
// socket is bound there: that user removes it (no daemon for anyone) or
// puts a listener of theirs in its place (today's clients refuse a uid
// 4242 peer by SO_PEERCRED, but not a root-listened one: see
// agent/client.TestReview63RootListenedSocketServedByAnotherUser); the
// same walk guards the state directory (store.TestReview63WalkCleansALinkTargetsDotDot:
// the manifest written into that user's directory). Attacker: a local user
// who can create a name in a sticky directory that a root link's target
// passes through before a ".."; gain: the daemon's socket path. Suggested
// fix: in trustedpath.walk, put a link target's components in front of
// the components still to walk and resolve them one by one (".." against
// the directory reached), never filepath.Join/Clean; or refuse a link
// target holding a "." or ".." component after another.
func TestReview63ListenThroughALinkTargetsDotDot(t *testing.T) {
	base := t.TempDir()
	mk := func(p string, mode os.FileMode, uid int) {
		t.Helper()
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	pub := filepath.Join(base, "pub")
	mk(pub, os.ModeSticky|0o777, 0)
	mk(filepath.Join(pub, "run"), 0o755, 0) // where the walk looks
	home := filepath.Join(base, "home")
	mk(home, 0o755, 4242)
	mk(filepath.Join(home, "sub"), 0o755, 4242)
	mk(filepath.Join(home, "run"), 0o777, 4242) // where the kernel goes
	x := filepath.Join(pub, "x")
	if err := os.Symlink(filepath.Join(home, "sub"), x); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(x, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	sockdir := filepath.Join(base, "sockdir")
	if err := os.Symlink("pub/x/../run", sockdir); err != nil { // root's
		t.Fatal(err)
	}
	path := filepath.Join(sockdir, "provd.sock")
	l, err := Listen(path, 0o660, "")
	if errors.Is(err, ErrUnsafeDir) {
		return
	}
	if err != nil {
		t.Fatalf("Listen %s: %v (refused, but not as an unsafe directory)", path, err)
	}
	defer l.Close()
	if _, err := os.Lstat(filepath.Join(home, "run", "provd.sock")); err == nil {
		t.Errorf("Listen %s through uid 4242's link pub/x: accepted, the socket is in uid 4242's directory %s", path, filepath.Join(home, "run"))
	} else {
		t.Errorf("Listen %s through uid 4242's link pub/x: accepted", path)
	}
}
