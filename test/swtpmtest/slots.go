package swtpmtest

import (
	"encoding/binary"
	"errors"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// ErrNoSpaceSlot is the device's error SessionLimit answers for a fourth
// session, as Linux's resource manager fails the write.
var ErrNoSpaceSlot = errors.New("tpmrm0: write: cannot allocate memory (the connection's space holds three sessions)")

// SessionLimit stands in front of the TPM for what Linux's resource
// manager (/dev/tpmrm0, drivers/char/tpm/tpm2-space.c) does with sessions:
// a connection's space holds three (session_tbl[3]), and a
// StartAuthSession while it holds three fails the device's write (the
// kernel also flushes the space's every session; this sends nothing). A
// chip with more loaded sessions than the space would make the fourth;
// swtpm, with three, refuses it (TPM_RC_SESSION_MEMORY). It counts both
// refusals, and TPM_RC_OBJECT_MEMORY, and the commands sent (Take). Put
// it under the TPM with WithWrap(l.Wrap).
type SessionLimit struct {
	next     transport.TPM
	mu       sync.Mutex
	refused  int
	commands []tpm2.TPMCC
}

// Wrap puts l in front of next.
func (l *SessionLimit) Wrap(next transport.TPM) transport.TPM { l.next = next; return l }

// Send refuses a fourth session, and passes every other command on.
func (l *SessionLimit) Send(cmd []byte) ([]byte, error) {
	cc := CommandCode(cmd)
	if cc == tpm2.TPMCCStartAuthSession {
		rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: 0x02000000, PropertyCount: 64}).Execute(l.next)
		if err == nil {
			if hs, err := rsp.CapabilityData.Data.Handles(); err == nil && len(hs.Handle) >= 3 {
				l.note(cc, true)
				return nil, ErrNoSpaceSlot
			}
		}
	}
	rsp, err := l.next.Send(cmd)
	refused := false
	if err == nil && len(rsp) >= 10 {
		switch tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10])) {
		case tpm2.TPMRCSessionMemory, tpm2.TPMRCObjectMemory:
			refused = true
		}
	}
	l.note(cc, refused)
	return rsp, err
}

func (l *SessionLimit) note(cc tpm2.TPMCC, refused bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.commands = append(l.commands, cc)
	if refused {
		l.refused++
	}
}

// Take returns the refusals for want of a slot and the commands sent since
// the last Take, and starts counting anew.
func (l *SessionLimit) Take() (refused int, commands []tpm2.TPMCC) {
	l.mu.Lock()
	defer l.mu.Unlock()
	refused, commands = l.refused, l.commands
	l.refused, l.commands = 0, nil
	return refused, commands
}

// DroppingFirstSessionFlush runs fn with the first TPM2_FlushContext of a
// session dropped by A1 on b (DropFirstSessionFlush), l below it, and
// returns l's refusals and commands (Take), the session kept (0: none)
// and fn's error. The kept session, A1's leftover whatever fn did after,
// is flushed past the hook, so that the next run starts as the others.
func DroppingFirstSessionFlush(b *Bus, l *SessionLimit, fn func() error) (refused int, commands []tpm2.TPMCC, kept tpm2.TPMHandle, err error) {
	k := DropFirstSessionFlush(b)
	err = fn()
	b.Set(nil)
	refused, commands = l.Take()
	if kept = *k; kept != 0 {
		_, _ = (tpm2.FlushContext{FlushHandle: kept}).Execute(b.Next)
	}
	return refused, commands, kept, err
}
