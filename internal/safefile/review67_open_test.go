package safefile

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

// Held: O_NONBLOCK stays set on the regular file descriptors Open returns
// for writing (the agent's audit.pending appends), and changes nothing
// there: Linux ignores it for regular files, and a write of several MiB
// in one call is written whole, at the end, after what was there.
func TestReview67NonblockAppendWritesWhole(t *testing.T) {
	p := filepath.Join(t.TempDir(), "audit.pending")
	if err := os.WriteFile(p, []byte("first\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, _, err := Open(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600, NoLimit)
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("0123456789abcde\n"), 4<<20/16)
	n, err := f.Write(big)
	if err != nil || n != len(big) {
		t.Fatalf("a 4 MiB append through a non-blocking descriptor: %d of %d, %v", n, len(big), err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b, err := ReadFile(p, NoLimit)
	if err != nil || !bytes.Equal(b, append([]byte("first\n"), big...)) {
		t.Fatalf("the file after the append: %d bytes, %v", len(b), err)
	}
}

const review67TTYChild = "PROVD_REVIEW67_TTY"

// Held: Open checks the file type only after open(2) returned, and adds
// no O_NOCTTY, so a terminal planted at a state file (a character device
// node: A4, or a restored copy of the state, A6, tar extracted as root
// keeps device nodes) could become the controlling terminal of a session
// leader without one, which provd's daemon is under systemd, and take
// signals (^C, ^Z, a hangup) from whoever holds the terminal's other end.
// The terminal an unprivileged user holds both ends of is a pty, and the
// kernel refuses a pty slave opened through a node outside devpts (EIO):
// here a child started as a session leader reads a planted node of a pty
// the test holds the master of; the read fails and no terminal is the
// child's. Left (not tested here: it would take a terminal of the host):
// a node of an unused virtual console or serial line, or of a device that
// acts on open alone (a watchdog), is opened before it is refused;
// opening with O_PATH, fstat, then reopening a regular file through
// /proc/self/fd (as firmware.OpenBeneath does) would close that too.
func TestReview67PlantedPtyIsNotTheControllingTTY(t *testing.T) {
	if p := os.Getenv(review67TTYChild); p != "" {
		_, err := ReadFile(p, 1<<20)
		tty, terr := os.OpenFile("/dev/tty", os.O_RDWR, 0)
		if terr == nil {
			tty.Close()
		}
		fmt.Printf("READ: unsafe=%v err=%v\nCTTY: %v\n", errors.Is(err, ErrUnsafe), err, terr == nil)
		os.Exit(0)
	}
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	var unlock int32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, ptmx.Fd(), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		t.Fatal(e)
	}
	var n uint32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, ptmx.Fd(), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); e != 0 {
		t.Fatal(e)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/dev/pts/%d", n), &st); err != nil {
		t.Fatal(err)
	}
	planted := filepath.Join(t.TempDir(), "audit.pending")
	if err := syscall.Mknod(planted, syscall.S_IFCHR|0o600, int(st.Rdev)); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestReview67PlantedPtyIsNotTheControllingTTY$", "-test.count=1")
	cmd.Env = append(os.Environ(), review67TTYChild+"="+planted)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // as a service's main process
	out, err := cmd.CombinedOutput()
	t.Logf("child (session leader, no terminal): %v\n%s", err, out)
	if err != nil || !strings.Contains(string(out), "READ: ") || strings.Contains(string(out), "err=<nil>") {
		t.Fatalf("the planted terminal was read: %v", err)
	}
	if strings.Contains(string(out), "CTTY: true") {
		t.Errorf("ReadFile failed on the planted terminal, but it is now the reader's controlling terminal (/dev/pts/%d, whose master another user may hold)", n)
	}
}
