package systemd

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// agentNotifier is the interface the agent declares; Notifier must satisfy it
// without the agent importing this package.
type agentNotifier interface {
	Ready() error
	Reloading() error
	Stopping() error
	Status(string) error
}

var (
	_ agentNotifier = (*Notifier)(nil)
	_ agentNotifier = NewNotifier()
)

// fakeNotifySocket plays systemd's side of sd_notify: a unixgram socket in a
// temp dir, named by NOTIFY_SOCKET for the rest of the test.
type fakeNotifySocket struct {
	t    *testing.T
	conn *net.UnixConn
}

func newFakeNotifySocket(t *testing.T) *fakeNotifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return &fakeNotifySocket{t: t, conn: conn}
}

// next returns the next datagram, failing the test if none comes in time.
func (f *fakeNotifySocket) next() string {
	f.t.Helper()
	msg, err := f.read(5 * time.Second)
	if err != nil {
		f.t.Fatalf("no notification: %v", err)
	}
	return msg
}

func (f *fakeNotifySocket) read(d time.Duration) (string, error) {
	buf := make([]byte, 4096)
	if err := f.conn.SetReadDeadline(time.Now().Add(d)); err != nil {
		return "", err
	}
	n, err := f.conn.Read(buf)
	return string(buf[:n]), err
}

func TestNotifierMessages(t *testing.T) {
	sock := newFakeNotifySocket(t)
	n := NewNotifier()

	tests := []struct {
		name string
		send func() error
		want string
	}{
		{"ready", n.Ready, "READY=1"},
		{"stopping", n.Stopping, "STOPPING=1"},
		{"status", func() error { return n.Status("opening TPM /dev/tpmrm0") }, "STATUS=opening TPM /dev/tpmrm0"},
		{"status newline", func() error { return n.Status("bad\nREADY=1\r") }, "STATUS=bad READY=1 "},
		{"watchdog", n.Watchdog, "WATCHDOG=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.send(); err != nil {
				t.Fatal(err)
			}
			if got := sock.next(); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestNotifierReloading(t *testing.T) {
	sock := newFakeNotifySocket(t)
	before, err := monotonicUsec()
	if err != nil {
		t.Fatal(err)
	}
	if err := (&Notifier{}).Reloading(); err != nil {
		t.Fatal(err)
	}
	after, _ := monotonicUsec()

	lines := strings.Split(sock.next(), "\n")
	if len(lines) != 2 || lines[0] != "RELOADING=1" || !strings.HasPrefix(lines[1], "MONOTONIC_USEC=") {
		t.Fatalf("got %q, want RELOADING=1 and MONOTONIC_USEC=", lines)
	}
	usec, err := strconv.ParseUint(strings.TrimPrefix(lines[1], "MONOTONIC_USEC="), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if usec < before || usec > after {
		t.Errorf("MONOTONIC_USEC=%d, want within [%d, %d]", usec, before, after)
	}
}

// Without NOTIFY_SOCKET (not under systemd, or Type=simple) every call is a
// silent no-op, so `provd serve` works from a shell.
func TestNotifierNoSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	os.Unsetenv("NOTIFY_SOCKET")
	n := NewNotifier()
	for name, f := range map[string]func() error{
		"ready": n.Ready, "reloading": n.Reloading, "stopping": n.Stopping,
		"status": func() error { return n.Status("x") }, "watchdog": n.Watchdog,
	} {
		if err := f(); err != nil {
			t.Errorf("%s: %v, want nil", name, err)
		}
	}
}

// A socket that is gone is an error for the caller to log, not a panic or a
// hang.
func TestNotifierSendFailure(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "gone.sock"))
	err := NewNotifier().Ready()
	if err == nil {
		t.Fatal("Ready to a missing socket: nil error")
	}
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("error %v does not wrap the cause (ENOENT)", err)
	}
}
