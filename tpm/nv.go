package tpm

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/google/go-tpm/tpm2"
)

// ErrNVUninitialized: an NV index was read (or compared by PolicyNV) before
// its first write (TPM_RC_NV_UNINITIALIZED). For an audit anchor it means the
// anchor was never extended; callers outside this package map it to their own
// "empty" sentinel (audit.ErrAnchorEmpty).
var ErrNVUninitialized = errors.New("TPM NV index not written yet")

// NVIndex is a defined NV index: its handle, its name (what policies bind to)
// and its public area. The name covers the attributes, TPMA_NV_WRITTEN
// included, so an index's name changes once, at its first write; read it
// again (NVName) after that.
type NVIndex struct {
	Handle tpm2.TPMHandle
	Name   tpm2.TPM2BName
	Public tpm2.TPMSNVPublic
}

func (x NVIndex) named() tpm2.NamedHandle {
	return tpm2.NamedHandle{Handle: x.Handle, Name: x.Name}
}

// auth returns the index authorized by its own (empty) password, as provd's
// counters and anchors are read and written.
func (x NVIndex) auth() tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: x.Handle, Name: x.Name, Auth: tpm2.PasswordAuth(nil)}
}

// Sizes of the NV indices provd defines.
const (
	counterSize = 8           // TPM_NT_COUNTER: a 64-bit big-endian value
	extendSize  = sha256.Size // TPM_NT_EXTEND with nameAlg SHA-256
)

// nvWrap is Wrap for NV commands: TPM_RC_NV_UNINITIALIZED becomes
// ErrNVUninitialized.
func nvWrap(command string, err error) error {
	err = Wrap(command, err)
	var e *Error
	if errors.As(err, &e) && e.Kind == nil && errors.Is(e.RC, tpm2.TPMRCNVUninitialized) {
		e.Kind = ErrNVUninitialized
	}
	return err
}

func checkNVIndexHandle(h tpm2.TPMHandle) error {
	if tpm2.TPMHT(h>>24) != tpm2.TPMHTNVIndex {
		return fmt.Errorf("handle 0x%08x is not an NV index (0x01xxxxxx)", uint32(h))
	}
	return nil
}

// ReadNVPublic returns an NV index's public area and name (TPM2_NV_ReadPublic).
// An index that does not exist gives ErrNotFound.
func (t *TPM) ReadNVPublic(h tpm2.TPMHandle) (NVIndex, error) {
	if err := checkNVIndexHandle(h); err != nil {
		return NVIndex{}, err
	}
	rsp, err := (tpm2.NVReadPublic{NVIndex: h}).Execute(t)
	if err != nil {
		return NVIndex{}, Wrap("TPM2_NV_ReadPublic", err)
	}
	pub, err := rsp.NVPublic.Contents()
	if err != nil {
		return NVIndex{}, fmt.Errorf("TPM2_NV_ReadPublic: %w", err)
	}
	return NVIndex{Handle: h, Name: rsp.NVName, Public: *pub}, nil
}

// NVName returns the current name of an NV index.
func (t *TPM) NVName(h tpm2.TPMHandle) (tpm2.TPM2BName, error) {
	x, err := t.ReadNVPublic(h)
	return x.Name, err
}

// ListNV lists the NV indices defined in the TPM.
func (t *TPM) ListNV() ([]tpm2.TPMHandle, error) {
	return t.Handles(NVIndices)
}

// defineNV defines an owner index at h with nvPublic's attributes.
func (t *TPM) defineNV(h tpm2.TPMHandle, nt tpm2.TPMNT, size uint16) error {
	if err := checkNVIndexHandle(h); err != nil {
		return err
	}
	_, err := (tpm2.NVDefineSpace{
		AuthHandle: tpm2.TPMRHOwner,
		PublicInfo: tpm2.New2B(nvPublic(h, nt, size)),
	}).Execute(t)
	if err != nil {
		return Wrap("TPM2_NV_DefineSpace", err)
	}
	return nil
}

