package agent

import (
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
)

// loadedSessions is how many sessions the TPM holds, as A1 asks it on its
// own side of the bus.
func loadedSessions(next transport.TPM) int {
	n := 0
	for _, first := range []uint32{0x02000000, 0x03000000} {
		rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: first, PropertyCount: 64}).Execute(next)
		if err != nil {
			continue
		}
		if hs, err := rsp.CapabilityData.Data.Handles(); err == nil {
			n += len(hs.Handle)
		}
	}
	return n
}

// forgeStartupWhileHolding arms b: the first command sent while the TPM
// holds at least min sessions is answered TPM_RC_INITIALIZE without being
// passed on, and provd's TPM2_Startup(CLEAR) after it is answered success
// without being passed on (neither answer has an HMAC). The TPM was never
// reset: every session stays loaded. It reports whether it fired.
func forgeStartupWhileHolding(b *swtpmtest.Bus, min int) *bool {
	fired, startup := new(bool), false
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		cc := swtpmtest.CommandCode(cmd)
		if cc == tpm2.TPMCCStartup && *fired && !startup {
			startup = true
			return swtpmtest.ErrorAnswer(tpm2.TPMRCSuccess), nil, true
		}
		if *fired || cc == tpm2.TPMCCStartup || cc == tpm2.TPMCCGetCapability {
			return nil, nil, false
		}
		if loadedSessions(next) < min {
			return nil, nil, false
		}
		*fired = true
		return swtpmtest.ErrorAnswer(tpm2.TPMRCInitialize), nil, true
	})
	return fired
}

// tpm.liveSessions says it "errs towards counting a session that is gone,
// never towards missing one that is loaded", and the spare slot of
// counting.roomForSession covers one session it misses (a dropped flush).
// But a Startup answered success empties it (counting.startup:
// clear(c.live)), and that answer is the bus's: A1 answers one command
// TPM_RC_INITIALIZE and provd's TPM2_Startup success, neither passed on,
// and every session the connection holds at that moment leaves the count
// while the TPM keeps it. The shared session is then kept beside more
// sessions than the TPM's (and /dev/tpmrm0's) three. What must hold, as
// after one dropped flush (TestDroppedSessionFlushNeedsNoFourthSession):
// no operation meets the session limit after this one A1 act (dup import,
// which holds three of its own, is run without A1).
func TestForgedStartupNeedsNoFourthSession(t *testing.T) {
	t.Parallel()
	A, B := limitedPair(t) // a forged reset makes provd forget what it held
	everyOperation(t, A.a, B.a, B.env, func(onB bool, name string, fn func() error) {
		t.Helper()
		l, bus, env := A.l, A.bus, A.env
		if onB {
			l, bus, env = B.l, B.bus, B.env
		}
		if name == "dup import (B)" {
			if err := fn(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			l.Take()
			return
		}
		fired := forgeStartupWhileHolding(bus, 2)
		err := fn()
		bus.Set(nil)
		refused, cmds := l.Take()
		t.Logf("%s: forged reset %v; %v", name, *fired, err)
		if refused > 0 {
			t.Errorf("%s: after one forged TPM2_Startup success, %d refusals for want of a session slot: %v (%v)", name, refused, err, cmds)
		}
		// What provd forgot: flushed by hand, so that the next operation
		// starts as the others.
		if left, lerr := env.TPM.Leftovers(); lerr == nil {
			for _, h := range left {
				if h>>24 == 0x02 || h>>24 == 0x03 {
					_ = env.TPM.Flush(h)
				}
			}
		}
	})
}
