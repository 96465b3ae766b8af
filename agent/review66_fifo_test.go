package agent_test

// Review 66: the agent's own files in the state directory (the pending
// records, the audit gate) after review 65's mends.

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/provd/provd/test/swtpmtest"
)

// FLAW (failed before the mend): review 62/63 made the store open manifest.json and every blob
// O_NOFOLLOW|O_NONBLOCK, regular files only and bounded ("a FIFO planted
// at manifest.json ... blocked the open under the state's lock for
// good"), and review 65 made Wipe refuse a link at blobs; but the agent's
// own files beside them are still opened the old way: audit.pending with
// os.ReadFile in writePending (and os.OpenFile(O_WRONLY|O_CREATE|O_APPEND),
// no O_NOFOLLOW, in keepPending), audit.gate with os.ReadFile in
// trailAnchor.gate. A FIFO at either name (a restored archive of the state
// directory, tar keeps FIFOs and links: the A6 copy put back by an
// operator, or A4) blocks the first audited operation in open(2) for
// ever, holding the trail and the TPM share, so every later request of
// the daemon waits behind it; a link at audit.pending makes root append
// the pending records to whatever file the link names, outside the state
// directory (keepPending), and read another file as the pending records
// (writePending). Attacker: whoever supplies the state copy that is
// restored (A6), or A4. Gain: denial of every audited operation (the
// daemon hangs rather than refusing, exit codes never come); root
// appending JSON to a file of the attacker's choosing. Suggested fix: read
// and write audit.pending and audit.gate (and the rotated audit-*.log
// files, audit.log's ReadFile) as the store reads the manifest: O_NOFOLLOW
// |O_NONBLOCK, a regular file only, bounded before a byte is read, and
// refuse anything else as tampered (exit 14).
func TestReview66PlantedFIFOAtTheAgentsFiles(t *testing.T) {
	for _, name := range []string{"audit.pending", "audit.gate"} {
		t.Run(name, func(t *testing.T) {
			env := swtpmtest.Start(t)
			ag, dir := signingState(t, env)
			p := filepath.Join(dir, name)
			if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			if err := syscall.Mkfifo(p, 0o600); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- ag.DeleteKey(context.Background(), "sig") }()
			select {
			case err := <-done:
				t.Logf("held: the audited key delete returned (%v)", err)
				return
			case <-time.After(10 * time.Second):
				t.Errorf("an audited key delete hangs for good on a FIFO planted at %s (opened without O_NONBLOCK, under the trail's lock)", name)
			}
			// Unblock the open: a writer appears, the FIFO goes (later
			// opens find nothing), the writer goes and the read ends.
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			os.Remove(p)
			f.Close()
			select {
			case err := <-done:
				t.Logf("after a writer came and went: %v", err)
			case <-time.After(10 * time.Second):
				t.Fatal("the key delete still hangs after the FIFO had a writer")
			}
		})
	}
}
