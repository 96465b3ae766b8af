package tpm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// SRKHandle is where the storage root key lives, as the TCG Provisioning
// Guidance reserves it.
const SRKHandle tpm2.TPMHandle = 0x81000001

// SRKTemplate is the TCG Provisioning Guidance ECC P-256 SRK template
// (noDA, userWithAuth, empty auth, AES-128-CFB). Recreating a primary from the
// same template and owner seed always gives the same key, which is how provd
// proves that a persistent key is the SRK and not a foreign key put there.
var SRKTemplate = tpm2.ECCSRKTemplate

// Object is a loaded TPM object: its handle, name and public area. The name is
// what sessions bind authorization to; the public area is what salted sessions
// and policies need.
type Object struct {
	Handle tpm2.TPMHandle
	Name   tpm2.TPM2BName
	Public tpm2.TPMTPublic
}

// Named returns the object for commands that need no authorization of it.
func (o Object) Named() tpm2.NamedHandle {
	return tpm2.NamedHandle{Handle: o.Handle, Name: o.Name}
}

// Auth returns the object with the session that authorizes its use.
func (o Object) Auth(s tpm2.Session) tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: o.Handle, Name: o.Name, Auth: s}
}

// Flush removes a transient object or session from the TPM. Persistent handles
// are left alone. A handle the TPM does not hold is already what a flush
// wants, not an error (found by the daemon's fault test: after a TPM reset
// in the middle of a seal, the flush of its gone handles turned a finished
// seal into "not found").
func (t *TPM) Flush(h tpm2.TPMHandle) error {
	if isPersistent(h) {
		return nil
	}
	if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(t); err != nil {
		if err := Wrap("TPM2_FlushContext", err); !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	// A transient copy of the SRK flushed (zeroize's flush of every
	// transient handle, a sweep) is gone: the next SRK makes another.
	t.srkTransient.CompareAndSwap(uint32(h), 0)
	return nil
}

func isPersistent(h tpm2.TPMHandle) bool { return h>>24 == 0x81 }

// ReadPublic returns the public area and name of a loaded or persistent object.
func (t *TPM) ReadPublic(h tpm2.TPMHandle) (Object, error) {
	rsp, err := (tpm2.ReadPublic{ObjectHandle: h}).Execute(t)
	if err != nil {
		return Object{}, Wrap("TPM2_ReadPublic", err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return Object{}, fmt.Errorf("TPM2_ReadPublic: %w", err)
	}
	return Object{Handle: h, Name: rsp.Name, Public: *pub}, nil
}

// SRK returns the storage root key. When 0x81000001 holds a key, it must be
// the primary that SRKTemplate gives under this TPM's owner seed (same
// name); anything else is refused with ErrSRKMismatch rather than used.
// When the handle is empty, SRK creates the SRK and persists it there,
// or, after TransientSRKOnly, makes a transient copy of it (the same key:
// the owner seed gives it again) that DropTransientSRK flushes, and
// persists nothing. The result is cached for the life of t (a transient
// copy until it is flushed or the TPM resets).
//
// With a pinned SRK (PinSRK) the SRK is what was pinned: the persistent key's
// name must be the pinned name (ErrIdentityMismatch otherwise), and its public
// area, which sessions are salted to, is the pinned one, never the one the
// bus returns. An interposer that answers ReadPublic with the pinned name
// but holds another key gains nothing: a salt encrypted to the pinned key
// does not decrypt in its TPM, nor in the real one if the real SRK was
// replaced.
func (t *TPM) SRK() (srk Object, err error) {
	t.srkMu.Lock()
	defer t.srkMu.Unlock()
	return t.srkAs(t.missingSRKMode())
}

// missingSRKMode is what SRK does where 0x81000001 is empty: a copy after
// TransientSRKOnly, unless PersistMissingSRK holds. Called with srkMu held.
func (t *TPM) missingSRKMode() srkMode {
	if t.srkTransientOnly && !t.srkPersistNow {
		return srkCopy
	}
	return srkPersist
}

// PersistMissingSRK makes SRK (and a command sent again for an SRK
// evicted behind the connection, srkAgain) persist a missing SRK while on,
// whatever TransientSRKOnly says: the agent sets it for an operation that
// uses a PK or an AK, which live under the SRK in a provisioned state, and
// clears it when the operation ends (found by review 38: a running
// daemon's peer prove, whose SRK another program had evicted, loaded the
// transfer key under a transient copy held beside the PK, the transfer key
// and the EK, TPM_RC_OBJECT_MEMORY).
//
// Turned off, it reports whether the SRK was persisted into an empty
// 0x81000001 while it was on, and forgets it: the caller checks that what
// needed it is still there (found by review 39: another program's zeroize
// --srk between the operation's state read and its first command naming
// the SRK had it persisted again in a wiped state; the agent evicts it
// then, evictSRKUnowed).
func (t *TPM) PersistMissingSRK(on bool) (persisted bool) {
	t.srkMu.Lock()
	defer t.srkMu.Unlock()
	persisted = t.srkPersistedNow && !on
	t.srkPersistNow = on
	if !on {
		t.srkPersistedNow = false
	}
	return persisted
}

// persisted records that the SRK was persisted into an empty 0x81000001
// (PersistMissingSRK). Called with srkMu held.
func (t *TPM) persisted() {
	if t.srkPersistNow {
		t.srkPersistedNow = true
	}
}

// PersistSRK is SRK where 0x81000001 may be empty and the SRK must be
// persisted there whatever TransientSRKOnly says (provision, which makes
// provd's hierarchy under it, and the load of a PK or an AK that lives
// under it); a transient copy SRK made is persisted and flushed.
func (t *TPM) PersistSRK() (Object, error) {
	t.srkMu.Lock()
	defer t.srkMu.Unlock()
	return t.srkAs(srkPersist)
}

// PersistSRKAgain persists the SRK at 0x81000001 again where it is not
// there, though t may have cached it there (another program evicted it
// since): provision calls it as it commits, under the state's lock, which
// the agent's eviction of an SRK it persisted for a wiped state takes too
// (found by review 40: another process's operation, whose state a zeroize
// wiped while it ran, evicted the SRK it had persisted for its PK while a
// third process's provision was under way, and that provision committed a
// provisioned state with 0x81000001 empty). One TPM2_ReadPublic where it
// is there.
func (t *TPM) PersistSRKAgain() error {
	t.srkMu.Lock()
	defer t.srkMu.Unlock()
	if _, err := t.ReadPublic(SRKHandle); !errors.Is(err, ErrNotFound) {
		return err
	}
	if o, ok := t.cachedSRK(); ok && o.Handle == SRKHandle {
		t.srk = nil
	}
	_, err := t.srkAs(srkPersist)
	return err
}

// TransientSRKOnly makes SRK persist nothing from now on: where
// 0x81000001 is empty it makes a transient copy of the SRK for the
// caller's operation (the agent flushes it when the operation ends,
// DropTransientSRK). Found by review 30: after zeroize --srk, a role-less
// caller's refused request began a new trail whose gate key SRK created and
// persisted the SRK under, and a reanchor that archived the trail forgot
// that a zeroize had evicted it; before that, reviews 25 to 29 each found
// another operation that put it back. Persisting it is left to the
// callers that make or load what lives under it (PersistSRK: the agent's
// provision, and its PK's and AK's loads in a provisioned state).
func (t *TPM) TransientSRKOnly() {
	t.srkMu.Lock()
	defer t.srkMu.Unlock()
	t.srkTransientOnly = true
}

// DropTransientSRK flushes the transient copy of the SRK that SRK made, if
// one is loaded; the persistent SRK is left alone.
func (t *TPM) DropTransientSRK() error {
	t.srkMu.Lock()
	defer t.srkMu.Unlock()
	return t.dropCopy()
}

// TransientSRK is the handle of the transient copy of the SRK that SRK
// made and holds, or 0 (the agent's sweep leaves it loaded).
func (t *TPM) TransientSRK() tpm2.TPMHandle {
	t.srkMu.Lock()
	defer t.srkMu.Unlock()
	if o, ok := t.cachedSRK(); ok && o.Handle != SRKHandle {
		return o.Handle
	}
	return 0
}

// srkMode is what srkAs does where 0x81000001 is empty.
type srkMode int

const (
	srkIfThere srkMode = iota // ErrNotFound
	srkCopy                   // a transient copy of the SRK, persisting nothing
	srkPersist                // the SRK created and persisted
)

// srkAs is SRK with mode for an empty handle. Called with srkMu held.
func (t *TPM) srkAs(mode srkMode) (Object, error) {
	if o, ok := t.cachedSRK(); ok {
		if mode != srkPersist || o.Handle == SRKHandle {
			return o, nil
		}
		// The copy an earlier SRK made, persisted now (provision): the
		// key the handle was found empty for.
		if err := t.Persist(o, SRKHandle); err == nil {
			t.persisted()
			ferr := t.dropCopy()
			o.Handle = SRKHandle
			t.srk, t.srkEvicted = &o, false
			return o, ferr
		}
		// Taken meanwhile, or refused: what is there is read and
		// checked as in any open.
		if err := t.dropCopy(); err != nil {
			return Object{}, err
		}
	}
	if t.pinned != nil {
		return t.pinnedSRK(mode)
	}
	if mode == srkIfThere {
		return Object{}, fmt.Errorf("%w: no SRK is pinned", ErrNotFound)
	}
	persisted, err := t.ReadPublic(SRKHandle)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Object{}, err
	}
	exists := err == nil
	primary, err := t.createPrimary(tpm2.TPMRHOwner, SRKTemplate)
	if err != nil {
		return Object{}, err
	}
	switch {
	case !exists && mode == srkCopy:
		return t.keepCopy(primary), nil
	case exists && !nameEqual(persisted.Name, primary.Name):
		return Object{}, errors.Join(fmt.Errorf("%w: 0x%08x has name %x, the ECC SRK template gives %x",
			ErrSRKMismatch, uint32(SRKHandle), persisted.Name.Buffer, primary.Name.Buffer), t.Flush(primary.Handle))
	case !exists:
		if err := t.Persist(primary, SRKHandle); err != nil {
			return Object{}, errors.Join(err, t.Flush(primary.Handle))
		}
		t.persisted()
	}
	if err := t.Flush(primary.Handle); err != nil {
		return Object{}, err
	}
	srk := primary
	srk.Handle = SRKHandle
	t.srk, t.srkEvicted = &srk, false
	return srk, nil
}

// srkGone reports whether rsp says the SRK cmd names at 0x81000001 is not
// there: TPM_RC_HANDLE for handle 1 of a command whose first handle is the
// SRK as a parent or a salt key (StartAuthSession's tpmKey; Load, Create,
// CreateLoaded and Import's parent). Neither ReadPublic nor EvictControl,
// which SRK itself sends.
func srkGone(cc tpm2.TPMCC, cmd, rsp []byte) bool {
	switch cc {
	case tpm2.TPMCCStartAuthSession, tpm2.TPMCCLoad, tpm2.TPMCCCreate, tpm2.TPMCCCreateLoaded, tpm2.TPMCCImport:
	default:
		return false
	}
	return len(cmd) >= 14 && len(rsp) >= 10 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == SRKHandle &&
		binary.BigEndian.Uint32(rsp[6:10]) == uint32(tpm2.TPMRCHandle)+0x100 // handle 1
}

// srkAgain is cmd for the SRK as it is now, when the persistent SRK t
// cached was evicted behind it (another program; found by review 35: a
// running daemon failed every salted request until restarted): the SRK is
// read and made again as SRK would in a new process (persisted, or a
// transient copy after TransientSRKOnly, the pinned name checked), and
// cmd's first handle names it. Only the handle changes: a session's HMAC
// covers the parent's name, the copy's is the SRK's, and a salt encrypted
// to the SRK's public decrypts in the copy. Nil when t cached no
// persistent SRK (the answer stands). Where 0x81000001 still holds a key,
// the answer was not the TPM's (or the key came back meanwhile):
// ErrResponseForged, nothing sent again and the sweep asked for (found by
// review 36: sent again, A1 had a session made twice, and behind a
// resource manager, where no sweep runs, filled the connection's space
// without a word); where A1 forged the handle empty too, the sweep is
// asked for as well (the TPM may have made what cmd makes).
func (t *TPM) srkAgain(cmd []byte) ([]byte, error) {
	t.srkMu.Lock()
	defer t.srkMu.Unlock()
	if t.srk == nil || t.srk.Handle != SRKHandle || t.srkEvicted {
		return nil, nil
	}
	t.counting.unheld()
	// Forgotten either way: what the two answers say is not both true,
	// and the next use reads the handle again (found by review 43: kept
	// after a forged pair, the cached SRK sent provision's gate key to an
	// empty handle once A1 had gone).
	t.srk = nil
	if _, err := t.ReadPublic(SRKHandle); !errors.Is(err, ErrNotFound) {
		return nil, errors.Join(fmt.Errorf("%w: TPM_RC_HANDLE for the SRK at 0x%08x, which the TPM then holds",
			ErrResponseForged, uint32(SRKHandle)), err)
	}
	o, err := t.srkAs(t.missingSRKMode())
	if err != nil {
		return nil, err
	}
	again := bytes.Clone(cmd)
	binary.BigEndian.PutUint32(again[10:14], uint32(o.Handle))
	return again, nil
}

// cachedSRK is the SRK t holds: the persistent one, or a transient copy
// still loaded in its generation and not flushed. A copy from an earlier
// generation (a reset, a power cut, a lost connection, a migration) is
// dropped as every handle of provd's is (ForgetsStale): forgotten, the
// sweep asked for, where its number may now be another's; flushed by its
// number where it is the connection's own (found by review 31: behind a
// resource manager a migration kept the copy loaded, held by nobody, an
// object slot of the connection's three gone for good). Called with srkMu
// held.
func (t *TPM) cachedSRK() (Object, bool) {
	if t.srk == nil {
		return Object{}, false
	}
	if t.srk.Handle == SRKHandle {
		return *t.srk, true
	}
	h := t.srk.Handle
	if t.srkTransient.Load() == uint32(h) && t.srkGen == t.Generation() {
		return *t.srk, true
	}
	stale := t.srkTransient.Load() == uint32(h) // not flushed: its generation moved
	name := t.srk.Name
	t.srk = nil
	t.srkTransient.Store(0)
	switch {
	case !stale:
	case t.ForgetsStale(t.srkGen):
		t.Unheld()
	default:
		// The connection's own number: flushed only while it still
		// names the copy (found by review 33: after a reset behind a
		// resource manager the connection's next object took the
		// number, and the flush took it).
		if o, err := t.ReadPublic(h); err == nil && nameEqual(o.Name, name) {
			if err := t.Flush(h); err != nil {
				t.Unheld()
			}
		}
	}
	return Object{}, false
}

// keepCopy holds o, a transient copy of the SRK, as the SRK. Called with
// srkMu held.
func (t *TPM) keepCopy(o Object) Object {
	t.srk, t.srkEvicted = &o, false
	t.srkGen = t.Generation()
	t.srkTransient.Store(uint32(o.Handle))
	return o
}

// dropCopy flushes the transient copy of the SRK t holds, if any; a flush
// that fails asks for the sweep. Called with srkMu held.
func (t *TPM) dropCopy() error {
	o, ok := t.cachedSRK()
	if !ok || o.Handle == SRKHandle {
		return nil
	}
	t.srk = nil
	t.srkTransient.Store(0)
	err := t.Flush(o.Handle)
	if err != nil {
		t.Unheld()
	}
	return err
}

// SRKIfThere is SRK for reads that must not change the TPM (status): the
// pinned SRK when it is at its handle (or a transient copy of it is
// loaded); ErrNotFound when the handle is empty (zeroize --srk evicted
// it), where SRK would create and persist it again (found by review 26:
// provd status put back the SRK zeroize --srk had evicted).
func (t *TPM) SRKIfThere() (Object, error) {
	t.srkMu.Lock()
	defer t.srkMu.Unlock()
	return t.srkAs(srkIfThere)
}

// PinSRK makes pub the SRK from now on: established at first contact
// (AuthenticatedSRK) and kept by the caller, it replaces what the bus says.
// The next SRK call checks the persistent key against it.
func (t *TPM) PinSRK(pub tpm2.TPMTPublic) error {
	name, err := tpm2.ObjectName(&pub)
	if err != nil {
		return fmt.Errorf("pinned SRK: %w", err)
	}
	t.srkMu.Lock()
	defer t.srkMu.Unlock()
	// A copy of the SRK made before the pin is flushed, not forgotten
	// (found by review 32: forgotten, it stayed loaded, held by nobody; a
	// failed flush asks for the sweep).
	_ = t.dropCopy()
	t.pinned = &Object{Handle: SRKHandle, Name: *name, Public: pub}
	t.srk, t.srkEvicted = nil, false
	return nil
}

// PinSeenSRK is PinSRK where the caller has just read the pinned SRK's
// name at the persistent handle, on this connection (Establish:
// SRKPersistent): the next SRK does not read it again (issue 14: one
// TPM2_ReadPublic fewer at first contact). That read is the bus's word, as
// the one SRK would make: a salt encrypted to the pinned key decrypts only
// in the TPM that holds it, whatever the handle says.
func (t *TPM) PinSeenSRK(pub tpm2.TPMTPublic) error {
	if err := t.PinSRK(pub); err != nil {
		return err
	}
	t.srkMu.Lock()
	defer t.srkMu.Unlock()
	srk := *t.pinned
	t.srk = &srk
	return nil
}

// saltToPin reports whether sessions that need an authenticated SRK are
// salted to the pinned one: an SRK is pinned and EvictSRK has not removed it
// since (the audit trail's last records after zeroize --srk then go
// unsalted rather than create the SRK again).
func (t *TPM) saltToPin() bool {
	t.srkMu.Lock()
	defer t.srkMu.Unlock()
	return t.pinned != nil && !t.srkEvicted
}

// SRKBack ends what this connection's eviction of the SRK (zeroize --srk,
// or the agent's eviction of one it persisted for a wiped state) left:
// sessions salted to nothing (saltToPin) while 0x81000001 is empty. Once
// the pinned SRK is back there (another process provisioned the state
// again on this TPM), they are salted to it again. One TPM2_ReadPublic
// where this connection evicted it, no command otherwise: the agent calls
// it as each operation begins (found by review 42: a daemon's audit
// records went unsalted in a state provisioned again by another process,
// until its next key use, and an interposer can forge such records).
func (t *TPM) SRKBack() {
	t.srkMu.Lock()
	defer t.srkMu.Unlock()
	if t.pinned == nil || !t.srkEvicted {
		return
	}
	if o, err := t.ReadPublic(SRKHandle); err == nil && nameEqual(o.Name, t.pinned.Name) {
		t.srkEvicted = false
	}
}

// PinnedSRKName is the name of the pinned SRK, or nil when none is pinned
// (sessions are then salted to the SRK the bus reports).
func (t *TPM) PinnedSRKName() []byte {
	t.srkMu.Lock()
	defer t.srkMu.Unlock()
	if t.pinned == nil {
		return nil
	}
	return t.pinned.Name.Buffer
}

// Persist makes the loaded obj persistent at h (TPM2_EvictControl with the
// owner hierarchy's empty password); the caller flushes the transient copy.
// The answer has no HMAC: what h holds is the bus's word until a proof in
// it (the name goes into its HMAC) or an authenticated read says so.
func (t *TPM) Persist(obj Object, h tpm2.TPMHandle) error {
	_, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: obj.Named(), PersistentHandle: h}).Execute(t)
	return Wrap("TPM2_EvictControl", err)
}

