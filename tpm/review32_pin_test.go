package tpm_test

// Review 32: PinSRK while a transient copy of the SRK is held.
//
// FLAW (failed before the mend): TestReview32PinSRKForgetsTheCopyUnflushed.
// After TransientSRKOnly, SRK makes a transient copy where 0x81000001 is
// empty and holds it (t.srk, srkTransient). PinSRK (and PinSeenSRK)
// then sets t.srk to nil without flushing the copy, asking for no sweep:
// DropTransientSRK, which the agent calls at every operation's end, and
// TransientSRK, which the agent's sweep reads as held, no longer see it.
// The copy stays loaded, held by nobody, for the connection's life (behind
// a resource manager no sweep ever runs). EvictSRK and the witness's
// EvictSRK drop the copy first (dropCopy); PinSRK does not. The agent pins
// in the middle of an operation (provision's firstContact runs
// pinIdentity, which calls PinSRK, after an audited operation's open may
// have made a copy for a gate's load).
//
// HELD: none in this file.
import (
	"testing"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

func TestReview32PinSRKForgetsTheCopyUnflushed(t *testing.T) {
	for _, rm := range []bool{false, true} {
		t.Run(map[bool]string{false: "exclusive", true: "resource manager"}[rm], func(t *testing.T) {
			var opts []swtpmtest.Option
			if rm {
				opts = append(opts, swtpmtest.WithResourceManager())
			}
			env := swtpmtest.Start(t, opts...)
			tp := env.TPM
			tp.TransientSRKOnly()
			srk, err := tp.SRK()
			if err != nil {
				t.Fatal(err)
			}
			if srk.Handle == tpm.SRKHandle || !transientLoaded(t, tp, srk.Handle) {
				t.Fatalf("not mounted: no transient copy (0x%08x)", uint32(srk.Handle))
			}
			// The copy's own public area pinned: the same SRK.
			if err := tp.PinSRK(srk.Public); err != nil {
				t.Fatal(err)
			}
			if err := tp.DropTransientSRK(); err != nil {
				t.Fatal(err)
			}
			if transientLoaded(t, tp, srk.Handle) {
				t.Errorf("after PinSRK and DropTransientSRK, the SRK's copy 0x%08x is still loaded, held by nobody (TransientSRK says 0x%08x, NeedsSweep %v)",
					uint32(srk.Handle), uint32(tp.TransientSRK()), tp.NeedsSweep())
				env.NoLeakCheck()
				_ = tp.Flush(srk.Handle)
			}
		})
	}
}
