package agent

import (
	"testing"

	"github.com/provd/provd/test/swtpmtest"
)

// limitedSide is one of two provisioned TPMs behind
// swtpmtest.SessionLimit (the kernel resource manager's three sessions
// per connection), with A1's bus above the limit.
type limitedSide struct {
	l   *swtpmtest.SessionLimit
	bus *swtpmtest.Bus
	env *swtpmtest.Env
	a   *Agent
}

// limitedPair starts A and B, provisioned, their leak checks off (what A1
// kept is flushed by the tests, by hand), their refusals counted from now.
func limitedPair(t *testing.T) (A, B limitedSide) {
	t.Helper()
	side := func() limitedSide {
		s := limitedSide{l: &swtpmtest.SessionLimit{}, bus: &swtpmtest.Bus{}}
		s.env = swtpmtest.Start(t, swtpmtest.WithWrap(s.l.Wrap), swtpmtest.WithBus(s.bus))
		s.env.NoLeakCheck()
		return s
	}
	A, B = side(), side()
	A.a, B.a = provisioned(t, A.env), provisioned(t, B.env)
	A.l.Take()
	B.l.Take()
	return A, B
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
	t.Parallel()
	A, B := limitedPair(t)
	everyOperation(t, A.a, B.a, B.env, func(onB bool, name string, fn func() error) {
		t.Helper()
		l, bus := A.l, A.bus
		if onB {
			l, bus = B.l, B.bus
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
		refused, cmds, kept, err := swtpmtest.DroppingFirstSessionFlush(bus, l, fn)
		t.Logf("%s: flush of 0x%08x dropped; %v", name, uint32(kept), err)
		if refused > 0 {
			t.Errorf("%s: after one dropped flush, %d refusals for want of a session slot (a fourth session: /dev/tpmrm0 flushes every session of the connection): %v (%v)", name, refused, err, cmds)
		}
	})
}