// Evict removes the persistent object at h, whatever it is (the owner
// hierarchy's empty password); ErrNotFound when h holds none.
func (t *TPM) Evict(h tpm2.TPMHandle) error {
	_, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: tpm2.NamedHandle{Handle: h}, PersistentHandle: h}).Execute(t)
	return Wrap("TPM2_EvictControl", err)
}

// pinnedSRK checks the persistent SRK against the pin. Where the handle is
// empty it creates the SRK (the SRK is a primary: the owner seed gives the
// same key) and persists it (srkPersist) or holds it as a transient copy
// (srkCopy), or answers ErrNotFound (srkIfThere). Called with srkMu held.
func (t *TPM) pinnedSRK(mode srkMode) (Object, error) {
	persisted, err := t.ReadPublic(SRKHandle)
	switch {
	case errors.Is(err, ErrNotFound) && mode == srkIfThere:
		return Object{}, err
	case errors.Is(err, ErrNotFound):
		primary, err := t.createPrimary(tpm2.TPMRHOwner, SRKTemplate)
		if err != nil {
			return Object{}, err
		}
		if !nameEqual(primary.Name, t.pinned.Name) {
			return Object{}, errors.Join(fmt.Errorf("%w: the owner hierarchy gives an SRK named %x, the pinned one is %x",
				ErrIdentityMismatch, primary.Name.Buffer, t.pinned.Name.Buffer), t.Flush(primary.Handle))
		}
		if mode == srkCopy {
			// The pinned public, never the bus's, with the copy's handle.
			return t.keepCopy(Object{Handle: primary.Handle, Name: t.pinned.Name, Public: t.pinned.Public}), nil
		}
		perr := t.Persist(primary, SRKHandle)
		if perr == nil {
			t.persisted()
		}
		if err := errors.Join(perr, t.Flush(primary.Handle)); err != nil {
			return Object{}, err
		}
	case err != nil:
		return Object{}, err
	case !nameEqual(persisted.Name, t.pinned.Name):
		return Object{}, fmt.Errorf("%w: 0x%08x has name %x, the pinned SRK is %x",
			ErrIdentityMismatch, uint32(SRKHandle), persisted.Name.Buffer, t.pinned.Name.Buffer)
	}
	srk := *t.pinned
	t.srk, t.srkEvicted = &srk, false
	return srk, nil
}

