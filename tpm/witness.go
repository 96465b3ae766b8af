package tpm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Witness is an audit session salted to the pinned SRK, for commands whose
// outcome provd reports as fact although their own authorization proves
// nothing about the response: TPM2_NV_UndefineSpace and TPM2_EvictControl
// are authorized by the owner's password session, whose response carries no
// HMAC, so an interposer can drop them and answer success. Sent with the
// witness beside the password session, the command HMAC covers the names of
// the index or object (the TPM refuses the command when they are not the
// ones provd means) and the response HMAC, keyed by a salt only the TPM can
// decrypt, says that the TPM carried it out. TPM2_FlushContext takes no
// sessions at all; what it did is read back with Handles, whose
// GetCapability responses the witness authenticates the same way.
//
// The session outlives its salt key: the SRK is used once, at
// StartAuthSession, so the witness goes on authenticating after it has
// evicted the SRK itself (zeroize --srk) and for every command after that.
//
// Where no SRK is pinned (or it was evicted before), nothing that the bus
// cannot have chosen is there to salt to: the witness then authenticates
// nothing (Authenticated is false), its commands go out as plain commands,
// and what it reports is the bus's word.
type Witness struct {
	t      *TPM
	s      tpm2.Session
	h      tpm2.TPMHandle
	closer func() error
}

// OpenWitness starts the witness (StartAuthSession; Close flushes it).
func (t *TPM) OpenWitness() (*Witness, error) {
	opts, err := t.pinnedSalt()
	if err != nil {
		return nil, err
	}
	w := &Witness{t: t}
	if opts == nil {
		return w, nil
	}
	s, closer, err := t.startHMACSession(append(opts, tpm2.Audit())...)
	if err != nil {
		return nil, err
	}
	w.s, w.h, w.closer = s, s.Handle(), closer
	return w, nil
}

// Authenticated reports whether the TPM authenticates what the witness
// reports (an SRK was pinned when it started).
func (w *Witness) Authenticated() bool { return w.s != nil }

// Handle is the witness session's handle (0 when it authenticates
// nothing): a flush of leftovers must spare it.
func (w *Witness) Handle() tpm2.TPMHandle { return w.h }

// Close flushes the session. It may be called more than once.
func (w *Witness) Close() error {
	if w.closer == nil {
		return nil
	}
	c := w.closer
	w.closer = nil
	return c()
}

// successSeen passes commands to the TPM and notes whether the last
// response's header said success.
type successSeen struct {
	t  transport.TPM
	ok bool
}

func (s *successSeen) Send(cmd []byte) ([]byte, error) {
	rsp, err := s.t.Send(cmd)
	s.ok = err == nil && len(rsp) >= headerSize && binary.BigEndian.Uint32(rsp[6:10]) == uint32(tpm2.TPMRCSuccess)
	return rsp, err
}

// run sends one command (fn) with the witness session as session index
// (1-based, after the command's own authorizations). A response whose
// header says success but which the session does not authenticate (a wrong
// HMAC, a missing or malformed session area) is ErrResponseForged, as is
// the TPM's refusal of the witness's command HMAC (the command or a name in
// it was changed on its way).
func (w *Witness) run(command string, index int, fn func(t transport.TPM, s ...tpm2.Session) error) error {
	if w.s == nil {
		return Wrap(command, fn(w.t))
	}
	tr := &successSeen{t: w.t}
	err := fn(tr, w.s)
	switch {
	case err == nil:
		return nil
	case tr.ok:
		return fmt.Errorf("%s: %w: the TPM's success is not authenticated: %v", command, ErrResponseForged, err)
	default:
		return guarded(command, err, index)
	}
}

// UndefineNV removes the NV index at h with owner authorization, the
// witness beside it. ErrNotFound when NV_ReadPublic says there is no index
// there: that answer is the bus's, so a caller that must know reads back
// with Handles.
func (w *Witness) UndefineNV(h tpm2.TPMHandle) error {
	x, err := w.t.ReadNVPublic(h)
	if err != nil {
		return err
	}
	return w.undefine(x)
}

// undefine is TPM2_NV_UndefineSpace of x in the witness (its name goes
// into the command's audit HMAC).
func (w *Witness) undefine(x NVIndex) error {
	return w.run("TPM2_NV_UndefineSpace", 2, func(t transport.TPM, s ...tpm2.Session) error {
		_, err := (tpm2.NVUndefineSpace{AuthHandle: tpm2.TPMRHOwner, NVIndex: x.named()}).Execute(t, s...)
		return err
	})
}

