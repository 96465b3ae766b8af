package tpm_test

// A TPM character device whose connection the kernel's resource manager
// broke (EFAULT on every command: measured in the VM test bed after another
// process flushed the daemon's saved session) is opened again, with
// nothing of the old space used or flushed by its number. The stand-in for
// the device is swtpmtest.DeviceStandIn.

import (
	"encoding/binary"
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
)

// After EFAULT the command fails (whether the TPM ran it is not known), the
// generation moves, and the next command opens the device again and works;
// a session started before is not flushed by its number (behind the
// resource manager it went with the old space, and its number, which the
// manager does not virtualize, may be another connection's), and
// ForgetsStale says so for its generation. A session of the new space is
// flushed as usual.
func TestDeviceOpenedAgainAfterEFAULT(t *testing.T) {
	env := swtpmtest.Start(t)
	env.NoLeakCheck() // the stand-in leaves the old "space"'s session in swtpm (kernelFlush false)
	env.CloseTPM()    // swtpm serves one connection at a time
	s := &swtpmtest.DeviceStandIn{Addr: env.Addr}
	tp := r14Open(t, s, "/dev/tpmrm0", true)
	if tp.Exclusive() {
		t.Fatal("a resource manager's channel taken for exclusive")
	}
	ps, err := tp.StartAuthPolicySession(nil)
	if err != nil {
		t.Fatal(err)
	}
	old, gen := ps.Handle(), tp.Generation()
	s.Arm(0)
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
	if got := s.Named(old); len(got) != 0 {
		t.Errorf("the old space's session 0x%08x was named on the new connection: %v", uint32(old), got)
	}
	if s.Opens != 2 {
		t.Errorf("the device was opened %d times, want 2", s.Opens)
	}
	ps2, err := tp.StartAuthPolicySession(nil)
	if err != nil {
		t.Fatal(err)
	}
	h2 := ps2.Handle()
	if err := ps2.Close(); err != nil {
		t.Fatal(err)
	}
	if last := s.Log[len(s.Log)-1].Cmd; swtpmtest.CommandCode(last) != tpm2.TPMCCFlushContext || binary.BigEndian.Uint32(last[10:14]) != uint32(h2) {
		t.Errorf("the new space's session 0x%08x was not flushed", uint32(h2))
	}
	if err := tp.Flush(old); err != nil { // left in swtpm by the stand-in
		t.Fatal(err)
	}
}
