package tpm_test

// Review 14: attacks on the device's opening again after EFAULT (commit
// e948092, tpm.deviceTransport, TPM.ReopenedSince). The stand-in is
// swtpmtest.DeviceStandIn: a swtpm connection that fails EFAULT once
// armed, made closer to the kernel's resource manager where a test says so
// (KernelFlush: a connection's own transient objects and sessions are
// flushed when it is closed, as the kernel flushes a space), and another
// connection (A2) can start a session on the TPM right after the daemon's
// device is opened again, at the number the daemon's old session had
// (session handles are not virtualized by /dev/tpmrm0).

import (
	"context"
	"errors"
	"syscall"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// r14KeptShare is a resource manager's device (the stand-in, kernelFlush)
// whose TPM keeps its shared session between Shares, after a first Share:
// the session kept is kept.
func r14KeptShare(t *testing.T) (*swtpmtest.DeviceStandIn, *tpm.TPM, tpm2.TPMHandle) {
	t.Helper()
	env := swtpmtest.Start(t)
	env.CloseTPM()
	s := &swtpmtest.DeviceStandIn{Addr: env.Addr, KernelFlush: true}
	tp := r14Open(t, s, "/dev/tpmrm0", true)
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.PinSRK(srk.Public); err != nil {
		t.Fatal(err)
	}
	if err := tp.KeepShared(true); err != nil {
		t.Fatal(err)
	}
	if err := readShared(tp); err != nil {
		t.Fatal(err)
	}
	return s, tp, tp.SharedHandle()
}

func r14Open(t *testing.T, s *swtpmtest.DeviceStandIn, path string, rm bool) *tpm.TPM {
	t.Helper()
	tp, err := tpm.Open(context.Background(), tpm.Options{Spec: path, ResourceManager: rm, OpenDevice: s.Open})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tp.Close() })
	return tp
}

// Attack (brief 2, 1): the daemon keeps its shared session between Shares
// (KeepShared). A2 flushes it (the kernel then fails the daemon's next
// command EFAULT: the device is opened again, the kernel flushes the old
// space) and at once starts a session of its own, which the TPM gives the
// freed number: the kept session's. The daemon's next Share must work, must
// leave A2's session alone (not flushed), and, as commit e948092 promises
// ("nothing of the old space is used or flushed by its number again"),
// must not send any command naming that number: in the new space it is
// A2's.
// Failed before the mend (review 14).
func TestReview14KeptSharedSessionAfterReopenNotUsedByNumber(t *testing.T) {
	s, tp, kept := r14KeptShare(t)
	var err error
	if kept == 0 {
		t.Fatal("setup: no kept shared session")
	}
	var a2 tpm2.TPMHandle
	var a2Err error
	s.Mu.Lock()
	s.OnOpen = func(raw transport.TPM) { a2, a2Err = swtpmtest.A2Session(raw) }
	s.Mu.Unlock()
	s.Arm(0)
	if _, err := tp.PCRUpdateCounter(); !errors.Is(err, syscall.EFAULT) {
		t.Fatalf("the command in the broken space: %v", err)
	}
	// The next Share (its first command opens the device again; A2 starts
	// its session before it).
	err = readShared(tp)
	if a2Err != nil || a2 != kept {
		t.Fatalf("setup: A2's session 0x%08x (%v), the kept one was 0x%08x", uint32(a2), a2Err, uint32(kept))
	}
	if err != nil {
		t.Errorf("the first Share after the device was opened again: %v", err)
	}
	if got := s.Named(kept); len(got) > 0 {
		t.Errorf("the old space's kept session's number 0x%08x, A2's session in the new space, was named by provd's commands %v", uint32(kept), got)
	}
	if !swtpmtest.A2Alive(s.A2Raw(), a2) {
		t.Errorf("A2's session 0x%08x was flushed", uint32(a2))
	}
	if err := readShared(tp); err != nil {
		t.Errorf("the second Share after: %v", err)
	}
	_ = tp.KeepShared(false)
	// A2's session is A2's to flush.
	raw := s.A2Raw()
	_, _ = (tpm2.FlushContext{FlushHandle: a2}).Execute(raw)
}

