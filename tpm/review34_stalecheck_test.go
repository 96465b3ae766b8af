// Review 34: review 33's stale-copy check (cachedSRK's TPM2_ReadPublic of
// the old copy's number, with srkMu held) run from inside a Share.
//
// FLAW (failed before the mend): none in this file.
//
// HELD: TestReview34StaleCheckInsideAShare — behind a resource manager, a
// copy of the SRK is held, the TPM is reset and started up again by
// provd's next command (the generation moves); SRK called inside a Share
// (as a session's start calls it) neither deadlocks on srkMu (the check's
// ReadPublic goes through Send and counting, which take no SRK lock) nor
// recurses: it finds the old number empty, forgets the copy, makes a new
// one, and DropTransientSRK leaves nothing loaded. (A migration, where the
// copy stays loaded, could not be mounted here in the time: the stream's
// redial did not move the generation before the next SRK.)
package tpm_test

import (
	"testing"
	"time"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

func TestReview34StaleCheckInsideAShare(t *testing.T) {
	env := swtpmtest.Start(t, swtpmtest.WithResourceManager())
	env.RequireSimulator()
	tp := env.TPM
	tp.TransientSRKOnly()
	old, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	if old.Handle>>24 != 0x80 {
		t.Fatalf("not mounted: the SRK is at 0x%08x, not a copy", uint32(old.Handle))
	}
	env.Reset()
	// A command meets TPM_RC_INITIALIZE: provd starts the TPM up, and the
	// generation moves (the copy is gone with the reset).
	gen := tp.Generation()
	if _, err := tp.ReadPublic(tpm.SRKHandle); err == nil {
		t.Fatal("not mounted: 0x81000001 holds an SRK")
	}
	if tp.Generation() == gen {
		t.Fatal("not mounted: the generation did not move at the reset")
	}
	done := make(chan error, 1)
	var now tpm.Object
	go func() {
		done <- tp.Share(func() error {
			var err error
			now, err = tp.SRK()
			return err
		})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("SRK inside a Share after a migration: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("SRK inside a Share after a migration did not return: a deadlock on srkMu")
	}
	hs, err := tp.Handles(tpm.TransientHandles)
	if err != nil {
		t.Fatal(err)
	}
	if len(hs) != 1 || hs[0] != now.Handle {
		t.Errorf("after SRK: transient objects %v, want only the new copy 0x%08x (the old one, 0x%08x, gone with the reset)", hs, uint32(now.Handle), uint32(old.Handle))
	}
	if err := tp.DropTransientSRK(); err != nil {
		t.Fatal(err)
	}
	if hs, err := tp.Handles(tpm.TransientHandles); err != nil || len(hs) != 0 {
		t.Errorf("after DropTransientSRK: transient objects %v (%v)", hs, err)
	}
}
