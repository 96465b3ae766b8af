package swtpmtest

import (
	"encoding/binary"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Hook sees a command on its way to the TPM (next); handled true means it
// answered the command itself (forged, dropped, or sent on and changed).
type Hook func(next transport.TPM, cmd []byte) (rsp []byte, err error, handled bool)

// Bus is an interposer between provd and the TPM, for tests that play the
// bus attacker (A1): its hook, when set, sees every command.
type Bus struct {
	// Next is the TPM's side of the channel.
	Next transport.TPM
	mu   sync.Mutex
	hook Hook
}

// WithBus puts b between provd and the TPM (WithWrap).
func WithBus(b *Bus) Option {
	return WithWrap(func(next transport.TPM) transport.TPM { b.Next = next; return b })
}

// Send passes cmd to the hook, then to the TPM unless the hook handled it.
func (b *Bus) Send(cmd []byte) ([]byte, error) {
	b.mu.Lock()
	h := b.hook
	b.mu.Unlock()
	if h != nil {
		if rsp, err, ok := h(b.Next, cmd); ok {
			return rsp, err
		}
	}
	return b.Next.Send(cmd)
}

// Set replaces the hook (nil: every command passes).
func (b *Bus) Set(h Hook) {
	b.mu.Lock()
	b.hook = h
	b.mu.Unlock()
}

// CommandCode is the command code of cmd, a TPM command of at least its
// 10-byte header.
func CommandCode(cmd []byte) tpm2.TPMCC { return tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) }
