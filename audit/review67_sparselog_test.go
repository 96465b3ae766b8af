package audit

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// emptyAnchor is an anchor never extended.
type emptyAnchor struct{}

func (emptyAnchor) Extend([]byte) error   { return nil }
func (emptyAnchor) Read() ([]byte, error) { return nil, ErrAnchorEmpty }

const review67Child = "PROVD_REVIEW67_SPARSE_LOG"

// FLAW (failed before the mend): review 66 put the audit trail's reads on safefile.ReadFile with
// NoLimit, which, like os.ReadFile before it, allocates the file's stat
// size up front (make([]byte, 0, size+1)) before a byte is read; Open's
// readAll does the same. An audit log that is a sparse file of 64 GiB (A6:
// a restored copy of the state, tar --sparse keeps it in a few bytes; A4
// with truncate(1)) makes Verify (provd audit verify, the daemon's checks)
// ask the runtime for 64 GiB at once: where the address space or the
// memory is short of it, that is "fatal error: runtime: out of memory",
// which no caller can recover, so the process dies instead of answering
// "tampered"; where overcommit lets it through, the read of 64 GiB of zero
// bytes touches every page (the OOM killer). Here the child runs with an
// 8 GiB address-space limit, so the allocation fails at once. Attacker:
// A6 (a state copy restored), A4. Gain: every audited process dies on
// the log, for good, where it should refuse it by name. Suggested fix:
// never size a buffer by stat for an unbounded file: read it in pieces
// (a bufio.Reader line by line into the chain, as verify consumes it), or
// bound the log (a limit far above any real trail, refused as tampered).
func TestReview67SparseAuditLogKillsTheReader(t *testing.T) {
	sparseLogChild(t, review67Child, "TestReview67SparseAuditLogKillsTheReader", "Verify", func(p string) error {
		_, err := Verify(p, emptyAnchor{})
		return err
	})
}

// sparseLogChild runs read on a sparse 64 GiB audit log in a child process
// (this test binary, run, with env set to the log's path) limited to 8 GiB
// of address space: the allocation of the log whole fails there at once,
// never on the host; read must return an error, tampered, not kill the
// process.
func sparseLogChild(t *testing.T, env, run, what string, read func(path string) error) {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		if err := syscall.Setrlimit(syscall.RLIMIT_AS, &syscall.Rlimit{Cur: 8 << 30, Max: 8 << 30}); err != nil {
			fmt.Println("setrlimit:", err)
			os.Exit(3)
		}
		err := read(p)
		fmt.Printf("READ-RETURNED: %v tampered=%v\n", err, errors.Is(err, ErrTampered))
		os.Exit(0)
	}
	log := filepath.Join(t.TempDir(), "audit.log")
	f, err := os.OpenFile(log, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 30); err != nil { // sparse: no block allocated
		t.Fatal(err)
	}
	f.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^"+run+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), env+"="+log)
	out, err := cmd.CombinedOutput()
	s := string(out)
	if i := strings.Index(s, "goroutine "); i > 0 {
		s = s[:i] // the stack of a fatal error, cut
	}
	t.Logf("child: %v\n%s", err, s)
	if err != nil || !strings.Contains(s, "READ-RETURNED") {
		t.Errorf("%s of a sparse 64 GiB audit log killed the process (%v) instead of returning an error", what, err)
	}
}

// Held: the one open of the audit trail left outside safefile, Open's
// openFile (O_RDWR|O_APPEND|O_CREATE|O_NOFOLLOW, no O_NONBLOCK), neither
// blocks on a FIFO planted at audit.log (Linux opens a FIFO read-write
// without waiting for a peer) nor follows a link there: both are refused,
// and the link's target is neither created nor written.
func TestReview67AuditOpenOfAPlantedFIFOOrLink(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo", "audit.log")
	if err := os.Mkdir(filepath.Dir(fifo), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if l, err := Open(fifo, Options{Anchor: emptyAnchor{}}); err == nil {
		l.Close()
		t.Errorf("audit.Open of a FIFO at audit.log: opened")
	}
	link := filepath.Join(dir, "link", "audit.log")
	if err := os.Mkdir(filepath.Dir(link), 0o700); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "elsewhere.log")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if l, err := Open(link, Options{Anchor: emptyAnchor{}}); err == nil {
		l.Close()
		t.Errorf("audit.Open through a link at audit.log: opened")
	}
	if _, err := os.Lstat(target); err == nil {
		t.Errorf("audit.Open made the link's target %s", target)
	}
}
