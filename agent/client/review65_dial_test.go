package client

// Review 65: dialDaemon after review 64's mend (a missing or unreachable
// socket is nothing answering; an abstract socket gets the peer check
// only).

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
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/provd/provd/api"
)

const review65Other = 4242 // another local user, neither root nor the caller

// FLAW (failed before the mend): an abstract socket ("@name") skips the walk and is held to the
// peer check alone, which review 63 showed is no check of who serves: a
// listener root made (systemd for every socket-activated service,
// ListenStream=@name with User=, or any daemon that binds as root and
// drops) passes SO_PEERCRED as root's while another user's process
// serves it. Abstract names also carry no permissions at all, so a path
// naming one is the operator's only word. Here root binds "@…", becomes
// uid 4242 and serves; the client's Check takes it for provd's daemon and
// Seal sends it the secret. Attacker: the user a root-listened abstract
// socket is handed to (a service's User=, a privilege-dropping daemon),
// when PROVD_SOCKET or --socket names that abstract socket, or provd's
// own activated daemon is stopped and that name is then bound this way;
// also a file named "@…" meant as a relative path. Gain: seal's secret,
// unseal's blob, kek import's components, every answer. Suggested fix:
// refuse "@" addresses in the client (provd's Listen never makes one; an
// activated abstract socket can be refused by the daemon likewise), or
// have the daemon prove its uid at connection time with an
// SCM_CREDENTIALS message, which the kernel checks against the sender's
// current credentials, not listen()'s.
func TestReview65AbstractSocketRootListenedServedByAnother(t *testing.T) {
	name := fmt.Sprintf("@provd-review65-%d-%d", os.Getpid(), time.Now().UnixNano())
	lines, stop := testChild(t, "serving", "TestReview65AbstractDroppingDaemon", "PROVD_R65_ABSTRACT="+name)
	defer stop()
	if err := Check(context.Background(), name); err == nil {
		t.Errorf("Check(%s) takes an abstract socket served by uid %d for provd's daemon", name, review65Other)
	}
	secret := []byte("review65 secret to seal")
	c := New(name)
	c.Timeout = 10 * time.Second
	defer c.Close()
	if _, err := c.Seal(context.Background(), api.SealRequest{Data: secret}); err == nil {
		t.Errorf("Seal through the abstract socket served by uid %d succeeded", review65Other)
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
					t.Errorf("a process of uid %d received the secret: %s", review65Other, body)
				}
				done = true
			}
		case <-deadline:
			done = true
		}
	}
}

