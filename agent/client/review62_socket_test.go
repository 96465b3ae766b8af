package client

// Review 62: what the client trusts about the socket at its path, and what
// it takes from whatever answers there.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
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

const review62Other = 4242 // another local user, neither root nor the caller

// FLAW (failed before the mend): the client sends its request, secrets included, to whatever listens
// at the configured path: it checks neither the socket file's owner nor the
// peer's credentials (SO_PEERCRED). Attacker: a local user who can put a
// socket at the path the CLI or a Go program uses (PROVD_SOCKET or
// --socket under /tmp or a group-writable run directory, a daemon started
// by hand there and not running now; systemd.Listen refuses to serve from
// such a directory since review 54, so the real daemon is then absent and
// the planted socket is the only thing that answers). The CLI's daemon()
// asks only client.Answers: any listener makes it hand `provd seal` its
// secret, `unseal` its blob, `kek import` its components, to that user,
// who also answers with any "sealed blob" or "secret" it likes. Here a
// listener of uid 4242 (socket file and peer both 4242) receives a seal
// request's data. Suggested fix: before sending, lstat the path (a socket
// owned by root or the daemon's configured user, in directories only they
// can change: systemd.trustedWalk's rule) and, after connecting, read the
// peer's SO_PEERCRED and refuse a uid other than root's or the daemon's
// (in the Transport's DialContext, so a reconnect is checked too);
// Answers should apply the same check so the CLI never prefers an untrusted
// listener to working in-process.
func TestReview62ClientSendsSecretToAnotherUsersSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "provd.sock")
	lines, stop := testChild(t, "listening", "TestReview62FakeDaemon", "PROVD_R62_SOCK="+sock)
	defer stop()
	var st syscall.Stat_t
	if err := syscall.Lstat(sock, &st); err != nil || st.Uid != review62Other {
		t.Fatalf("the planted socket: %v, uid %d", err, st.Uid)
	}

	secret := []byte("review62 secret to seal")
	if !Answers(context.Background(), sock) {
		t.Logf("Answers refuses the other user's socket")
	} else {
		t.Errorf("Answers says a socket of uid %d is the daemon: the CLI would use it", review62Other)
	}
	c := New(sock)
	c.Timeout = 10 * time.Second
	defer c.Close()
	blob, err := c.Seal(context.Background(), api.SealRequest{Data: secret})
	if err == nil {
		t.Errorf("Seal through a socket of uid %d succeeded (blob %q)", review62Other, blob)
	}
	// What the listener received, if anything (bounded: it prints each
	// request as it ends).
	deadline := time.After(2 * time.Second)
	for done := false; !done; {
		select {
		case l, ok := <-lines:
			if !ok {
				done = true
				break
			}
			if b, ok := strings.CutPrefix(l, "BODY "); ok {
				body, _ := base64.StdEncoding.DecodeString(b)
				if bytes.Contains(body, []byte(base64.StdEncoding.EncodeToString(secret))) {
					t.Errorf("uid %d received the secret: %s", review62Other, body)
				}
				done = true
			}
		case <-deadline:
			done = true
		}
	}
}

// TestReview62FakeDaemon is not a test: it is the child process of
// TestReview62ClientSendsSecretToAnotherUsersSocket, selected by
// PROVD_R62_SOCK. It binds the socket as root (the test's directory is not
// reachable by uid 4242), gives it to uid 4242, becomes uid 4242 and only
// then listens, so the socket's owner and its peer credentials are both
// that user's. It prints every request body, and ends when stdin closes.
func TestReview62FakeDaemon(t *testing.T) {
	path := os.Getenv("PROVD_R62_SOCK")
	if path == "" {
		return // not a child: nothing to do
	}
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "fake daemon:", err)
		os.Exit(2)
	}
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		fail(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		fail(err)
	}
	if err := os.Chown(path, review62Other, review62Other); err != nil {
		fail(err)
	}
	if err := os.Chmod(path, 0o777); err != nil {
		fail(err)
	}
	if err := syscall.Setgroups(nil); err != nil {
		fail(err)
	}
	if err := syscall.Setgid(review62Other); err != nil {
		fail(err)
	}
	if err := syscall.Setuid(review62Other); err != nil {
		fail(err)
	}
	if err := syscall.Listen(fd, 8); err != nil {
		fail(err)
	}
	l, err := net.FileListener(os.NewFile(uintptr(fd), "listener"))
	if err != nil {
		fail(err)
	}
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	fmt.Println("listening")
	err = http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		fmt.Println("BODY " + base64.StdEncoding.EncodeToString(b))
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"blob":"YXR0YWNrZXIncyBibG9i"}`)
	}))
	if !errors.Is(err, net.ErrClosed) {
		fail(err)
	}
}

// Held: whatever answers, the client reads at most maxResponse (64 MiB) of
// an answer and refuses it, for success and error statuses alike, and
// quotes at most 200 bytes of an error body that is not the API's JSON: a
// daemon (or a listener at the path) streaming an endless answer neither
// grows the caller's memory without bound nor floods its terminal.
func TestReview62EndlessAnswerIsBounded(t *testing.T) {
	for _, status := range []int{http.StatusOK, http.StatusInternalServerError} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "s")
			l, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(status)
				chunk := bytes.Repeat([]byte("A"), 1<<20)
				for range 200 { // 200 MiB, past the bound
					if _, err := w.Write(chunk); err != nil {
						return
					}
				}
			})}
			go srv.Serve(l)
			defer srv.Close()
			c := New(sock)
			c.Timeout = 60 * time.Second
			defer c.Close()
			start := time.Now()
			_, err = c.Status(context.Background())
			if err == nil {
				t.Fatal("an endless answer was accepted")
			}
			if len(err.Error()) > 1024 {
				t.Errorf("the error quotes %d bytes of the answer", len(err.Error()))
			}
			if el := time.Since(start); el > 50*time.Second {
				t.Errorf("took %s", el)
			}
		})
	}
}

// FLAW (low; failed before the mend): an error answer in the API's JSON is taken whole: its message
// (up to the 64 MiB bound, control characters and all) becomes the error's
// text, where a non-JSON error body is quoted to 200 bytes. Attacker:
// whatever answers at the socket (the planted listener above); a Go program
// that logs the *api.Error writes the answer's bytes verbatim (terminal
// escapes, forged log lines); the CLI quotes control characters
// (printable) but still prints megabytes. Suggested fix: bound a decoded
// message (as the non-JSON case, a few KiB) and quote control characters
// in api.DecodeError, where every caller gets it.
func TestReview62ErrorMessageIsTakenWhole(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	msg := "\x1b[2J\x1b[Hprovd: sealed OK\n" + strings.Repeat("x", 4<<20)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		m, _ := json.Marshal(msg)
		fmt.Fprintf(w, `{"error":{"message":%s,"kinds":[],"exit_code":1}}`, m)
	})}
	go srv.Serve(l)
	defer srv.Close()
	c := New(sock)
	c.Timeout = 30 * time.Second
	defer c.Close()
	_, err = c.Status(context.Background())
	if err == nil {
		t.Fatal("an error answer was taken as success")
	}
	if n := len(err.Error()); n > 4096 {
		t.Errorf("the error carries %d bytes of the answer's message", n)
	}
	// Newlines and tabs stay: the daemon's own messages hold them
	// (errors.Join; review 63), and the CLI quotes what it prints.
	if strings.ContainsAny(err.Error(), "\x1b") {
		t.Errorf("the error carries the answer's control characters verbatim")
	}
}