// Attack (brief 5): a one-shot provd on /dev/tpm0 (no resource manager,
// exclusive) whose device fails a command EFAULT: it is closed and opened
// again, but /dev/tpm0 has no space to flush, so every session provd
// started before is still loaded in the TPM (3 session slots on real
// parts). The closers skip their flush (ReopenedSince), which is right (the
// device was closed: another opener may have had it in between), but then
// the sweep must be asked for (NeedsSweep), as every other "forgotten, not
// flushed" path on an exclusive TPM does: otherwise the sessions stay
// loaded with nobody holding them.
// Failed before the mend (review 14).
func TestReview14ExclusiveDeviceReopenAsksForSweep(t *testing.T) {
	env := swtpmtest.Start(t)
	env.NoLeakCheck() // the check is made here, on the test's own TPM
	env.CloseTPM()
	s := &swtpmtest.DeviceStandIn{Addr: env.Addr, KernelFlush: false} // /dev/tpm0: nothing flushed at close
	tp := r14Open(t, s, "/dev/tpm0", false)
	if !tp.Exclusive() {
		t.Fatal("setup: /dev/tpm0 not exclusive")
	}
	tp.NeedsSweep() // clear
	ps, err := tp.StartAuthPolicySession(nil)
	if err != nil {
		t.Fatal(err)
	}
	old := ps.Handle()
	s.Arm(0)
	if _, err := tp.PCRUpdateCounter(); !errors.Is(err, syscall.EFAULT) {
		t.Fatalf("the command in the broken device: %v", err)
	}
	if err := ps.Close(); err != nil {
		t.Fatalf("closing the session started before: %v", err)
	}
	// The owner's sweep, as agent.unlock runs it.
	swept := false
	if tp.NeedsSweep() {
		swept = true
		left, err := tp.Leftovers()
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range left {
			if err := tp.Flush(h); err != nil {
				t.Fatal(err)
			}
		}
	}
	left, err := tp.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Errorf("after the reopen on /dev/tpm0 and the session's Close, the TPM still holds %x (the old session 0x%08x), and the sweep was asked for: %v", left, uint32(old), swept)
		for _, h := range left {
			_ = tp.Flush(h)
		}
	}
}

// Attack (brief 3): A2 flushes the daemon's session again and again, and
// each time the kernel breaks the space: every EFAULT closes the old
// device (no file descriptor left open), opens one new one at the next
// command, moves the generation once, and fails only the command in
// flight; the sessions count is the new space's (the room rule is not
// left counting the old space's sessions: three sessions can be started
// at once after twenty reopens). At Close every device opened is closed.
func TestReview14ReopenLoopLeaksNothing(t *testing.T) {
	env := swtpmtest.Start(t)
	env.CloseTPM()
	s := &swtpmtest.DeviceStandIn{Addr: env.Addr, KernelFlush: true}
	tp := r14Open(t, s, "/dev/tpmrm0", true)
	const n = 20
	for i := range n {
		ps, err := tp.StartAuthPolicySession(nil) // a live session in the space
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		gen := tp.Generation()
		s.Arm(0)
		if _, err := tp.PCRUpdateCounter(); !errors.Is(err, syscall.EFAULT) {
			t.Fatalf("round %d: the command in the broken space: %v", i, err)
		}
		if got := tp.Generation(); got != gen+1 {
			t.Errorf("round %d: generation %d -> %d, want one step", i, gen, got)
		}
		if err := ps.Close(); err != nil {
			t.Errorf("round %d: closing the old space's session: %v", i, err)
		}
		if _, err := tp.PCRUpdateCounter(); err != nil {
			t.Fatalf("round %d: the next command: %v", i, err)
		}
		s.Mu.Lock()
		opens, closes := s.Opens, s.Closes
		s.Mu.Unlock()
		if opens != i+2 || closes != i+1 {
			t.Fatalf("round %d: %d opens, %d closes; want %d, %d", i, opens, closes, i+2, i+1)
		}
	}
	var ps []*tpm.PolicySession
	for i := range 3 {
		p, err := tp.StartAuthPolicySession(nil)
		if err != nil {
			t.Fatalf("session %d of 3 after the reopens: %v", i+1, err)
		}
		ps = append(ps, p)
	}
	for _, p := range ps {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	}
	if err := tp.Close(); err != nil {
		t.Fatal(err)
	}
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if s.Opens != s.Closes {
		t.Errorf("%d devices opened, %d closed", s.Opens, s.Closes)
	}
}

