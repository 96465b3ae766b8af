package agent

import (
	"encoding/binary"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
)

// dropFirstSessionFlush arms b: the first TPM2_FlushContext of a session
// is not passed on and is answered success (A1 drops it; a flush's answer
// has no HMAC), the session staying loaded in the TPM. It reports the
// handle it kept.
func dropFirstSessionFlush(b *swtpmtest.Bus) *tpm2.TPMHandle {
	kept := new(tpm2.TPMHandle)
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if *kept != 0 || swtpmtest.CommandCode(cmd) != tpm2.TPMCCFlushContext || len(cmd) < 14 {
			return nil, nil, false
		}
		h := tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14]))
		if h>>24 != 0x02 && h>>24 != 0x03 {
			return nil, nil, false
		}
		*kept = h
		return swtpmtest.ErrorAnswer(tpm2.TPMRCSuccess), nil, true
	})
	return kept
}

// A1 drops one FlushContext of a session inside an operation and answers
// it success: the session stays loaded (behind /dev/tpmrm0 the kernel keeps
// it in the connection's space: its ContextSave after the command
// succeeds), while tpm.liveSessions takes the flush's success for the
// TPM's word and forgets it. From then on provd under-counts by one and
// keeps the shared audit session beside two sessions of an operation's
// own: a fourth session for the resource manager (the write fails and the
// kernel flushes the connection's every session, the daemon's kept one
// included). Before e018d8a the shared session was given up before any
// other session's start, and one session hidden this way cost nothing.
// What must hold: no operation after the dropped flush meets the session
// limit (swtpmtest.SessionLimit, the kernel's three per connection), as
// before e018d8a (there only dup import, which holds three sessions of its
// own, met it: it runs here without A1). Found failing in 11 of the 17
// operations it arms; it passes with the shared session kept beside at most one
// other (tpm.counting.roomForSession: len(live)+2 <= maxSessions), which
// keeps the seal's and provision's savings.
func TestDroppedSessionFlushNeedsNoFourthSession(t *testing.T) {
	lA, lB := &swtpmtest.SessionLimit{}, &swtpmtest.SessionLimit{}
	bA, bB := &swtpmtest.Bus{}, &swtpmtest.Bus{}
	// The bus above the limit: A1's dropped flush reaches neither.
	envA := swtpmtest.Start(t, swtpmtest.WithWrap(lA.Wrap), swtpmtest.WithBus(bA))
	envB := swtpmtest.Start(t, swtpmtest.WithWrap(lB.Wrap), swtpmtest.WithBus(bB))
	envA.NoLeakCheck() // the session A1 kept is flushed below, by hand
	envB.NoLeakCheck()
	a, b := provisioned(t, envA), provisioned(t, envB)
	lA.Take()
	lB.Take()
	everyOperation(t, a, b, envB, func(onB bool, name string, fn func() error) {
		t.Helper()
		l, bus := lA, bA
		if onB {
			l, bus = lB, bB
		}
		if name == "dup import (B)" {
			// Holds three sessions of its own (its activation's): one
			// hidden session is a fourth there, before e018d8a as after.
			if err := fn(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			l.Take()
			return
		}
		kept := dropFirstSessionFlush(bus)
		err := fn()
		bus.Set(nil)
		refused, cmds := l.Take()
		if *kept != 0 {
			// Whatever provd did after, the kept session is A1's leftover:
			// flushed so that the next operation starts as the others.
			_, _ = (tpm2.FlushContext{FlushHandle: *kept}).Execute(bus.Next)
		}
		t.Logf("%s: flush of 0x%08x dropped; %v", name, uint32(*kept), err)
		if refused > 0 {
			t.Errorf("%s: after one dropped flush, %d refusals for want of a session slot (a fourth session: /dev/tpmrm0 flushes every session of the connection): %v (%v)", name, refused, err, cmds)
		}
	})
}
