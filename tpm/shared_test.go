package tpm_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// sessionLog records, behind a swtpmtest.Bus, the command codes sent and
// the sessions each command names.
type sessionLog struct {
	mu       sync.Mutex
	codes    []tpm2.TPMCC
	sessions [][]tpm2.TPMHandle
}

func (l *sessionLog) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	l.mu.Lock()
	l.codes = append(l.codes, swtpmtest.CommandCode(cmd))
	l.sessions = append(l.sessions, commandSessions(cmd))
	l.mu.Unlock()
	return nil, nil, false
}

func (l *sessionLog) count(cc tpm2.TPMCC) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return swtpmtest.Count(l.codes, cc)
}

// sessionsOf is the sessions each command cc named, in order.
func (l *sessionLog) sessionsOf(cc tpm2.TPMCC) [][]tpm2.TPMHandle {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out [][]tpm2.TPMHandle
	for i, c := range l.codes {
		if c == cc {
			out = append(out, l.sessions[i])
		}
	}
	return out
}

// commandSessions is the session handles in cmd's authorization area.
func commandSessions(cmd []byte) []tpm2.TPMHandle {
	if tpm2.TPMISTCommandTag(binary.BigEndian.Uint16(cmd[0:2])) != tpm2.TPMSTSessions {
		return nil
	}
	nh := map[tpm2.TPMCC]int{tpm2.TPMCCLoad: 1, tpm2.TPMCCNVRead: 2, tpm2.TPMCCPCRRead: 0}[swtpmtest.CommandCode(cmd)]
	off := 10 + 4*nh
	size := int(binary.BigEndian.Uint32(cmd[off : off+4]))
	area := cmd[off+4 : off+4+size]
	var out []tpm2.TPMHandle
	for len(area) >= 4 {
		out = append(out, tpm2.TPMHandle(binary.BigEndian.Uint32(area)))
		nonce := int(binary.BigEndian.Uint16(area[4:6]))
		rest := area[6+nonce+1:]
		hmac := int(binary.BigEndian.Uint16(rest))
		area = rest[2+hmac:]
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
		for _, s := range log.sessionsOf(cc) {
			used = append(used, s[len(s)-1])
		}
	}
	if len(used) != 4 {
		t.Fatalf("the reads and the load named sessions %v, want 4 of them", used)
	}
	for _, h := range used {
		if h != used[0] || h>>24 != 0x02 {
			t.Fatalf("the reads and the load named sessions %v, want one", used)
		}
	}
	if left, err := tp.Leftovers(); err != nil || len(left) != 0 {
		t.Fatalf("after Share: %v left (%v)", left, err)
	}
}

// A1 cannot answer a read in the shared session with an earlier answer of
// that session: the TPM's nonce and provd's move with every command, so a
// replayed answer (the PCR's value before an extend) fails its HMAC. The
// session, out of step with the TPM's now, is flushed on the failure, and
// the next read starts a new one and gets the TPM's value.
func TestShareRefusesAReplayedAnswer(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	pinnedGateBlob(t, tp)
	var first []byte
	replay := false
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCPCRRead {
			return nil, nil, false
		}
		if replay && first != nil {
			// The TPM runs the read (its nonce moves), and A1 answers
			// with the first read's answer.
			replay = false
			if _, err := next.Send(cmd); err != nil {
				return nil, err, true
			}
			return bytes.Clone(first), nil, true
		}
		rsp, err := next.Send(cmd)
		if first == nil {
			first = bytes.Clone(rsp)
		}
		return rsp, err, true
	})
	log := &sessionLog{}
	err := tp.Share(func() error {
		before, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{16})
		if err != nil {
			return err
		}
		if err := tp.PCRExtend(16, tpm2.TPMAlgSHA256, bytes.Repeat([]byte{1}, 32)); err != nil {
			return err
		}
		replay = true
		if v, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{16}); !errors.Is(err, tpm.ErrResponseForged) {
			t.Errorf("a replayed answer: %x, %v; want ErrResponseForged", v[16], err)
		}
		bus.Set(log.hook)
		after, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{16})
		if err != nil {
			return err
		}
		if bytes.Equal(after[16], before[16]) {
			t.Errorf("PCR 16 read %x after the extend, its value before", after[16])
		}
		return nil
	})
	bus.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := log.count(tpm2.TPMCCStartAuthSession); n != 1 {
		t.Errorf("the read after the failure sent %d StartAuthSession, want 1 (a new session)", n)
	}
	if left, err := tp.Leftovers(); err != nil || len(left) != 0 {
		t.Fatalf("after Share: %v left (%v)", left, err)
	}
}

// Sharing holds no slot another session needs: with the shared session
// started, each other StartAuthSession has it flushed first, so three
// sessions beside it start with no refusal for want of a slot (behind
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
	if left, err := tp.Leftovers(); err != nil || len(left) != 0 {
		t.Fatalf("after Share: %v left (%v)", left, err)
	}
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
