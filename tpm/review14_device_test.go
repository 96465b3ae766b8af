package tpm_test

// Review 14: attacks on the device's opening again after EFAULT (commit
// e948092, tpm.deviceTransport, TPM.reopenedSince). The stand-in here
// (r14Space, also TestDeviceOpenedAgainAfterEFAULT's) is a swtpm connection
// that fails EFAULT once armed, made closer to the kernel's resource
// manager where a test says so: a connection's own transient objects and sessions are flushed
// when it is closed (as the kernel flushes a space at close), and another
// connection (A2) can start a session on the TPM right after the daemon's
// device is opened again, at the number the daemon's old session had
// (session handles are not virtualized by /dev/tpmrm0).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// r14Space is a swtpm connection standing for a TPM character device.
type r14Space struct {
	addr string
	// kernelFlush: a connection's own handles are flushed at its close
	// (/dev/tpmrm0); false: they stay in the TPM (/dev/tpm0).
	kernelFlush bool

	mu      sync.Mutex
	armed   bool
	armCC   tpm2.TPMCC   // the command the kernel fails first (0: the next)
	armIn   int          // >0: the kernel fails the armIn-th command from now
	failed  []tpm2.TPMCC // the commands the kernel failed
	stale   []string     // commands that named a transient handle of an old space
	opens   int
	closes  int
	failErr error // the next open fails with it (once)
	// onOpen runs on each connection after the first, before provd's
	// first command on it: A2's own commands (raw: the TPM).
	onOpen func(raw transport.TPM)
	cur    *r14Conn
	log    []r14Cmd
}

type r14Cmd struct {
	conn int
	cmd  []byte
}

type r14Conn struct {
	s    *r14Space
	id   int
	rw   transport.TPMCloser
	dead bool
	own  map[uint32]bool
}

func (s *r14Space) open(string) (transport.TPMCloser, error) {
	s.mu.Lock()
	if err := s.failErr; err != nil {
		s.failErr = nil
		s.mu.Unlock()
		return nil, err
	}
	s.mu.Unlock()
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.opens++
	conn := &r14Conn{s: s, id: s.opens, rw: transport.FromReadWriteCloser(c), own: map[uint32]bool{}}
	s.cur = conn
	on := s.onOpen
	s.mu.Unlock()
	if conn.id > 1 && on != nil {
		on(conn.rw)
	}
	return conn, nil
}

func (s *r14Space) arm(cc tpm2.TPMCC) {
	s.mu.Lock()
	s.armed, s.armCC = true, cc
	s.mu.Unlock()
}

// makesHandle: the commands whose answer's first handle is a new
// transient object or session of the connection's.
func makesHandle(cc tpm2.TPMCC) bool {
	switch cc {
	case tpm2.TPMCCStartAuthSession, tpm2.TPMCCLoad, tpm2.TPMCCLoadExternal, tpm2.TPMCCCreatePrimary,
		tpm2.TPMCCContextLoad, tpm2.TPMCCCreateLoaded, tpm2.TPMCCHMACStart, tpm2.TPMCCHashSequenceStart:
		return true
	}
	return false
}

func (c *r14Conn) Send(cmd []byte) ([]byte, error) {
	cc := swtpmtest.CommandCode(cmd)
	c.s.mu.Lock()
	if c.s.armed && (c.s.armCC == 0 || c.s.armCC == cc) {
		c.s.armed, c.dead = false, true
	}
	if c.s.armIn > 0 {
		c.s.armIn--
		if c.s.armIn == 0 {
			c.dead = true
		}
	}
	dead := c.dead
	if dead {
		c.s.failed = append(c.s.failed, cc)
	}
	// The kernel maps a transient handle of the connection's own space
	// only: one made on an earlier connection (the old space) is stale
	// (the kernel fails the write EINVAL, or maps the number to another
	// object of the new space). ReadPublic is the cache's own recheck,
	// which expects that.
	if !dead && c.id > 1 && cc != tpm2.TPMCCReadPublic && len(cmd) >= 14 {
		if h := binary.BigEndian.Uint32(cmd[10:14]); h>>24 == 0x80 && !c.own[h] {
			c.s.stale = append(c.s.stale, fmt.Sprintf("%v(0x%08x) on connection %d", cc, h, c.id))
		}
	}
	if !dead {
		c.s.log = append(c.s.log, r14Cmd{conn: c.id, cmd: bytes.Clone(cmd)})
	}
	c.s.mu.Unlock()
	if dead {
		return nil, &net.OpError{Op: "write", Err: fmt.Errorf("write /dev/tpmrm0: %w", syscall.EFAULT)}
	}
	rsp, err := c.rw.Send(cmd)
	if err == nil && len(rsp) >= 14 && binary.BigEndian.Uint32(rsp[6:10]) == 0 {
		c.s.mu.Lock()
		if makesHandle(cc) {
			c.own[binary.BigEndian.Uint32(rsp[10:14])] = true
		}
		if cc == tpm2.TPMCCFlushContext && len(cmd) >= 14 {
			delete(c.own, binary.BigEndian.Uint32(cmd[10:14]))
		}
		c.s.mu.Unlock()
	}
	return rsp, err
}

