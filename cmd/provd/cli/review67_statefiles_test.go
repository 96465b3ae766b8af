package cli_test

// Review 67: the state files the CLI still opens another way than
// internal/safefile after review 66's mends.

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/provd/provd/api"
)

// FLAW (failed before the mend): review 66 moved attest.json onto safefile.ReadFile, but attest
// now/fetch/peer still read <state-dir>/measurements.log with readBounded,
// a plain os.Open: no O_NONBLOCK, no O_NOFOLLOW, any file type. A FIFO
// planted at measurements.log (A4, or a restored copy of the state, A6:
// tar keeps FIFOs) blocks provd attest now in open(2) for good (the
// attestation timer's every run hangs, and with it the fleet's view of the
// device), and a writer at the other end chooses the log the endpoint is
// sent; a link there is followed. Here the test itself is the writer, so
// the open returns: the CLI takes the FIFO's bytes as the measurement log
// and goes on to the endpoint, where it should have refused the file
// (tampered, naming measurements.log) before any byte is read.
// Attacker: A4/A6. Gain: a hung attestation (denial of service the
// operator sees only as silence), a log chosen by whoever holds the FIFO.
// Suggested fix: read the state's measurements.log with
// safefile.ReadFile(path, attest.MaxEventLogSize) (ErrUnsafe as tampered),
// as fwhook's readFile and attest.json already are; keep readBounded for
// files the operator names (--firmware-log, --measurement-log).
func TestReview67AttestReadsAFIFOAtMeasurementsLog(t *testing.T) {
	base := t.TempDir()
	state := filepath.Join(base, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(state, "attest.json"), []byte(`{"endpoint":"https://127.0.0.1:1","device_id":"dev-1","class":"gateway"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fwLog := filepath.Join(base, "fw.log") // a regular file the operator names
	if err := os.WriteFile(fwLog, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(state, "measurements.log")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// The planter's end: opened (blocking) once a reader opens the FIFO;
	// what it writes is what a blocking reader takes for the log.
	wrote := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		if err != nil {
			wrote <- err
			return
		}
		_, err = f.Write([]byte("the planter's log"))
		f.Close()
		wrote <- err
	}()
	out, stderr, code := run(t, nil, "--state-dir", state, "attest", "now", "--firmware-log", fwLog)
	// Release the planter's open, whenever it starts: a reader held open
	// until the planter's write is done (one opened and closed at once
	// could come before the planter's goroutine ran, which then waited
	// for good: a hang seen under make test's load).
	if r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
		defer r.Close()
	}
	var werr error
	select {
	case werr = <-wrote:
	case <-time.After(30 * time.Second):
		t.Fatal("the planter's open of the FIFO never returned")
	}
	t.Logf("attest now: exit %d\n%s%s (planter's write: %v)", code, out, stderr, werr)
	if code != api.ExitTampered || !strings.Contains(stderr, "measurements.log") {
		t.Errorf("attest now with a FIFO at measurements.log: exit %d, %q; want it refused as tampered (exit %d) by name, never opened blocking", code, strings.TrimSpace(stderr), api.ExitTampered)
	}
}
