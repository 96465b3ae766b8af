package trustedpath

// Review 63: the walk and the peer check moved here from systemd.Listen,
// now also used for the state directory and the daemon's clients.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const review63Other = 4242 // another local user, neither root nor the caller

// Held: CheckPeer judges the caller by its effective uid, so a member of
// the provd group (not root) still uses the real daemon, whose socket
// root listened on (systemd's provd.socket, or provd serve as root), and a
// daemon of its own; a third user's listener is refused. A child process
// listens as root, as uid 4243 and as uid 4242 (listen() under each
// effective uid: SO_PEERCRED records that), connects to each, then becomes
// uid 4242 for good (the group member's CLI) and checks every connection.
func TestReview63PeerCheckForANonRootMember(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestReview63PeerChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), "PROVD_R63_DIR="+t.TempDir())
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v; %s", err, out)
	}
	got := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if f := strings.SplitN(sc.Text(), " ", 3); len(f) >= 2 && f[0] == "PEER" {
			got[f[1]] = sc.Text()
		}
	}
	for name, want := range map[string]string{"root": "ok", "self": "ok", "other": "refused"} {
		if !strings.Contains(got[name], " "+want) {
			t.Errorf("as uid %d, a listener of %s: %q, want %s", review63Other, name, got[name], want)
		}
	}
}

// TestReview63PeerChild is not a test: the child of
// TestReview63PeerCheckForANonRootMember, selected by PROVD_R63_DIR.
func TestReview63PeerChild(t *testing.T) {
	dir := os.Getenv("PROVD_R63_DIR")
	if dir == "" {
		return // not a child
	}
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "peer child:", err)
		os.Exit(2)
	}
	conns := map[string]net.Conn{}
	for _, l := range []struct {
		name string
		euid int
	}{{"root", 0}, {"other", 4243}, {"self", review63Other}} {
		fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			fail(err)
		}
		path := filepath.Join(dir, l.name+".sock")
		if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
			fail(err)
		}
		if err := syscall.Setresuid(-1, l.euid, -1); err != nil {
			fail(err)
		}
		err = syscall.Listen(fd, 4)
		if err2 := syscall.Setresuid(-1, 0, -1); err2 != nil {
			fail(err2)
		}
		if err != nil {
			fail(err)
		}
		c, err := net.DialTimeout("unix", path, 10*time.Second)
		if err != nil {
			fail(err)
		}
		conns[l.name] = c
	}
	if err := syscall.Setgroups(nil); err != nil {
		fail(err)
	}
	if err := syscall.Setgid(review63Other); err != nil {
		fail(err)
	}
	if err := syscall.Setuid(review63Other); err != nil {
		fail(err)
	}
	for name, c := range conns {
		if err := CheckPeer(c); err != nil {
			fmt.Printf("PEER %s refused: %v\n", name, err)
		} else {
			fmt.Printf("PEER %s ok\n", name)
		}
	}
	os.Exit(0)
}

// Held: a POSIX ACL that lets another user write a directory on the way
// shows in the mode the walk reads: the group class bits are the ACL's
// mask, so an entry user:4242:rwx (mask rwx) reads as g+w and the
// directory is refused; with a mask of r-x the entry's write does not
// take effect, and the directory is accepted. A default ACL on a parent
// does not reach into what Mkdir makes either (mode 0700: mask ---).
func TestReview63ACLShowsInTheMode(t *testing.T) {
	acl := func(userPerm, mask uint16) []byte {
		b := binary.LittleEndian.AppendUint32(nil, 2) // POSIX_ACL_XATTR_VERSION
		for _, e := range []struct {
			tag, perm uint16
			id        uint32
		}{
			{0x01, 7, 0xffffffff},           // USER_OBJ rwx
			{0x02, userPerm, review63Other}, // USER 4242
			{0x04, 5, 0xffffffff},           // GROUP_OBJ r-x
			{0x10, mask, 0xffffffff},        // MASK
			{0x20, 5, 0xffffffff},           // OTHER r-x
		} {
			b = binary.LittleEndian.AppendUint16(b, e.tag)
			b = binary.LittleEndian.AppendUint16(b, e.perm)
			b = binary.LittleEndian.AppendUint32(b, e.id)
		}
		return b
	}
	base := t.TempDir()
	rw := filepath.Join(base, "rw")
	ro := filepath.Join(base, "masked")
	for _, p := range []string{rw, ro} {
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Setxattr(rw, "system.posix_acl_access", acl(7, 7), 0); err != nil {
		t.Fatalf("setting an ACL: %v", err)
	}
	if err := syscall.Setxattr(ro, "system.posix_acl_access", acl(7, 5), 0); err != nil {
		t.Fatalf("setting an ACL: %v", err)
	}
	if _, err := Mkdir(filepath.Join(rw, "state"), 0o700); !errors.Is(err, ErrUntrusted) {
		t.Errorf("Mkdir under a directory uid %d may write by ACL: %v, want ErrUntrusted", review63Other, err)
	}
	if _, err := os.Lstat(filepath.Join(rw, "state")); err == nil {
		t.Errorf("the refused Mkdir made %s", filepath.Join(rw, "state"))
	}
	if _, err := Mkdir(filepath.Join(ro, "state"), 0o700); err != nil {
		t.Errorf("Mkdir under a directory whose ACL mask takes the write away: %v", err)
	}
	// A default ACL granting uid 4242 rwx on what is made below.
	if err := syscall.Setxattr(ro, "system.posix_acl_default", acl(7, 7), 0); err != nil {
		t.Fatalf("setting a default ACL: %v", err)
	}
	made := filepath.Join(ro, "a", "b")
	if _, err := Mkdir(made, 0o700); err != nil {
		t.Errorf("Mkdir under a default ACL: %v", err)
	}
	if _, err := Walk(made); err != nil {
		t.Errorf("Walk of what Mkdir made under a default ACL: %v", err)
	}
	if fi, err := os.Stat(made); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("%s: %v, %v: want no group or other access", made, fi.Mode(), err)
	}
}