// TestReview65AbstractDroppingDaemon is not a test: the child of
// TestReview65AbstractSocketRootListenedServedByAnother (and, with
// PROVD_R65_LISTEN_AS set, of the squatting test), selected by
// PROVD_R65_ABSTRACT. It listens on the abstract name as root (or, with
// PROVD_R65_LISTEN_AS, after becoming that uid), becomes uid 4242 and
// serves, printing each request body; it ends when stdin closes.
func TestReview65AbstractDroppingDaemon(t *testing.T) {
	name := os.Getenv("PROVD_R65_ABSTRACT")
	if name == "" {
		return // not a child
	}
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "abstract child:", err)
		os.Exit(2)
	}
	drop := func() {
		if err := syscall.Setgroups(nil); err != nil {
			fail(err)
		}
		if err := syscall.Setgid(review65Other); err != nil {
			fail(err)
		}
		if err := syscall.Setuid(review65Other); err != nil {
			fail(err)
		}
	}
	if os.Getenv("PROVD_R65_LISTEN_AS") != "" {
		drop()
	}
	l, err := net.Listen("unix", name)
	if err != nil {
		fail(err)
	}
	if os.Getuid() == 0 {
		drop()
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

// Held: an abstract name another user bound first (before the daemon, or
// while it is stopped) is refused by name (api.ErrNotPermitted, exit 5),
// not taken and not "nothing answers": the peer check sees uid 4242's
// listen().
func TestReview65AbstractSocketSquattedIsRefused(t *testing.T) {
	name := fmt.Sprintf("@provd-review65-squat-%d-%d", os.Getpid(), time.Now().UnixNano())
	_, stop := testChild(t, "serving", "TestReview65AbstractDroppingDaemon", "PROVD_R65_ABSTRACT="+name, "PROVD_R65_LISTEN_AS=1")
	defer stop()
	err := Check(context.Background(), name)
	if !errors.Is(err, api.ErrNotPermitted) {
		t.Errorf("Check(%s), squatted by uid %d: %v; want api.ErrNotPermitted", name, review65Other, err)
	}
}

// Held: "nothing answers" (the CLI's silent in-process fallback) is kept
// for what is root's or the caller's; another user's trap on the way is
// refused by name even when the caller cannot go past it. As root: a
// socket path under uid 4242's directory mode 0000 (which the kernel lets
// root through, and which a non-root caller meets as EACCES: the owner is
// checked before the walk descends), under uid 4242's dangling link, and
// under root's dangling link that leads into uid 4242's directory; each
// wraps api.ErrNotPermitted. A root-owned missing path and a stale root
// socket (the daemon crashed) are nothing answering.
func TestReview65NothingAnswersIsNotAnotherUsersTrap(t *testing.T) {
	base := t.TempDir()
	pub := filepath.Join(base, "pub")
	if err := os.Mkdir(pub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(pub, os.ModeSticky|0o777); err != nil {
		t.Fatal(err)
	}
	closed := filepath.Join(pub, "closed")
	if err := os.Mkdir(closed, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(closed, review65Other, review65Other); err != nil {
		t.Fatal(err)
	}
	dangling := filepath.Join(pub, "dangling")
	if err := os.Symlink(filepath.Join(base, "nowhere"), dangling); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(dangling, review65Other, review65Other); err != nil {
		t.Fatal(err)
	}
	rootLink := filepath.Join(base, "rootlink") // root's, leading into 4242's
	if err := os.Symlink(filepath.Join(closed, "missing"), rootLink); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{
		filepath.Join(closed, "provd.sock"),
		filepath.Join(dangling, "provd.sock"),
		dangling,
		filepath.Join(rootLink, "provd.sock"),
	} {
		if err := Check(context.Background(), p); !errors.Is(err, api.ErrNotPermitted) {
			t.Errorf("Check(%s): %v; want api.ErrNotPermitted", p, err)
		}
	}
	// The same as a non-root caller (uid 4243), who meets EACCES at the
	// 0000 directory: the test's own directories made searchable, the
	// per-test root's mode put back.
	if err := os.Chmod(filepath.Dir(base), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(filepath.Dir(base), 0o700) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	paths := []string{filepath.Join(closed, "provd.sock"), filepath.Join(dangling, "provd.sock"), filepath.Join(rootLink, "provd.sock")}
	cmd := exec.Command(os.Args[0], "-test.run=^TestReview65CheckChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), "PROVD_R65_PATHS="+strings.Join(paths, ":"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v; %s", err, out)
	}
	n := 0
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[0] == "R65" {
			n++
			if f[2] != "refused" {
				t.Errorf("as uid 4243, Check(%s): %s; want api.ErrNotPermitted", f[1], strings.Join(f[2:], " "))
			}
		}
	}
	if n != len(paths) {
		t.Errorf("child reported %d of %d paths: %s", n, len(paths), out)
	}
	stale := filepath.Join(base, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	for _, p := range []string{filepath.Join(base, "run", "provd.sock"), stale} {
		if err := Check(context.Background(), p); err == nil || errors.Is(err, api.ErrNotPermitted) {
			t.Errorf("Check(%s): %v; want nothing answering", p, err)
		}
	}
}

// TestReview65CheckChild is not a test: the child of
// TestReview65NothingAnswersIsNotAnotherUsersTrap, selected by
// PROVD_R65_PATHS; as uid 4243 it reports Check for each path.
func TestReview65CheckChild(t *testing.T) {
	paths := os.Getenv("PROVD_R65_PATHS")
	if paths == "" {
		return // not a child
	}
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "check child:", err)
		os.Exit(2)
	}
	if err := syscall.Setgroups(nil); err != nil {
		fail(err)
	}
	if err := syscall.Setgid(4243); err != nil {
		fail(err)
	}
	if err := syscall.Setuid(4243); err != nil {
		fail(err)
	}
	for _, p := range strings.Split(paths, ":") {
		err := Check(context.Background(), p)
		switch {
		case errors.Is(err, api.ErrNotPermitted):
			fmt.Printf("R65 %s refused\n", p)
		case err == nil:
			fmt.Printf("R65 %s answers\n", p)
		default:
			fmt.Printf("R65 %s nothing %v\n", p, err)
		}
	}
	os.Exit(0)
}