// DefineCounter defines a monotonic counter (TPM_NT_COUNTER) at h in the owner
// hierarchy and increments it once: a counter has no value, and PolicyNV on it
// fails, until its first increment, and its name (which covers
// TPMA_NV_WRITTEN) is final only after it. The returned name is the one
// policies must bind to.
//
// The counter's first value is not 1: a TPM counter starts at the highest
// value any counter on that TPM ever had, and never goes back, not even across
// undefine and define. Read it with ReadCounter.
//
// Anyone may increment it (empty password): that can only revoke signed
// policies early, never bring an old one back. provd's own policy counter is
// gated instead (DefineGatedCounter); this one serves tests and tools.
func (t *TPM) DefineCounter(h tpm2.TPMHandle) (x NVIndex, err error) {
	if err := t.defineNV(h, tpm2.TPMNTCounter, counterSize); err != nil {
		return NVIndex{}, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.UndefineNV(h))
		}
	}()
	if err := t.Increment(h); err != nil {
		return NVIndex{}, err
	}
	return t.ReadNVPublic(h)
}

// Increment adds one to the counter at h (TPM2_NV_Increment).
func (t *TPM) Increment(h tpm2.TPMHandle) error {
	x, err := t.ReadNVPublic(h)
	if err != nil {
		return err
	}
	if x.Public.Attributes.NT != tpm2.TPMNTCounter {
		return fmt.Errorf("NV index 0x%08x is not a counter", uint32(h))
	}
	if _, err := (tpm2.NVIncrement{AuthHandle: x.auth(), NVIndex: x.named()}).Execute(t); err != nil {
		return nvWrap("TPM2_NV_Increment", err)
	}
	return nil
}

// ReadCounter returns the value of the counter at h; ErrNVUninitialized before
// its first increment.
func (t *TPM) ReadCounter(h tpm2.TPMHandle) (uint64, error) {
	x, err := t.ReadNVPublic(h)
	if err != nil {
		return 0, err
	}
	if x.Public.Attributes.NT != tpm2.TPMNTCounter || x.Public.DataSize != counterSize {
		return 0, fmt.Errorf("NV index 0x%08x is not a counter", uint32(h))
	}
	b, err := t.nvRead(x, counterSize)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(b), nil
}

// UndefineNV removes the NV index at h with owner authorization. An index
// that does not exist gives ErrNotFound.
func (t *TPM) UndefineNV(h tpm2.TPMHandle) error {
	x, err := t.ReadNVPublic(h)
	if err != nil {
		return err
	}
	return t.UndefineNVIndex(x)
}

// UndefineNVIndex is UndefineNV of x, as read by ReadNVPublic: no second
// read.
func (t *TPM) UndefineNVIndex(x NVIndex) error {
	if _, err := (tpm2.NVUndefineSpace{AuthHandle: tpm2.TPMRHOwner, NVIndex: x.named()}).Execute(t); err != nil {
		return Wrap("TPM2_NV_UndefineSpace", err)
	}
	return nil
}

// nvRead reads size bytes at offset 0 with the index's own password.
func (t *TPM) nvRead(x NVIndex, size uint16) ([]byte, error) {
	rsp, err := (tpm2.NVRead{AuthHandle: x.auth(), NVIndex: x.named(), Size: size}).Execute(t)
	if err != nil {
		return nil, nvWrap("TPM2_NV_Read", err)
	}
	if len(rsp.Data.Buffer) != int(size) {
		return nil, fmt.Errorf("TPM2_NV_Read: %d bytes returned, %d asked", len(rsp.Data.Buffer), size)
	}
	return rsp.Data.Buffer, nil
}

// DefineExtendIndex defines an extend index (TPM_NT_EXTEND, SHA-256, 32 bytes)
// at h in the owner hierarchy. It holds 32 zero bytes and reads as
// ErrNVUninitialized until its first NVExtend; each extend sets
// value' = SHA-256(value || data). The returned name is that of the unwritten
// index; it changes at the first extend.
func (t *TPM) DefineExtendIndex(h tpm2.TPMHandle) (NVIndex, error) {
	if err := t.defineNV(h, tpm2.TPMNTExtend, extendSize); err != nil {
		return NVIndex{}, err
	}
	return t.ReadNVPublic(h)
}

// NVExtend extends data into the extend index at h (TPM2_NV_Extend, which
// go-tpm lacks: it is sent as a raw command authorized by the index's empty
// password). It costs one command.
func (t *TPM) NVExtend(h tpm2.TPMHandle, data []byte) error {
	if err := checkNVIndexHandle(h); err != nil {
		return err
	}
	if len(data) > math.MaxUint16 {
		return fmt.Errorf("NV extend: %d bytes of data is too much", len(data))
	}
	params := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(data)), uint16(len(data)))
	params = append(params, data...) // TPM2B_MAX_NV_BUFFER
	_, err := rawCommand{
		cc:      ccNVExtend,
		handles: []tpm2.TPMHandle{h, h}, // authHandle, nvIndex
		auths:   [][]byte{nil},
		params:  params,
	}.run(t)
	if err != nil {
		return nvWrap("TPM2_NV_Extend", err)
	}
	return nil
}

