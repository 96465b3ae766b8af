package server

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"
)

// Held: uid 0 inside a user namespace is not root to the daemon.
//
// Attack (A2/A3: an unprivileged user who may create user namespaces, as
// most distributions allow): unshare a user namespace mapping itself to 0,
// become "root" there, and connect to the API socket, hoping the daemon's
// roles (root holds both) see uid 0. SO_PEERCRED reports the connecting
// credentials translated into the reader's namespace, so the daemon (in the
// initial namespace) sees the outer id. Here the child is uid/gid 0 in a
// namespace whose 0 is 100000 outside (root writes that map, as newuidmap
// does for an ordinary user), and connects with curl.
//
// Secure (holds): PeerCredentials reports uid 100000 and gid 100000, no
// group 0, and the shipped default roles give it none.
func TestReview54UserNamespaceRootIsNotRoot(t *testing.T) {
	t.Parallel()
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatalf("curl not found: %v", err)
	}
	dir, err := os.MkdirTemp("", "review54-userns-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := os.Chmod(sock, 0o777); err != nil {
		t.Fatal(err)
	}
	got := make(chan Caller, 1)
	errs := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errs <- err
			return
		}
		defer c.Close()
		cr, err := PeerCredentials(c)
		if err != nil {
			errs <- err
			return
		}
		got <- cr
	}()
	const outer = 100000
	var stderr bytes.Buffer
	cmd := exec.Command(curl, "-s", "-m", "3", "--unix-socket", sock, "http://provd/v1/status")
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: outer, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: outer, Size: 1}},
		Credential:  &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true},
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting curl in a user namespace: %v", err)
	}
	defer cmd.Wait()
	var c Caller
	select {
	case c = <-got:
	case err := <-errs:
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("no connection from the namespace; curl: %s", stderr.String())
	}
	if c.UID != outer || c.GID != outer || slices.Contains(c.Groups, 0) {
		t.Errorf("the namespace's root was seen as %v, want uid and gid %d and no group 0", c, outer)
	}
	cfg, _ := DefaultConfig(constLookup{})
	if r := cfg.Roles.Of(c); r != 0 {
		t.Errorf("the namespace's root holds %v under the default roles", r)
	}
}
