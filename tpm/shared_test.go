package tpm_test

import (
	"encoding/binary"
	"fmt"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// sessionLog records, behind a swtpmtest.Bus, the command codes sent and
// the last session of each PCR_Read, Load and NV_Read.
type sessionLog struct {
	mu       sync.Mutex
	codes    []tpm2.TPMCC
	sessions []tpm2.TPMHandle // each command's last session
}

func (l *sessionLog) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	l.mu.Lock()
	l.codes = append(l.codes, swtpmtest.CommandCode(cmd))
	var last tpm2.TPMHandle
	if nh, ok := map[tpm2.TPMCC]int{tpm2.TPMCCPCRRead: 0, tpm2.TPMCCLoad: 1, tpm2.TPMCCNVRead: 2}[swtpmtest.CommandCode(cmd)]; ok {
		last = swtpmtest.LastSession(cmd, nh)
	}
	l.sessions = append(l.sessions, last)
	l.mu.Unlock()
	return nil, nil, false
}

func (l *sessionLog) count(cc tpm2.TPMCC) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return swtpmtest.Count(l.codes, cc)
}

// sessionsOf is the last session each command cc named, in order.
func (l *sessionLog) sessionsOf(cc tpm2.TPMCC) []tpm2.TPMHandle {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []tpm2.TPMHandle
	for i, c := range l.codes {
		if c == cc {
			out = append(out, l.sessions[i])
		}
	}
	return out
}

// An operation's authenticated reads and guarded loads share one audit
// session (issue 14): two PCR reads, a load with no session of the
// parent's and an NV read start one session and flush it once, where
// each started and flushed its own (8 commands more); every command names
// the same session, and nothing is left when Share returns.
func TestShareOneSessionForReadsAndLoads(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	srk, blob, _ := pinnedGateBlob(t, tp)
	log := &sessionLog{}
	bus.Set(log.hook)
	err := tp.Share(func() error {
		if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7, 16}); err != nil {
			return err
		}
		obj, err := tp.Load(srk, nil, blob)
		if err != nil {
			return err
		}
		if err := tp.Flush(obj.Handle); err != nil {
			return err
		}
		if err := tp.WithAuthenticatedNV(func(r *tpm.AuthenticatedNV) error {
			x, err := r.ReadPublic(tpm.EKCertIndices[0].Handle)
			if err != nil {
				return err
			}
			_, err = r.Read(x, 16)
			return err
		}); err != nil {
			return err
		}
		_, err = tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{0})
		return err
	})
	bus.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := log.count(tpm2.TPMCCStartAuthSession); n != 1 {
		t.Errorf("%d StartAuthSession, want 1", n)
	}
	var used []tpm2.TPMHandle
	for _, cc := range []tpm2.TPMCC{tpm2.TPMCCPCRRead, tpm2.TPMCCLoad, tpm2.TPMCCNVRead} {
		used = append(used, log.sessionsOf(cc)...)
	}
	if len(used) != 4 {
		t.Fatalf("the reads and the load named sessions %v, want 4 of them", used)
	}
	for _, h := range used {
		if h != used[0] || h>>24 != 0x02 {
			t.Fatalf("the reads and the load named sessions %v, want one", used)
		}
	}
	nothingLeft(t, tp, "after Share")
}

// Sharing holds no slot another session needs: with the shared session
// started, the StartAuthSession that needs its slot (the third beside it)
// has it flushed first, so three sessions start with no refusal for want
// of a slot (behind
// the kernel's resource manager a fourth session fails the device's write
// and flushes the connection's every session); the next read starts a new
// shared session.
func TestShareGivesUpItsSlot(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	pinnedGateBlob(t, tp)
	var mu sync.Mutex
	loaded, most := 0, 0
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		rsp, err := next.Send(cmd)
		if err != nil || tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10])) != tpm2.TPMRCSuccess {
			return rsp, err, true
		}
		mu.Lock()
		defer mu.Unlock()
		switch swtpmtest.CommandCode(cmd) {
		case tpm2.TPMCCStartAuthSession:
			loaded++
			most = max(most, loaded)
		case tpm2.TPMCCFlushContext:
			if binary.BigEndian.Uint32(cmd[10:14])>>24 == 0x02 {
				loaded--
			}
		}
		return rsp, err, true
	})
	var closers []func() error
	err := tp.Share(func() error {
		if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
			return err
		}
		for i := range 3 {
			_, c, err := tpm2.HMACSession(tp, tpm2.TPMAlgSHA256, 16)
			if err != nil {
				return fmt.Errorf("session %d of 3 beside the shared one: %w", i+1, err)
			}
			closers = append(closers, c)
		}
		for _, c := range closers {
			if err := c(); err != nil {
				return err
			}
		}
		closers = nil
		_, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7})
		return err
	})
	for _, c := range closers {
		c()
	}
	bus.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	if most != 3 {
		t.Errorf("at most %d sessions loaded at once, want 3 (the shared one gave its slot up)", most)
	}
	nothingLeft(t, tp, "after Share")
}

// Someone else flushes the shared session inside its Share (zeroize
// flushes every session it lists, as on a TPM a crashed run left
// sessions in): the next read starts a new one rather than name the
// flushed handle (found by make test: provision --force failed with
// TPM_RC_REFERENCE_S0), and nothing is left.
func TestShareFlushedBySomeoneElse(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	pinnedGateBlob(t, tp)
	err := tp.Share(func() error {
		for range 2 {
			if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
				return err
			}
			left, err := tp.Leftovers()
			if err != nil {
				return err
			}
			if len(left) != 1 {
				return fmt.Errorf("%x loaded, want the shared session alone", left)
			}
			if err := tp.Flush(left[0]); err != nil {
				return err
			}
		}
		_, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7})
		return err
	})
	if err != nil {
		t.Fatalf("a read after the shared session was flushed: %v", err)
	}
	nothingLeft(t, tp, "after Share")
}

// A TPM reset between two reads of one Share: the shared session is gone
// with it, and the second read starts a new one rather than name the dead
// handle (another's by then).
func TestShareAfterTPMReset(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	pinnedGateBlob(t, tp)
	err := tp.Share(func() error {
		if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
			return err
		}
		env.Reset()
		if _, err := tp.PCRRead(tpm2.TPMAlgSHA256, []int{0}); err != nil { // the channel starts the TPM up
			return err
		}
		_, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7})
		return err
	})
	if err != nil {
		t.Fatalf("a read after a reset in the same Share: %v", err)
	}
}

// nothingLeft fails t for every transient object or session tp holds,
// and flushes it (the harness's leak check would fail on it too).
func nothingLeft(t *testing.T, tp *tpm.TPM, when string) {
	t.Helper()
	left, err := tp.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range left {
		t.Errorf("%s: 0x%08x left in the TPM", when, uint32(h))
		_ = tp.Flush(h)
	}
}