// NVAnchor is an audit-trail anchor kept in a TPM extend index: Extend moves
// it forward, nothing can move it back short of undefining the index (owner
// authorization). It satisfies provd's audit.Anchor; Read's "never extended"
// is ErrNVUninitialized here, which the agent maps to audit.ErrAnchorEmpty.
type NVAnchor struct {
	t *TPM
	h tpm2.TPMHandle
}

// Anchor returns the anchor kept in the extend index at h (see
// DefineExtendIndex). Nothing is sent to the TPM until it is used.
func (t *TPM) Anchor(h tpm2.TPMHandle) *NVAnchor { return &NVAnchor{t: t, h: h} }

// Handle returns the anchor's NV index.
func (a *NVAnchor) Handle() tpm2.TPMHandle { return a.h }

// Extend sets value' = SHA-256(value || data).
func (a *NVAnchor) Extend(data []byte) error { return a.t.NVExtend(a.h, data) }

// Read returns the current value, or an error wrapping ErrNVUninitialized
// before the first Extend. The index must be a SHA-256 extend index of 32
// bytes: any other index at the handle is refused rather than trusted.
func (a *NVAnchor) Read() ([]byte, error) {
	x, err := a.t.ReadNVPublic(a.h)
	if err != nil {
		return nil, err
	}
	return a.t.ReadExtendIndex(x)
}

// ReadExtendIndex reads the value of the SHA-256 extend index x (as read by
// ReadNVPublic) with its empty password; ErrNVUninitialized before its first
// extend. Any other kind of index is refused rather than trusted.
func (t *TPM) ReadExtendIndex(x NVIndex) ([]byte, error) {
	p := x.Public
	if p.Attributes.NT != tpm2.TPMNTExtend || p.NameAlg != tpm2.TPMAlgSHA256 || p.DataSize != extendSize {
		return nil, fmt.Errorf("NV index 0x%08x is not a SHA-256 extend index", uint32(x.Handle))
	}
	return t.nvRead(x, extendSize)
}

// AuthenticatedNV reads NV indices in an audit session salted to the pinned
// SRK: the response HMAC, keyed by a salt only the
// TPM can decrypt, covers what the TPM answers, and the command HMAC covers
// the names of the indices read, so an interposer can neither change a
// public area or a value nor answer for an index the TPM does not hold as
// stated (see ReadPublic). A changed response is ErrResponseForged. It is
// what provd decides on: the policy counter's value, the audit anchor.
type AuthenticatedNV struct {
	t *TPM
	s tpm2.Session
}

// WithAuthenticatedNV runs fn with the audit session (StartAuthSession
// before, FlushContext after: 2 commands; none in an operation's shared
// session, Share). Where no SRK is pinned (before
// first contact) there is no key to salt to that an interposer could not
// have chosen, and asking the TPM for one would create it: the reads then go
// without a session, as plain reads.
func (t *TPM) WithAuthenticatedNV(fn func(r *AuthenticatedNV) error) error {
	opts, err := t.pinnedSalt()
	if err != nil {
		return err
	}
	if opts == nil {
		return fn(&AuthenticatedNV{t: t})
	}
	read := func(s tpm2.Session) error { return fn(&AuthenticatedNV{t: t, s: s}) }
	if ok, err := t.withSharedRead(read); ok {
		return err
	}
	return t.withHMACSession(read, append(opts, tpm2.Audit())...)
}

func (r *AuthenticatedNV) sessions() []tpm2.Session {
	if r.s == nil {
		return nil
	}
	return []tpm2.Session{r.s}
}

// ReadPublic is TPM2_NV_ReadPublic, outside the session: the command
// names the index by the name it asks for, so it cannot be authenticated
// itself. Its answer is checked for consistency (the name is the public
// area's), and a Read that follows authenticates it: the TPM computes the
// read's command HMAC over the name it holds, so a name the bus changed
// makes the TPM refuse the read (ErrResponseForged).
func (r *AuthenticatedNV) ReadPublic(h tpm2.TPMHandle) (NVIndex, error) {
	x, err := r.t.ReadNVPublic(h)
	if err != nil {
		return NVIndex{}, err
	}
	if n, err := tpm2.NVName(&x.Public); err != nil || !nameEqual(*n, x.Name) {
		return NVIndex{}, fmt.Errorf("%w: TPM2_NV_ReadPublic of 0x%08x: the name does not match the public area", ErrResponseForged, uint32(h))
	}
	return x, nil
}

