package client

// Review 64: dialDaemon's path walk (trustedpath.Walk) and client.Check,
// which the CLI's daemon() now turns into a refusal (exit 5) whenever the
// error wraps api.ErrNotPermitted.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/provd/provd/api"
)

const (
	review64User  = 4242 // a local user, member of the daemon's group
	review64Group = 4300 // the daemon's socket group (provd)
)

// FLAW (a regression of 826592f; failed before the mend): when no daemon runs, the socket's path does not exist, and the
// walk's lstat fails with ENOENT; dialDaemon wraps every walk error in
// api.ErrNotPermitted, so client.Check reports "not permitted" for a
// socket that is simply absent, and the CLI's daemon() (review 63)
// refuses by name, exit 5, instead of working in-process. That is the
// default for every host without provd.socket running (DefaultSocket
// /run/provd/provd.sock: /run/provd missing) and for every --socket or
// PROVD_SOCKET naming a daemon that is stopped: `provd --tpm`-less
// commands, which worked in-process before, all exit 5 ("the daemon's
// socket ...: lstat ...: no such file or directory"). Attacker: none
// needed; a legitimate setup is broken (availability, and operators are
// taught to ignore exit 5). Suggested fix: wrap only
// trustedpath.ErrUntrusted (errors.Is) in api.ErrNotPermitted; a missing
// component (fs.ErrNotExist) is "nothing answers", EACCES likewise or its
// own message; a test per kind.
func TestReview64NoDaemonIsNotARefusal(t *testing.T) {
	base := t.TempDir()
	for _, p := range []string{
		filepath.Join(base, "provd.sock"),             // the daemon stopped, its directory kept
		filepath.Join(base, "run", "provd", "p.sock"), // /run/provd never made: provd.socket not installed
	} {
		err := Check(context.Background(), p)
		if err == nil {
			t.Fatalf("Check(%s): nil with nothing there", p)
		}
		if errors.Is(err, api.ErrNotPermitted) {
			t.Errorf("Check(%s) with no daemon and nothing untrusted on the way: %v; it wraps api.ErrNotPermitted, so the CLI exits 5 instead of working in-process", p, err)
		}
	}
}

// Held: the legitimate layouts still reach their daemon from a
// non-root caller. The child becomes uid 4242 with supplementary group
// 4300 and checks (1) provd.socket's layout: a root listener, socket
// root:4300 0660 in a directory root 0755 (DirectoryMode=0755); (2) the
// same in a directory root:4300 0750; (3) its own daemon under its own
// runtime directory (uid 4242, 0700), as PROVD_SOCKET under
// $XDG_RUNTIME_DIR; (4) the same by a relative --socket path from that
// directory; and (5) a root link in a root directory to the socket of
// (1). A non-member (uid 4243, no group) is refused at (2)'s directory
// (EACCES; it could not connect anyway).
func TestReview64LegitimateSocketLayouts(t *testing.T) {
	base := t.TempDir()
	// The walk lstats every component as the child's user: the test's
	// own directories (t.TempDir's and the per-test root testing made
	// for it) must be searchable; the root's mode is put back.
	if err := os.Chmod(filepath.Dir(base), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(filepath.Dir(base), 0o700) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	listen := func(dir string, mode os.FileMode) string {
		t.Helper()
		p := filepath.Join(dir, "provd.sock")
		l, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		if err := os.Chown(p, 0, review64Group); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	mkdir := func(name string, uid, gid int, mode os.FileMode) string {
		t.Helper()
		d := filepath.Join(base, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, uid, gid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, mode); err != nil {
			t.Fatal(err)
		}
		return d
	}
	open := listen(mkdir("run755", 0, 0, 0o755), 0o660)
	grp := listen(mkdir("run750", 0, review64Group, 0o750), 0o660)
	own := mkdir("user", review64User, review64User, 0o700)
	lnk := filepath.Join(mkdir("links", 0, 0, 0o755), "provd.sock")
	if err := os.Symlink(open, lnk); err != nil {
		t.Fatal(err)
	}

	run := func(uid int, groups string) map[string]string {
		cmd := exec.Command(os.Args[0], "-test.run=^TestReview64LayoutChild$", "-test.count=1")
		cmd.Env = append(os.Environ(),
			"PROVD_R64_PATHS="+strings.Join([]string{open, grp, own, lnk}, ":"),
			fmt.Sprintf("PROVD_R64_UID=%d", uid), "PROVD_R64_GROUPS="+groups)
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("child: %v; %s", err, out)
		}
		res := map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if k, v, ok := strings.Cut(l, " "); ok && strings.HasPrefix(k, "R64") {
				res[k] = v
			}
		}
		return res
	}
	member := run(review64User, fmt.Sprint(review64Group))
	for _, k := range []string{"R64open", "R64group", "R64own", "R64relative", "R64link"} {
		if member[k] != "ok" {
			t.Errorf("group member, %s: %q; want ok", k, member[k])
		}
	}
	other := run(4243, "")
	if v := other["R64group"]; v == "ok" || !strings.Contains(v, "permission denied") {
		t.Errorf("non-member, socket in a 0750 directory of group %d: %q; want refused (permission denied)", review64Group, v)
	}
}

// TestReview64LayoutChild is not a test: the child of
// TestReview64LegitimateSocketLayouts, selected by PROVD_R64_PATHS.
func TestReview64LayoutChild(t *testing.T) {
	paths := os.Getenv("PROVD_R64_PATHS")
	if paths == "" {
		return // not a child
	}
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "layout child:", err)
		os.Exit(2)
	}
	p := strings.Split(paths, ":")
	var uid int
	fmt.Sscan(os.Getenv("PROVD_R64_UID"), &uid)
	var groups []int
	for _, g := range strings.Fields(os.Getenv("PROVD_R64_GROUPS")) {
		var n int
		fmt.Sscan(g, &n)
		groups = append(groups, n)
	}
	if err := syscall.Setgroups(groups); err != nil {
		fail(err)
	}
	if err := syscall.Setgid(uid); err != nil {
		fail(err)
	}
	if err := syscall.Setuid(uid); err != nil {
		fail(err)
	}
	report := func(k, path string) {
		if err := Check(context.Background(), path); err != nil {
			fmt.Printf("%s %v\n", k, err)
		} else {
			fmt.Printf("%s ok\n", k)
		}
	}
	report("R64open", p[0])
	report("R64group", p[1])
	report("R64link", p[3])
	if uid == review64User {
		ownSock := filepath.Join(p[2], "provd.sock")
		l, err := net.Listen("unix", ownSock)
		if err != nil {
			fail(err)
		}
		defer l.Close()
		report("R64own", ownSock)
		if err := os.Chdir(p[2]); err != nil {
			fail(err)
		}
		report("R64relative", "provd.sock")
	}
	os.Exit(0)
}
