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

const review68Child = "PROVD_REVIEW68_SPARSE_OPEN"

// FLAW (failed before the mend): review 67 bounded the audit trail's whole reads (readLog,
// MaxLogSize 1 GiB) and safefile's preallocation, but Open, the read every
// audited process makes of the log at start (agent.New, provd serve, every
// audited one-shot command), goes through openVerified's readAll, which
// still does make([]byte, fi.Size()) before a byte is read, with no bound
// at all. The same sparse 64 GiB audit.log review 67 planted (A6: a
// restored copy of the state, tar --sparse keeps it in a few bytes; A4
// with truncate(1)) still makes every start ask the runtime for 64 GiB at
// once: "fatal error: runtime: out of memory", unrecoverable, where Verify
// now answers "tampered". Here the child runs with an 8 GiB address-space
// limit. Attacker: A6, A4. Gain: the daemon and every audited command die
// at start, for good, instead of refusing the log by name. Suggested fix:
// readAll bounded by MaxLogSize (stat first, refuse as tampered before
// allocating), or verify the log streaming, line by line.
func TestReview68SparseAuditLogKillsOpen(t *testing.T) {
	if p := os.Getenv(review68Child); p != "" {
		if err := syscall.Setrlimit(syscall.RLIMIT_AS, &syscall.Rlimit{Cur: 8 << 30, Max: 8 << 30}); err != nil {
			fmt.Println("setrlimit:", err)
			os.Exit(3)
		}
		l, err := Open(p, Options{Anchor: emptyAnchor{}})
		if l != nil {
			l.Close()
		}
		fmt.Printf("OPEN-RETURNED: %v tampered=%v\n", err, errors.Is(err, ErrTampered))
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
	cmd := exec.Command(os.Args[0], "-test.run=^TestReview68SparseAuditLogKillsOpen$", "-test.count=1")
	cmd.Env = append(os.Environ(), review68Child+"="+log)
	out, err := cmd.CombinedOutput()
	s := string(out)
	if i := strings.Index(s, "goroutine "); i > 0 {
		s = s[:i] // the stack of a fatal error, cut
	}
	t.Logf("child: %v\n%s", err, s)
	if err != nil || !strings.Contains(s, "OPEN-RETURNED") {
		t.Errorf("audit.Open of a sparse 64 GiB audit log killed the process (%v) instead of returning an error", err)
	}
}