// ErrNoSession: the read runs without a session (no SRK pinned), and what
// the TPM says cannot be told from what the bus says.
var ErrNoSession = errors.New("no session to authenticate the TPM's answer")

// Has reports whether the index at x's handle is x, as the TPM says it in
// the audit session: TPM2_NV_ReadPublic naming x's name, which the TPM
// refuses (TPM_RC_BAD_AUTH) when the index it holds has another, as it
// keys the command's HMAC with the name it holds; its answer's HMAC covers
// the public area and the name. Only true is the TPM's word (an error
// answer has no HMAC); a successful answer that names another is
// ErrResponseForged. Without a session: ErrNoSession.
func (r *AuthenticatedNV) Has(x NVIndex) (bool, error) {
	if r.s == nil {
		return false, ErrNoSession
	}
	rsp, err := (tpm2.NVReadPublic{NVIndex: x.named()}).Execute(r.t, r.s)
	if errors.Is(err, tpm2.TPMRCBadAuth) {
		return false, nil
	}
	if err != nil {
		return false, Wrap("TPM2_NV_ReadPublic", err)
	}
	if !nameEqual(rsp.NVName, x.Name) {
		return false, fmt.Errorf("%w: TPM2_NV_ReadPublic of 0x%08x named %x, asked for %x", ErrResponseForged, uint32(x.Handle), rsp.NVName.Buffer, x.Name.Buffer)
	}
	return true, nil
}

// Read reads size bytes of x at offset 0 (its empty password, the audit
// session beside it).
func (r *AuthenticatedNV) Read(x NVIndex, size uint16) ([]byte, error) {
	rsp, err := (tpm2.NVRead{AuthHandle: x.auth(), NVIndex: x.named(), Size: size}).Execute(r.t, r.sessions()...)
	if err != nil {
		var rc tpm2.TPMRC
		if errors.As(err, &rc) {
			return nil, nvWrap("TPM2_NV_Read", guarded("TPM2_NV_Read", err, 2))
		}
		return nil, Wrap("TPM2_NV_Read", err)
	}
	if len(rsp.Data.Buffer) != int(size) {
		return nil, fmt.Errorf("TPM2_NV_Read: %d bytes returned, %d asked", len(rsp.Data.Buffer), size)
	}
	return rsp.Data.Buffer, nil
}

// ReadCounter returns the value of the counter x (as ReadPublic returned
// it); ErrNVUninitialized before its first increment.
func (r *AuthenticatedNV) ReadCounter(x NVIndex) (uint64, error) {
	if x.Public.Attributes.NT != tpm2.TPMNTCounter || x.Public.DataSize != counterSize {
		return 0, fmt.Errorf("NV index 0x%08x is not a counter", uint32(x.Handle))
	}
	b, err := r.Read(x, counterSize)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(b), nil
}

// ReadExtendIndex is TPM.ReadExtendIndex in the audit session.
func (r *AuthenticatedNV) ReadExtendIndex(x NVIndex) ([]byte, error) {
	p := x.Public
	if p.Attributes.NT != tpm2.TPMNTExtend || p.NameAlg != tpm2.TPMAlgSHA256 || p.DataSize != extendSize {
		return nil, fmt.Errorf("NV index 0x%08x is not a SHA-256 extend index", uint32(x.Handle))
	}
	return r.Read(x, extendSize)
}

// ReadCounterAuthenticated returns the counter at h and its index (its
// name authenticated by the read): 4 commands (NV_ReadPublic,
// StartAuthSession, NV_Read, FlushContext) where ReadCounter takes 2.
func (t *TPM) ReadCounterAuthenticated(h tpm2.TPMHandle) (v uint64, x NVIndex, err error) {
	err = t.WithAuthenticatedNV(func(r *AuthenticatedNV) error {
		if x, err = r.ReadPublic(h); err != nil {
			return err
		}
		v, err = r.ReadCounter(x)
		return err
	})
	return v, x, err
}