// Attack (brief 3, 6): the device cannot be opened again (ENODEV: the TPM
// went away; EBUSY). The command fails as ErrNoTPM, nothing panics, the next
// command tries again and works, and Close with no device open is clean.
func TestReview14ReopenFailsThenRecovers(t *testing.T) {
	env := swtpmtest.Start(t)
	env.CloseTPM()
	s := &swtpmtest.DeviceStandIn{Addr: env.Addr, KernelFlush: true}
	tp := r14Open(t, s, "/dev/tpmrm0", true)
	s.Arm(0)
	if _, err := tp.PCRUpdateCounter(); !errors.Is(err, syscall.EFAULT) {
		t.Fatalf("the command in the broken space: %v", err)
	}
	for _, e := range []error{syscall.ENODEV, syscall.EBUSY} {
		s.Mu.Lock()
		s.FailErr = e
		s.Mu.Unlock()
		if _, err := tp.PCRUpdateCounter(); !errors.Is(err, tpm.ErrNoTPM) {
			t.Errorf("the command when the device cannot be opened (%v): %v, want ErrNoTPM", e, err)
		}
	}
	if _, err := tp.PCRUpdateCounter(); err != nil {
		t.Fatalf("the command once the device opens again: %v", err)
	}
	s.Arm(0)
	_, _ = tp.PCRUpdateCounter()
	if err := tp.Close(); err != nil {
		t.Errorf("Close with the device closed by a failure: %v", err)
	}
}

// Attack (brief 2): the reopen happens in the middle of a Share, the kept
// shared session in use: A2's flush lands between the Share's read and its
// creation (a command the shared session guards). The Share fails with the
// device's error (EFAULT), never as forged or tampered (nothing was
// changed on a bus), and the next Share works in a new session, leaving A2's
// session at the old number alone.
func TestReview14ReopenMidShare(t *testing.T) {
	s, tp, kept := r14KeptShare(t)
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	var a2 tpm2.TPMHandle
	s.Mu.Lock()
	s.OnOpen = func(raw transport.TPM) { a2, _ = swtpmtest.A2Session(raw) }
	s.Mu.Unlock()
	err = tp.Share(func() error {
		if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
			return err
		}
		s.Arm(tpm2.TPMCCCreate)
		_, err := tp.Create(srk, nil, tpm.SealTemplate(nil), tpm.Sensitive{Data: []byte("review 14")})
		return err
	})
	if !errors.Is(err, syscall.EFAULT) || errors.Is(err, tpm.ErrResponseForged) {
		t.Errorf("the Share broken mid-way: %v; want EFAULT, not forged", err)
	}
	if err := readShared(tp); err != nil {
		t.Errorf("the next Share: %v", err)
	}
	if a2 != 0 && !swtpmtest.A2Alive(s.A2Raw(), a2) {
		t.Errorf("A2's session 0x%08x (the kept one was 0x%08x) was flushed", uint32(a2), uint32(kept))
	}
	_ = tp.KeepShared(false)
	if a2 != 0 {
		raw := s.A2Raw()
		_, _ = (tpm2.FlushContext{FlushHandle: a2}).Execute(raw)
	}
}
