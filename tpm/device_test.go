package tpm_test

// A TPM character device whose connection the kernel's resource manager
// broke (EFAULT on every command: measured in the VM test bed after another
// process flushed the daemon's saved session) is opened again, with
// nothing of the old space used or flushed by its number.

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// brokenSpace is a swtpm connection standing for /dev/tpmrm0 whose space
// the kernel broke: once armed, every command fails EFAULT, as the kernel
// fails them, until the device is opened again (a new connection). It
// records the commands that reached the TPM.
type brokenSpace struct {
	addr   string
	mu     sync.Mutex
	armed  bool
	opens  int
	cmds   []tpm2.TPMCC
	flushd []uint32
}

func (b *brokenSpace) open(string) (transport.TPMCloser, error) {
	c, err := net.Dial("tcp", b.addr)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.opens++
	b.mu.Unlock()
	return &spaceConn{b: b, rw: transport.FromReadWriteCloser(c)}, nil
}

type spaceConn struct {
	b    *brokenSpace
	rw   transport.TPMCloser
	dead bool
}

func (s *spaceConn) Send(cmd []byte) ([]byte, error) {
	s.b.mu.Lock()
	if s.b.armed {
		s.b.armed, s.dead = false, true
	}
	dead := s.dead
	if !dead {
		cc := swtpmtest.CommandCode(cmd)
		s.b.cmds = append(s.b.cmds, cc)
		if cc == tpm2.TPMCCFlushContext && len(cmd) >= 14 {
			s.b.flushd = append(s.b.flushd, uint32(cmd[10])<<24|uint32(cmd[11])<<16|uint32(cmd[12])<<8|uint32(cmd[13]))
		}
	}
	s.b.mu.Unlock()
	if dead {
		return nil, &net.OpError{Op: "write", Err: fmt.Errorf("write /dev/tpmrm0: %w", syscall.EFAULT)}
	}
	return s.rw.Send(cmd)
}

func (s *spaceConn) Close() error { return s.rw.Close() }

// After EFAULT the command fails (whether the TPM ran it is not known), the
// generation moves, and the next command opens the device again and works;
// a session started before is not flushed by its number (behind the
// resource manager it went with the old space, and its number, which the
// manager does not virtualize, may be another connection's), and
// ForgetsStale says so for its generation. Other errors close nothing.
func TestDeviceOpenedAgainAfterEFAULT(t *testing.T) {
	env := swtpmtest.Start(t)
	env.NoLeakCheck() // the old "space"'s session stays in swtpm, which has no resource manager to flush it
	env.CloseTPM()    // swtpm serves one connection at a time
	b := &brokenSpace{addr: env.Addr}
	tp, err := tpm.OpenDeviceWith("/dev/tpmrm0", b.open, true)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	if tp.Exclusive() {
		t.Fatal("a resource manager's channel taken for exclusive")
	}
	ps, err := tp.StartAuthPolicySession(nil)
	if err != nil {
		t.Fatal(err)
	}
	old, gen := ps.Handle(), tp.Generation()
	b.mu.Lock()
	b.armed = true
	b.mu.Unlock()
	_, err = tp.PCRUpdateCounter()
	if !errors.Is(err, syscall.EFAULT) || !strings.Contains(err.Error(), "opens it again") {
		t.Fatalf("the command in the broken space: %v", err)
	}
	if tp.Generation() == gen {
		t.Error("the generation did not move when the device was closed")
	}
	if !tp.ForgetsStale(gen) {
		t.Error("ForgetsStale false for a handle of the old space")
	}
	if _, err := tp.PCRUpdateCounter(); err != nil {
		t.Fatalf("the next command, the device opened again: %v", err)
	}
	if err := ps.Close(); err != nil {
		t.Errorf("closing the old space's session: %v", err)
	}
	b.mu.Lock()
	opens, flushed := b.opens, b.flushd
	b.mu.Unlock()
	if opens != 2 {
		t.Errorf("the device was opened %d times, want 2", opens)
	}
	for _, h := range flushed {
		if h == uint32(old) {
			t.Errorf("the old space's session 0x%08x was flushed by its number on the new connection", h)
		}
	}
	// A session started in the new space is flushed as usual.
	ps2, err := tp.StartAuthPolicySession(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ps2.Close(); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	flushed = b.flushd
	b.mu.Unlock()
	if len(flushed) == 0 || flushed[len(flushed)-1] != uint32(ps2.Handle()) {
		t.Errorf("the new space's session was not flushed: %x", flushed)
	}
	// The old session, left in swtpm by the stand-in, is flushed here.
	if err := tp.Flush(old); err != nil {
		t.Fatal(err)
	}
}
