package tpm_test

// An operation's shared audit session (tpm.TPM.Share) where its use is
// unusual: nested, inside a command's own session start, through a panic,
// Close, a forged TPM reset or a migration; from its second review.

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// peakSessions records, after every command, how many sessions the TPM
// holds loaded (asked on the TPM's side of the bus), and the most.
type peakSessions struct {
	mu   sync.Mutex
	most int
}

func (p *peakSessions) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	rsp, err := next.Send(cmd)
	if c, cerr := (tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: 0x02000000, PropertyCount: 64}).Execute(next); cerr == nil {
		if hs, herr := c.CapabilityData.Data.Handles(); herr == nil {
			p.mu.Lock()
			p.most = max(p.most, len(hs.Handle))
			p.mu.Unlock()
		}
	}
	return rsp, err, true
}

// A go-tpm just-in-time session (tpm2.HMAC as the parent's authorization)
// starts inside the Execute of a Load that carries the shared session: the
// StartAuthSession comes while the shared session is in the command
// (inUse), and does not give it up; the load works, two sessions at most
// (as with the encrypting session of before), and the shared session goes
// on for the next read.
func TestShareJITSessionInsideALoad(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	srk, blob, _ := pinnedGateBlob(t, tp)
	peak := &peakSessions{}
	log := &sessionLog{}
	err := tp.Share(func() error {
		bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
			log.hook(next, cmd)
			return peak.hook(next, cmd)
		})
		if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
			return err
		}
		obj, err := tp.Load(srk, tpm2.HMAC(tpm2.TPMAlgSHA256, 16), blob)
		if err != nil {
			return err
		}
		if err := tp.Flush(obj.Handle); err != nil {
			return err
		}
		_, err = tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7})
		return err
	})
	bus.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	if peak.most > 2 {
		t.Errorf("%d sessions loaded at once, want 2", peak.most)
	}
	reads := log.sessionsOf(tpm2.TPMCCPCRRead)
	loads := log.sessionsOf(tpm2.TPMCCLoad)
	if len(reads) != 2 || reads[0] != reads[1] || len(loads) != 1 || loads[0] != reads[0] {
		t.Errorf("reads named %v, the load %v: want one shared session throughout", reads, loads)
	}
	if n := log.count(tpm2.TPMCCStartAuthSession); n != 2 {
		t.Errorf("%d StartAuthSession, want 2 (the shared one, the JIT one)", n)
	}
}

// A read nested in another (a PCR read inside WithAuthenticatedNV's fn)
// takes a session of its own beside the shared one, which is in use and
// is not given up: two sessions, as before sharing.
func TestShareNestedReadTakesItsOwn(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	pinnedGateBlob(t, tp)
	peak := &peakSessions{}
	bus.Set(peak.hook)
	err := tp.Share(func() error {
		return tp.WithAuthenticatedNV(func(r *tpm.AuthenticatedNV) error {
			x, err := r.ReadPublic(tpm.EKCertIndices[0].Handle)
			if err != nil {
				return err
			}
			if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
				return err
			}
			_, err = r.Read(x, 16) // the shared session still works
			return err
		})
	})
	bus.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	if peak.most != 2 {
		t.Errorf("%d sessions loaded at once, want 2", peak.most)
	}
}

// A panic in a shared read unwinds through Share: the session is flushed,
// t.share is cleared (the next Share starts afresh), nothing is left.
func TestSharePanicInARead(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	pinnedGateBlob(t, tp)
	func() {
		defer func() { _ = recover() }()
		_ = tp.Share(func() error {
			return tp.WithAuthenticatedNV(func(*tpm.AuthenticatedNV) error { panic("bug") })
		})
	}()
	nothingLeft(t, tp, "after a panic in a shared read")
	if err := tp.Share(func() error {
		_, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7})
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// Close inside a Share: the deferred flush sees the connection closed
// (the probe moves the generation), forgets the session and dials nothing
// (no 3 s redial window, no connection held open after Close).
func TestShareCloseInside(t *testing.T) {
	env := swtpmtest.Start(t)
	env.NoLeakCheck() // closed inside the test
	tp := env.TPM
	pinnedGateBlob(t, tp)
	var closedAt time.Time
	_ = tp.Share(func() error {
		if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
			return err
		}
		closedAt = time.Now()
		return tp.Close()
	})
	if d := time.Since(closedAt); d > 500*time.Millisecond {
		t.Errorf("Share took %v after Close (a redial?)", d)
	}
	env.TPM = nil
}

// A1 moves the generation in the middle of a Share without a reset: it
// answers a PCR_Read with TPM_RC_INITIALIZE (dropping it) and provd's
// Startup(CLEAR) with success; the read is sent again and answered. The
// shared session, still loaded, answers for itself in the next read's
// check and is flushed: nothing is left.
func TestShareForgedInitialize(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	pinnedGateBlob(t, tp)
	forged := 0
	err := tp.Share(func() error {
		if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
			return err
		}
		tp.NeedsSweep()
		bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
			switch swtpmtest.CommandCode(cmd) {
			case tpm2.TPMCCPCRRead:
				if forged == 0 {
					forged++
					return swtpmtest.ErrorAnswer(tpm2.TPMRCInitialize), nil, true
				}
			case tpm2.TPMCCStartup:
				forged++
				return swtpmtest.ErrorAnswer(tpm2.TPMRCSuccess), nil, true
			}
			return nil, nil, false
		})
		_, err := tp.PCRRead(tpm2.TPMAlgSHA256, []int{0})
		bus.Set(nil)
		if err != nil {
			return err
		}
		// The next shared read: a new session, the old one forgotten.
		_, err = tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if forged != 2 {
		t.Fatalf("forged %d answers, want 2", forged)
	}
	nothingLeft(t, tp, "after the Share")
}

// threeSessions starts three HMAC sessions on tp and flushes them; the
// error names the one the TPM refused.
func threeSessions(tp *tpm.TPM) error {
	var closers []func() error
	defer func() {
		for _, c := range closers {
			_ = c()
		}
	}()
	for i := range 3 {
		_, c, err := tpm2.HMACSession(tp, tpm2.TPMAlgSHA256, 16)
		if err != nil {
			return fmt.Errorf("session %d of 3: %w", i+1, err)
		}
		closers = append(closers, c)
	}
	return nil
}

// A migration (the VM's TPM moved: the connection breaks, the TPM keeps
// its loaded sessions) after a shared read: the generation moves, and the
// shared session, still loaded, answers for itself (a GetRandom in it) and
// is flushed, so the operation's next steps have their three slots, as
// without sharing (found by review: forgotten, it held a slot until the
// sweep, and a step that needs three sessions failed). Nothing is left.
func TestShareAfterMigrationFlushesItsSession(t *testing.T) {
	for _, shared := range []bool{false, true} {
		t.Run(fmt.Sprintf("shared=%v", shared), func(t *testing.T) {
			env := swtpmtest.Start(t)
			tp := env.TPM
			pinnedGateBlob(t, tp)
			op := func() error {
				if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
					return err
				}
				env.Migrate()
				return threeSessions(tp)
			}
			var err error
			if shared {
				err = tp.Share(op)
			} else {
				err = op()
			}
			if err != nil {
				t.Errorf("an operation that needs three sessions after a migration: %v", err)
			}
			nothingLeft(t, tp, "after the operation")
		})
	}
}