func (c *r14Conn) Close() error {
	c.s.mu.Lock()
	c.s.closes++
	own := c.own
	c.own = map[uint32]bool{}
	c.s.mu.Unlock()
	if c.s.kernelFlush {
		for h := range own {
			_, _ = (tpm2.FlushContext{FlushHandle: tpm2.TPMHandle(h)}).Execute(c.rw)
		}
	}
	return c.rw.Close()
}

// named reports the commands sent on connections after the first that
// name h anywhere after their header (handle area or sessions).
func (s *r14Space) named(h tpm2.TPMHandle) []tpm2.TPMCC {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(h))
	var got []tpm2.TPMCC
	for _, c := range s.log {
		if c.conn > 1 && len(c.cmd) > 10 && bytes.Contains(c.cmd[10:], b[:]) {
			got = append(got, swtpmtest.CommandCode(c.cmd))
		}
	}
	return got
}

// a2Session is A2's HMAC session, started on raw, unsalted and unbound.
func a2Session(raw transport.TPM) (tpm2.TPMHandle, error) {
	return a2SessionOf(raw, tpm2.TPMSEHMAC)
}

func a2SessionOf(raw transport.TPM, se tpm2.TPMSE) (tpm2.TPMHandle, error) {
	rsp, err := (tpm2.StartAuthSession{
		TPMKey:      tpm2.TPMRHNull,
		Bind:        tpm2.TPMRHNull,
		NonceCaller: tpm2.TPM2BNonce{Buffer: make([]byte, 16)},
		SessionType: se,
		Symmetric:   tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull},
		AuthHash:    tpm2.TPMAlgSHA256,
	}).Execute(raw)
	if err != nil {
		return 0, err
	}
	// Between A2's commands the kernel keeps its session saved, not
	// loaded: it holds none of the TPM's loaded session slots.
	saved, err := (tpm2.ContextSave{SaveHandle: rsp.SessionHandle}).Execute(raw)
	if err != nil {
		return 0, err
	}
	a2Saved.Store(rsp.SessionHandle, saved.Context)
	return rsp.SessionHandle, nil
}

// a2Saved holds A2's sessions' saved contexts, by handle.
var a2Saved sync.Map

// a2Alive reports whether A2's session h is still the TPM's: its saved
// context loads (a flushed session's does not), on raw; it is saved again.
func a2Alive(raw transport.TPM, h tpm2.TPMHandle) bool {
	v, ok := a2Saved.Load(h)
	if !ok {
		return false
	}
	if _, err := (tpm2.ContextLoad{Context: v.(tpm2.TPMSContext)}).Execute(raw); err != nil {
		return false
	}
	saved, err := (tpm2.ContextSave{SaveHandle: h}).Execute(raw)
	if err == nil {
		a2Saved.Store(h, saved.Context)
	}
	return true
}

// a2Raw is the stand-in's current connection to the TPM, for A2.
func (s *r14Space) a2Raw() transport.TPM {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur.rw
}

