package swtpmtest

import (
	"bytes"
	"encoding/binary"
	"slices"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Recorder keeps every byte that crosses the TPM interface, as an interposer
// on the bus would see it. Start(t, WithRecorder(rec)) puts it in place.
type Recorder struct {
	next transport.TPM
	mu   sync.Mutex
	wire bytes.Buffer
	ccs  []tpm2.TPMCC
}

// WithRecorder records the raw channel into rec.
func WithRecorder(rec *Recorder) Option {
	return WithWrap(func(next transport.TPM) transport.TPM {
		rec.next = next
		return rec
	})
}

// Send forwards cmd and records it and the response.
func (r *Recorder) Send(cmd []byte) ([]byte, error) {
	rsp, err := r.next.Send(cmd)
	r.mu.Lock()
	r.wire.Write(cmd)
	r.wire.Write(rsp)
	if len(cmd) >= 10 {
		r.ccs = append(r.ccs, tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])))
	}
	r.mu.Unlock()
	return rsp, err
}

// Len is the number of bytes recorded.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.wire.Len()
}

// Reset forgets what was recorded.
func (r *Recorder) Reset() {
	r.mu.Lock()
	r.wire.Reset()
	r.ccs = nil
	r.mu.Unlock()
}

// Sent reports whether a command with code cc was sent since the last
// Reset.
func (r *Recorder) Sent(cc tpm2.TPMCC) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.ccs, cc)
}

// Leak returns the offset of the first 8-byte window of secret seen on the
// wire, or -1: any such window crossing in plaintext is a leak.
func (r *Recorder) Leak(secret []byte) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := 0; i+8 <= len(secret); i++ {
		if bytes.Contains(r.wire.Bytes(), secret[i:i+8]) {
			return i
		}
	}
	return -1
}
