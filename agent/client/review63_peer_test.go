package client

// Review 63: the client's peer check (trustedpath.CheckPeer, SO_PEERCRED)
// after review 62's mend, and what it leaves to the path.

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/provd/provd/api"
)

const review63Other = 4242 // another local user, neither root nor the caller

// FLAW (failed before the mend): SO_PEERCRED names whoever called listen(), not who serves the
// socket now: a listener made by root and handed to, or kept by, a
// process that then runs as another user passes CheckPeer as root's. That
// is how every socket-activated system service is served (systemd, uid 0,
// listens; the service runs as its User= or DynamicUser=), and how a
// daemon that binds and then drops privileges serves. The client walks
// nothing on the path (review 62's suggested fix asked for the socket's
// directories to be checked with systemd's rule; the mend took only the
// peer check), so a link of another user's at the configured path
// (--socket /tmp/provd.sock, PROVD_SOCKET, while no daemon runs there)
// sends `seal`'s secret, `unseal`'s blob and `kek import`'s components to
// whatever root-listened socket it names. Attacker: a local user who runs
// (or has broken into) any service whose listening socket root made, and
// can create a name where the client's path points; gain: the requests'
// secrets, every answer chosen. Here root listens, then the process
// becomes uid 4242 and serves; uid 4242's symlink in a sticky directory
// leads the client to it. Suggested fix: before dialing, walk the socket
// path with trustedpath.Walk (every directory and link root's or the
// caller's; the link here is refused) and lstat the socket (root's or the
// caller's), then check SO_PEERCRED as now.
func TestReview63RootListenedSocketServedByAnotherUser(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "service.sock")
	lines, stop := testChild(t, "serving", "TestReview63DroppingDaemon", "PROVD_R63_SOCK="+real)
	defer stop()
	// uid 4242's link, in a sticky directory, at the path the client uses.
	pub := filepath.Join(base, "pub")
	if err := os.Mkdir(pub, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(pub, os.ModeSticky|0o777); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(pub, "provd.sock")
	if err := os.Symlink(real, sock); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(sock, review63Other, review63Other); err != nil {
		t.Fatal(err)
	}

	secret := []byte("review63 secret to seal")
	if Answers(context.Background(), sock) {
		t.Errorf("Answers takes a socket served by uid %d, reached through its link, for the daemon", review63Other)
	}
	c := New(sock)
	c.Timeout = 10 * time.Second
	defer c.Close()
	blob, err := c.Seal(context.Background(), api.SealRequest{Data: secret})
	if err == nil {
		t.Errorf("Seal through uid %d's link and socket succeeded (blob %q)", review63Other, blob)
	}
	deadline := time.After(5 * time.Second)
	for done := false; !done; {
		select {
		case l, ok := <-lines:
			if !ok {
				done = true
				break
			}
			if f := strings.Fields(l); len(f) > 1 && f[0] == "BODY" {
				body, _ := base64.StdEncoding.DecodeString(f[1])
				if bytes.Contains(body, []byte(base64.StdEncoding.EncodeToString(secret))) {
					t.Errorf("a process of uid %d received the secret: %s (%s)", review63Other, body, l)
				}
				done = true
			}
		case <-deadline:
			done = true
		}
	}
}

// TestReview63DroppingDaemon is not a test: it is the child process of
// TestReview63RootListenedSocketServedByAnotherUser, selected by
// PROVD_R63_SOCK. As root it binds and listens (as systemd does for a
// socket unit), then becomes uid 4242 for good and serves, printing every
// request body; it ends when stdin closes.
func TestReview63DroppingDaemon(t *testing.T) {
	path := os.Getenv("PROVD_R63_SOCK")
	if path == "" {
		return // not a child: nothing to do
	}
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "dropping daemon:", err)
		os.Exit(2)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		fail(err)
	}
	if err := os.Chmod(path, 0o777); err != nil {
		fail(err)
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
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	fmt.Println("serving")
	err = http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		fmt.Printf("BODY %s served-by-uid %d\n", base64.StdEncoding.EncodeToString(b), os.Getuid())
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"blob":"YXR0YWNrZXIncyBibG9i"}`)
	}))
	if !errors.Is(err, net.ErrClosed) {
		fail(err)
	}
}