// r14KeptShare is a resource manager's device (the stand-in, kernelFlush)
// whose TPM keeps its shared session between Shares, after a first Share:
// the session kept is kept.
func r14KeptShare(t *testing.T) (*r14Space, *tpm.TPM, tpm2.TPMHandle) {
	t.Helper()
	env := swtpmtest.Start(t)
	env.CloseTPM()
	s := &r14Space{addr: env.Addr, kernelFlush: true}
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

func r14Open(t *testing.T, s *r14Space, path string, rm bool) *tpm.TPM {
	t.Helper()
	tp, err := tpm.OpenDeviceWith(path, s.open, rm)
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
	s.mu.Lock()
	s.onOpen = func(raw transport.TPM) { a2, a2Err = a2Session(raw) }
	s.mu.Unlock()
	s.arm(0)
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
	if got := s.named(kept); len(got) > 0 {
		t.Errorf("the old space's kept session's number 0x%08x, A2's session in the new space, was named by provd's commands %v", uint32(kept), got)
	}
	if !a2Alive(s.a2Raw(), a2) {
		t.Errorf("A2's session 0x%08x was flushed", uint32(a2))
	}
	if err := readShared(tp); err != nil {
		t.Errorf("the second Share after: %v", err)
	}
	_ = tp.KeepShared(false)
	// A2's session is A2's to flush.
	s.mu.Lock()
	raw := s.cur.rw
	s.mu.Unlock()
	_, _ = (tpm2.FlushContext{FlushHandle: a2}).Execute(raw)
}

// Attack (brief 5): a one-shot provd on /dev/tpm0 (no resource manager,
// exclusive) whose device fails a command EFAULT: it is closed and opened
// again, but /dev/tpm0 has no space to flush, so every session provd
// started before is still loaded in the TPM (3 session slots on real
// parts). The closers skip their flush (reopenedSince), which is right (the
// device was closed: another opener may have had it in between), but then
// the sweep must be asked for (NeedsSweep), as every other "forgotten, not
// flushed" path on an exclusive TPM does: otherwise the sessions stay
// loaded with nobody holding them.
// Failed before the mend (review 14).
func TestReview14ExclusiveDeviceReopenAsksForSweep(t *testing.T) {
	env := swtpmtest.Start(t)
	env.NoLeakCheck() // the check is made here, on the test's own TPM
	env.CloseTPM()
	s := &r14Space{addr: env.Addr, kernelFlush: false} // /dev/tpm0: nothing flushed at close
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
	s.arm(0)
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
	s := &r14Space{addr: env.Addr, kernelFlush: true}
	tp := r14Open(t, s, "/dev/tpmrm0", true)
	const n = 20
	for i := range n {
		ps, err := tp.StartAuthPolicySession(nil) // a live session in the space
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		gen := tp.Generation()
		s.arm(0)
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
		s.mu.Lock()
		opens, closes := s.opens, s.closes
		s.mu.Unlock()
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
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opens != s.closes {
		t.Errorf("%d devices opened, %d closed", s.opens, s.closes)
	}
}

// Attack (brief 3, 6): the device cannot be opened again (ENODEV: the TPM
// went away; EBUSY). The command fails as ErrNoTPM, nothing panics, the next
// command tries again and works, and Close with no device open is clean.
func TestReview14ReopenFailsThenRecovers(t *testing.T) {
	env := swtpmtest.Start(t)
	env.CloseTPM()
	s := &r14Space{addr: env.Addr, kernelFlush: true}
	tp := r14Open(t, s, "/dev/tpmrm0", true)
	s.arm(0)
	if _, err := tp.PCRUpdateCounter(); !errors.Is(err, syscall.EFAULT) {
		t.Fatalf("the command in the broken space: %v", err)
	}
	for _, e := range []error{syscall.ENODEV, syscall.EBUSY} {
		s.mu.Lock()
		s.failErr = e
		s.mu.Unlock()
		if _, err := tp.PCRUpdateCounter(); !errors.Is(err, tpm.ErrNoTPM) {
			t.Errorf("the command when the device cannot be opened (%v): %v, want ErrNoTPM", e, err)
		}
	}
	if _, err := tp.PCRUpdateCounter(); err != nil {
		t.Fatalf("the command once the device opens again: %v", err)
	}
	s.arm(0)
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
	s.mu.Lock()
	s.onOpen = func(raw transport.TPM) { a2, _ = a2Session(raw) }
	s.mu.Unlock()
	err = tp.Share(func() error {
		if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
			return err
		}
		s.arm(tpm2.TPMCCCreate)
		_, err := tp.Create(srk, nil, tpm.SealTemplate(nil), tpm.Sensitive{Data: []byte("review 14")})
		return err
	})
	if !errors.Is(err, syscall.EFAULT) || errors.Is(err, tpm.ErrResponseForged) {
		t.Errorf("the Share broken mid-way: %v; want EFAULT, not forged", err)
	}
	if err := readShared(tp); err != nil {
		t.Errorf("the next Share: %v", err)
	}
	if a2 != 0 && !a2Alive(s.a2Raw(), a2) {
		t.Errorf("A2's session 0x%08x (the kept one was 0x%08x) was flushed", uint32(a2), uint32(kept))
	}
	_ = tp.KeepShared(false)
	if a2 != 0 {
		s.mu.Lock()
		raw := s.cur.rw
		s.mu.Unlock()
		_, _ = (tpm2.FlushContext{FlushHandle: a2}).Execute(raw)
	}
}

// Attack (brief 2): the daemon (agent with KeepSession: kept op session,
// kept shared session, the PK's saved context, a resident key) on
// /dev/tpmrm0; A2's flush breaks the space at every point of a warm sign in
// turn (the k-th command of the sign fails EFAULT, the device is opened
// again with the old space flushed by the kernel, A2 starting sessions of
// its own right after in the freed slots). Expected: each broken sign
// either fails with the device's error, never as tampered, forged or a
// policy failure, or succeeds afresh in the new space; the next sign
// works; nothing of the old space is used by its number in the new one (a
// transient handle of the old space is, under the kernel, EINVAL or
// another object of the new space); A2's sessions are never flushed; and
// the audit trail verifies at the end.
// Failed before the mend (review 14).
func TestReview14DaemonSignBrokenAtEveryCommand(t *testing.T) {
	env := swtpmtest.Start(t)
	env.CloseTPM()
	s := &r14Space{addr: env.Addr, kernelFlush: true}
	tp := r14Open(t, s, "/dev/tpmrm0", true)
	ctx := context.Background()
	ag, err := agent.New(agent.Config{TPM: tp, StateDir: t.TempDir() + "/state", KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ag.Close() })
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "sig", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("review 14"))
	sign := func() error {
		_, err := ag.Sign(ctx, "sig", digest[:], api.SignOptions{})
		return err
	}
	for range 2 { // warm: everything kept
		if err := sign(); err != nil {
			t.Fatal(err)
		}
	}
	s.mu.Lock()
	before := len(s.log)
	s.mu.Unlock()
	if err := sign(); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	n := len(s.log) - before
	var warm []tpm2.TPMCC
	for _, c := range s.log[before:] {
		warm = append(warm, swtpmtest.CommandCode(c.cmd))
	}
	s.mu.Unlock()
	t.Logf("a warm sign: %v", warm)
	var a2s []tpm2.TPMHandle
	s.mu.Lock()
	s.onOpen = func(raw transport.TPM) {
		for _, se := range []tpm2.TPMSE{tpm2.TPMSEPolicy, tpm2.TPMSEPolicy, tpm2.TPMSEHMAC, tpm2.TPMSEHMAC} {
			if h, err := a2SessionOf(raw, se); err == nil {
				a2s = append(a2s, h)
			}
		}
	}
	s.mu.Unlock()
	for k := 1; k <= n; k++ {
		s.mu.Lock()
		s.armIn = k
		s.mu.Unlock()
		err := sign()
		s.mu.Lock()
		left, failed := s.armIn, s.failed
		s.armIn, s.failed = 0, nil
		s.mu.Unlock()
		t.Logf("k=%d: the kernel failed %v; the sign: %v", k, failed, err)
		switch {
		case left > 0:
			t.Logf("k=%d: the sign took fewer commands", k)
		case err == nil:
		case errors.Is(err, api.ErrTampered) || errors.Is(err, tpm.ErrResponseForged) || errors.Is(err, tpm.ErrPolicyNotSatisfied):
			t.Errorf("k=%d: the broken sign misreported: %v", k, err)
		case !errors.Is(err, syscall.EFAULT):
			t.Errorf("k=%d: the broken sign's error does not name the device's failure: %v", k, err)
		}
		if err := sign(); err != nil {
			t.Errorf("k=%d: the next sign, the device opened again: %v", k, err)
		}
	}
	s.mu.Lock()
	stale := s.stale
	s.mu.Unlock()
	if len(stale) > 0 {
		t.Errorf("transient handles of the old space used in the new one: %v", stale)
	}
	for _, h := range a2s {
		if !a2Alive(s.a2Raw(), h) {
			t.Errorf("A2's session 0x%08x was flushed by provd", uint32(h))
		}
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Errorf("the audit trail after the broken signs: %v", err)
	}
	s.mu.Lock()
	raw := s.cur.rw
	s.mu.Unlock()
	for _, h := range a2s {
		_, _ = (tpm2.FlushContext{FlushHandle: h}).Execute(raw)
	}
}