// EvictSRK removes the persistent SRK with owner authorization, the
// witness beside it. With an SRK pinned the command names the pinned SRK:
// its command HMAC covers the pinned name, so the TPM evicts that key or
// refuses (ErrResponseForged), whatever ReadPublic said. ErrNotFound when
// ReadPublic says 0x81000001 is empty (the bus's word: read back with
// Handles). From here on sessions are no longer salted to the pin (the
// audit trail's last records go unsalted rather than create the SRK again);
// the witness itself goes on.
func (w *Witness) EvictSRK() error {
	t := w.t
	t.srkMu.Lock()
	defer t.srkMu.Unlock()
	if err := t.dropCopy(); err != nil {
		return err
	}
	obj, err := t.ReadPublic(SRKHandle)
	if errors.Is(err, ErrNotFound) {
		t.srk, t.srkEvicted = nil, true
		return err
	}
	if err != nil {
		return err
	}
	if t.pinned != nil {
		obj.Name = t.pinned.Name
	}
	if err := w.evict(obj); err != nil {
		return err
	}
	t.srk, t.srkEvicted = nil, true
	return nil
}

// EvictNamed removes the persistent object at h in the witness, only if it
// is named name: ErrNotFound when ReadPublic says h is empty (the bus's
// word: read back with Handles). Another
// object there stays (left true) once the witness confirms it (its
// TPM2_ReadPublic in the witness: the command HMAC covers the name the bus
// gave, and the TPM answers it only for the object it holds, the answer's
// HMAC says so): whoever put it there, a concurrent trail's gate among
// them (found by review: zeroize evicted a new trail's gate, begun by
// another process while it ran), it is not the one the caller means.
func (w *Witness) EvictNamed(h tpm2.TPMHandle, name []byte) (left bool, err error) {
	obj, err := w.t.ReadPublic(h)
	if err != nil {
		return false, err
	}
	if bytes.Equal(obj.Name.Buffer, name) {
		return false, w.evict(obj)
	}
	return true, w.run("TPM2_ReadPublic", 1, func(tr transport.TPM, s ...tpm2.Session) error {
		_, err := (tpm2.ReadPublic{ObjectHandle: obj.Named()}).Execute(tr, s...)
		return err
	})
}

// UndefineNVNamed is UndefineNV of the index at h only if its name is one
// of names; another index there stays (left true) once the witness
// confirms it, as EvictNamed's object.
func (w *Witness) UndefineNVNamed(h tpm2.TPMHandle, names ...[]byte) (left bool, err error) {
	x, err := w.t.ReadNVPublic(h)
	if err != nil {
		return false, err
	}
	if slices.ContainsFunc(names, func(n []byte) bool { return bytes.Equal(n, x.Name.Buffer) }) {
		return false, w.undefine(x)
	}
	return true, w.run("TPM2_NV_ReadPublic", 1, func(tr transport.TPM, s ...tpm2.Session) error {
		_, err := (tpm2.NVReadPublic{NVIndex: x.named()}).Execute(tr, s...)
		return err
	})
}

// evict is TPM2_EvictControl of the persistent obj in the witness (its
// name goes into the command's audit HMAC).
func (w *Witness) evict(obj Object) error {
	return w.run("TPM2_EvictControl", 2, func(tr transport.TPM, s ...tpm2.Session) error {
		_, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: obj.Named(), PersistentHandle: obj.Handle}).Execute(tr, s...)
		return err
	})
}

// Handles is TPM.Handles with every TPM2_GetCapability in the witness
// session: what the TPM holds, not what the bus says it holds.
func (w *Witness) Handles(first tpm2.TPMHandle) ([]tpm2.TPMHandle, error) {
	return w.t.handles(first, func(c tpm2.GetCapability) (*tpm2.GetCapabilityResponse, error) {
		var rsp *tpm2.GetCapabilityResponse
		err := w.run("TPM2_GetCapability", 1, func(t transport.TPM, s ...tpm2.Session) (err error) {
			rsp, err = c.Execute(t, s...)
			return err
		})
		return rsp, err
	})
}

// Leftovers is TPM.Leftovers read through the witness, without the
// witness's own session.
func (w *Witness) Leftovers() ([]tpm2.TPMHandle, error) {
	var all []tpm2.TPMHandle
	for _, first := range []tpm2.TPMHandle{TransientHandles, HMACSessions, PolicySessions} {
		hs, err := w.Handles(first)
		if err != nil {
			return nil, err
		}
		all = append(all, hs...)
	}
	return slices.DeleteFunc(all, func(h tpm2.TPMHandle) bool { return w.h != 0 && h == w.h }), nil
}
