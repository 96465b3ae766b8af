package agent_test

import (
	"testing"

	"github.com/provd/provd/test/swtpmtest"
)

// Attestation after one dropped flush, as the review's
// TestDroppedSessionFlushNeedsNoFourthSession does for everyOperation
// (which the threat model cites for "every operation"): A1 drops the
// first session flush of each attestation operation and answers it
// success (a flush's answer has no HMAC), the session staying loaded.
// What must hold: no operation meets the session limit, except those
// that hold three sessions of their own at once, as dup import and peer
// prove do: attest activate (at its ActivateCredential: the EK's policy
// session, the encryption session, the AK's) and attest secret (the EK's
// policy session for the delivered object's load, the object's policy
// session, and the one-use session of its PolicySecret of the AK; measured
// the same with the shared session flushed before every start, as before
// it was kept). There A1's kept session is a fourth: the operation fails
// (a denial A1 on the bus has anyway), and once the session is gone it
// works again.
func TestAttestDroppedSessionFlushNeedsNoFourthSession(t *testing.T) {
	l := &swtpmtest.SessionLimit{}
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(l.Wrap), swtpmtest.WithBus(bus))
	env.NoLeakCheck() // the session A1 kept is flushed below, by hand
	ag := newAgent(t, env, stateDir(t))
	provision(t, ag, 7)
	l.Take()
	fleetFlow(t, env, ag, []byte("psk"), func(name string, fn func() error) {
		t.Helper()
		refused, cmds, kept, err := swtpmtest.DroppingFirstSessionFlush(bus, l, fn)
		t.Logf("%s: flush of 0x%08x dropped; %v", name, uint32(kept), err)
		if (name == "attest activate" || name == "attest secret") && refused > 0 {
			err = fn() // A1's session gone
			if refused, _ = l.Take(); refused > 0 {
				t.Errorf("%s, once A1's session is gone: %d refusals for want of a session slot", name, refused)
			}
		} else if refused > 0 {
			t.Errorf("%s: after one dropped flush, %d refusals for want of a session slot: %v (%v)", name, refused, err, cmds)
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	})
}
