package audit

import (
	"crypto/sha256"
	"errors"
	"sync"
)

// Anchor is where the chain head is extended so that truncation is detectable.
// The tpm package implements it with an NV extend index (TPM_NT_EXTEND):
// value' = SHA-256(value || data), starting from 32 zero bytes.
//
// The log file alone can only show that lines were changed in the middle: whoever
// can write the file can also cut its tail or rewrite it from any point on with
// a consistent chain. The anchor lives where that writer cannot reach, and can
// only move forward, so it pins the chain's full length and content.
//
// After an Extend that fails, Log reads the anchor to learn whether it moved
// (Log.extendAgain): Read must be as trustworthy as the anchor itself.
type Anchor interface {
	Extend(head []byte) error
	Read() ([]byte, error) // current anchor value; ErrAnchorEmpty before the first extend
}

// Preparer is an Anchor whose extend needs fallible work first (loading a
// key, starting a policy session). Log calls Prepare with the head of the
// line it is about to write, before it writes it, so that a failure there
// leaves no line the anchor does not cover; extend then does only the
// extend with that head (a TPM anchor's session is bound to it), and
// release (called on every path after Prepare succeeded) frees what Prepare
// took. After a failed extend, release returns nil only when the prepared
// extend can no longer be made: Log then may prepare and make it again.
type Preparer interface {
	Prepare(head []byte) (extend func() error, release func() error, err error)
}

// ReadPreparer is a Preparer that reads its value and prepares its next
// extend in one step, for less than Read and Prepare apart (a TPM anchor:
// one session for both). Log.Append uses it when it must read the anchor
// before it writes: value is Read's (nil before the first extend), and
// extend and release are Prepare's, release called on every path after
// ReadPrepare succeeded.
type ReadPreparer interface {
	Preparer
	ReadPrepare(head []byte) (value []byte, extend func() error, release func() error, err error)
}

// ErrAnchorEmpty is returned by Anchor.Read before the first Extend (for a TPM
// NV index: not yet written, TPM_RC_NV_UNINITIALIZED).
var ErrAnchorEmpty = errors.New("audit: anchor never extended")

// MemoryAnchor is a software Anchor with the same chaining as the TPM NV
// extend index. It protects nothing (it lives in the attacker's memory); it
// exists for tests and for tooling that replays a chain. Safe for concurrent use.
type MemoryAnchor struct {
	mu    sync.Mutex
	value []byte
}

var _ Anchor = (*MemoryAnchor)(nil)

// Extend sets value = SHA-256(value || head), value starting at 32 zero bytes.
func (a *MemoryAnchor) Extend(head []byte) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.value == nil {
		a.value = make([]byte, sha256.Size)
	}
	a.value = extend(a.value, head)
	return nil
}

// Read returns a copy of the current value, or ErrAnchorEmpty.
func (a *MemoryAnchor) Read() ([]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.value == nil {
		return nil, ErrAnchorEmpty
	}
	return append([]byte(nil), a.value...), nil
}

func extend(value, head []byte) []byte {
	h := sha256.New()
	h.Write(value)
	h.Write(head)
	return h.Sum(nil)
}

// ExpectedAnchor replays the extend chain over heads: the value an Anchor
// holds after Extend(heads[0]), ..., Extend(heads[len-1]). For no heads it is
// 32 zero bytes (the value an extend index would start from).
func ExpectedAnchor(heads [][]byte) []byte {
	v := make([]byte, sha256.Size)
	for _, h := range heads {
		v = extend(v, h)
	}
	return v
}