// createPrimary creates a primary object under hierarchy h with an empty auth.
func (t *TPM) createPrimary(h tpm2.TPMHandle, tmpl tpm2.TPMTPublic) (Object, error) {
	rsp, err := (tpm2.CreatePrimary{
		PrimaryHandle: h,
		InPublic:      tpm2.New2B(tmpl),
	}).Execute(t)
	if err != nil {
		return Object{}, Wrap("TPM2_CreatePrimary", err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return Object{}, errors.Join(fmt.Errorf("TPM2_CreatePrimary: %w", err), t.Flush(rsp.ObjectHandle))
	}
	return Object{Handle: rsp.ObjectHandle, Name: rsp.Name, Public: *pub}, nil
}

// EvictSRK removes the persistent SRK (zeroize --srk).
func (t *TPM) EvictSRK() error {
	t.srkMu.Lock()
	defer t.srkMu.Unlock()
	if err := t.dropCopy(); err != nil {
		return err
	}
	err := t.Evict(SRKHandle)
	if errors.Is(err, ErrNotFound) {
		t.srk = nil
		return nil
	}
	if err != nil {
		return err
	}
	t.srk = nil
	t.srkEvicted = true
	return nil
}

// flushInto flushes h and, when the flush fails and nothing else did, reports
// the flush failure through *err: a dropped flush error is a leaked slot.
func (t *TPM) flushInto(err *error, h tpm2.TPMHandle) {
	if ferr := t.Flush(h); ferr != nil && *err == nil {
		*err = ferr
	}
}

func nameEqual(a, b tpm2.TPM2BName) bool {
	return string(a.Buffer) == string(b.Buffer)
}
