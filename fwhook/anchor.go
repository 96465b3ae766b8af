// Package fwhook is the firmware-authentication hook at boot (provd fw
// verify) and the two TPM NV indices it trusts: the signer anchor, which
// only the crypto officer's signature over one exact write can change, and
// the anti-rollback counter. It runs in-process before the daemon, on a
// device that may never have been provisioned, so it reads nothing of the
// agent's state: the anchor and counter in the TPM, the manifest and the
// images, and the counter's write authorization when it commits
// (docs/firmware.md). It measures its verdict into a PCR and into a TCG
// event log that attest replays, as a fleet verifier does.
package fwhook

import (
	"bytes"
	"crypto"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/firmware"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// The hook's NV indices, beside the agent's (0x01707600-02).
const (
	AnchorHandle  tpm2.TPMHandle = 0x01707603
	CounterHandle tpm2.TPMHandle = 0x01707604
)

// AnchorRef is the policyRef of the officer's signature over an anchor
// write: no other signature by the officer's key opens the anchor.
var AnchorRef = []byte("provd/fw-anchor")

// The anchor's content: a magic, the officer's TPM name (whose
// PolicySigned is the index's write policy), the device class
// (NUL-padded), the current and next signers' TPM names (next all zero when
// none), and the counter value that stands for version 0.
const (
	anchorMagic = "pfa1"
	nameSize    = 2 + 32 // a SHA-256 TPM name
	classSize   = firmware.MaxClass + 1
	// AnchorSize is the anchor index's size.
	AnchorSize = len(anchorMagic) + nameSize + classSize + 2*nameSize + 8
)

// Anchor is what the anchor index holds.
type Anchor struct {
	Officer []byte // the officer's TPM name
	Class   string
	Current []byte // the signer's TPM name
	Next    []byte // the next signer's TPM name during a rotation; nil when none
	Base    uint64 // the counter's value for version 0
}

// Marshal is the index's content.
func (a Anchor) Marshal() ([]byte, error) {
	if err := checkName(a.Officer); err != nil {
		return nil, fmt.Errorf("anchor officer: %w", err)
	}
	if err := checkName(a.Current); err != nil {
		return nil, fmt.Errorf("anchor signer: %w", err)
	}
	if a.Next != nil {
		if err := checkName(a.Next); err != nil {
			return nil, fmt.Errorf("anchor next signer: %w", err)
		}
	}
	if err := firmware.CheckClass(a.Class); err != nil {
		return nil, err
	}
	b := make([]byte, 0, AnchorSize)
	b = append(b, anchorMagic...)
	b = append(b, a.Officer...)
	class := make([]byte, classSize)
	copy(class, a.Class)
	b = append(b, class...)
	b = append(b, a.Current...)
	if a.Next != nil {
		b = append(b, a.Next...)
	} else {
		b = append(b, make([]byte, nameSize)...)
	}
	return binary.BigEndian.AppendUint64(b, a.Base), nil
}

// ParseAnchor reads an anchor index's content strictly: its size, magic,
// names of SHA-256, a valid class with zero padding. Anything else is
// ErrAnchorUntrusted.
func ParseAnchor(b []byte) (Anchor, error) {
	bad := func(format string, args ...any) (Anchor, error) {
		return Anchor{}, fmt.Errorf("%w: %s", firmware.ErrAnchorUntrusted, fmt.Sprintf(format, args...))
	}
	if len(b) != AnchorSize {
		return bad("anchor of %d bytes, want %d", len(b), AnchorSize)
	}
	if string(b[:4]) != anchorMagic {
		return bad("anchor magic %q", b[:4])
	}
	b = b[4:]
	take := func(n int) []byte { v := bytes.Clone(b[:n]); b = b[n:]; return v }
	a := Anchor{Officer: take(nameSize)}
	class := take(classSize)
	a.Current = take(nameSize)
	a.Next = take(nameSize)
	a.Base = binary.BigEndian.Uint64(b)
	i := bytes.IndexByte(class, 0)
	if i < 0 || bytes.Count(class[i:], []byte{0}) != len(class)-i {
		return bad("anchor class is not NUL-padded")
	}
	a.Class = string(class[:i])
	if err := firmware.CheckClass(a.Class); err != nil {
		return bad("anchor class: %v", err)
	}
	if err := checkName(a.Officer); err != nil {
		return bad("anchor officer: %v", err)
	}
	if err := checkName(a.Current); err != nil {
		return bad("anchor signer: %v", err)
	}
	if bytes.Equal(a.Next, make([]byte, nameSize)) {
		a.Next = nil
	} else if err := checkName(a.Next); err != nil {
		return bad("anchor next signer: %v", err)
	}
	return a, nil
}

func checkName(n []byte) error {
	if len(n) != nameSize || binary.BigEndian.Uint16(n) != uint16(tpm2.TPMAlgSHA256) {
		return fmt.Errorf("TPM name %x: want SHA-256 (%d bytes)", n, nameSize)
	}
	return nil
}

// AnchorPublic is the anchor index's public area for officer (its TPM
// name): written only through PolicySigned(officer, AnchorRef) and whole
// (WRITEALL), read by anyone with the empty password, no DA counting.
// written says whether TPMA_NV_WRITTEN is set (the name changes with it).
func AnchorPublic(officer []byte, written bool) (tpm2.TPMSNVPublic, error) {
	pol, err := tpm.SignedWritePolicy(officer, AnchorRef)
	if err != nil {
		return tpm2.TPMSNVPublic{}, err
	}
	return tpm2.TPMSNVPublic{
		NVIndex: AnchorHandle,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			NT:          tpm2.TPMNTOrdinary,
			PolicyWrite: true,
			WriteAll:    true,
			AuthRead:    true,
			NoDA:        true,
			Written:     written,
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: pol},
		DataSize:   uint16(AnchorSize),
	}, nil
}

// CounterPublic is the anti-rollback counter's public area: incremented
// only with its authValue (kept root-only in the state directory, never on
// the bus), read by anyone through PolicyCommandCode(NV_Read), no DA
// counting.
func CounterPublic(written bool) tpm2.TPMSNVPublic {
	return tpm2.TPMSNVPublic{
		NVIndex: CounterHandle,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			NT:        tpm2.TPMNTCounter,
			AuthWrite: true,
			// AUTHREAD too, only so that TPM2_PolicySecret can prove the
			// authValue without changing anything (ensureCounter):
			// PolicySecret is TPM_RC_AUTH_UNAVAILABLE for an index
			// written with its authValue but not read with it (probed).
			AuthRead:   true,
			PolicyRead: true,
			NoDA:       true,
			Written:    written,
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: tpm.CommandPolicy(tpm2.TPMCCNVRead)},
		DataSize:   8,
	}
}

// Info is the anchor as the TPM holds it, with the counter.
type Info struct {
	Anchor
	// Counter is the anti-rollback counter's value; Lowest = Counter -
	// Base is the lowest version accepted.
	Counter uint64
	Lowest  uint64
	// OwnerAuthSet: the owner hierarchy has an authorization value, so no
	// process without it can undefine and redefine the anchor.
	OwnerAuthSet bool
	// Authenticated: read through a session salted to a pinned SRK (never at
	// boot, where no state is read: the values are then the bus's word).
	Authenticated bool
}

// Read reads and checks the anchor and the counter: both must be exactly
// the indices provd defines (attributes, policies, and for the anchor the
// officer its content names), else ErrAnchorUntrusted; a missing one is
// ErrNoAnchor.
func Read(t *tpm.TPM) (Info, error) {
	in, cx, err := readAnchor(t)
	if err != nil {
		return Info{}, err
	}
	if err := in.readCounter(t, cx); err != nil {
		return Info{}, err
	}
	return in, nil
}

// readAnchor is Read's first half: the anchor read and checked, and the
// counter's public area (cx) checked, in one authenticated NV session; the
// counter's value is readCounter's.
func readAnchor(t *tpm.TPM) (in Info, cx tpm.NVIndex, err error) {
	err = t.WithAuthenticatedNV(func(r *tpm.AuthenticatedNV) error {
		x, err := r.ReadPublic(AnchorHandle)
		if errors.Is(err, tpm.ErrNotFound) {
			return fmt.Errorf("%w: no NV index at 0x%08x (provd fw anchor set)", firmware.ErrNoAnchor, uint32(AnchorHandle))
		}
		if err != nil {
			return err
		}
		// The shape before the read: the index's own password must be
		// what reads it (AUTHREAD, empty), and it must be the anchor's size.
		shape, _ := AnchorPublic(make([]byte, nameSize), x.Public.Attributes.Written)
		shape.AuthPolicy = x.Public.AuthPolicy
		if n, err := tpm.NVPublicName(shape); err != nil || !bytes.Equal(n, x.Name.Buffer) {
			return fmt.Errorf("%w: NV index 0x%08x has other attributes or size than provd's anchor", firmware.ErrAnchorUntrusted, uint32(AnchorHandle))
		}
		if !x.Public.Attributes.Written {
			return fmt.Errorf("%w: the anchor index at 0x%08x was defined but never written (provd fw anchor set)", firmware.ErrNoAnchor, uint32(AnchorHandle))
		}
		b, err := r.Read(x, uint16(AnchorSize))
		if errors.Is(err, tpm.ErrBadAuth) {
			// The name does not cover the authValue: provd's shape with
			// an authValue of someone else's (found by review).
			return fmt.Errorf("%w: the anchor at 0x%08x does not read with the empty password: %v", firmware.ErrAnchorUntrusted, uint32(AnchorHandle), err)
		}
		if err != nil {
			return err
		}
		if in.Anchor, err = ParseAnchor(b); err != nil {
			return err
		}
		want, err := AnchorPublic(in.Officer, true)
		if err != nil {
			return err
		}
		if n, err := tpm.NVPublicName(want); err != nil || !bytes.Equal(n, x.Name.Buffer) {
			return fmt.Errorf("%w: the anchor's write policy is not the officer's it names (%x)", firmware.ErrAnchorUntrusted, in.Officer)
		}
		if cx, err = r.ReadPublic(CounterHandle); errors.Is(err, tpm.ErrNotFound) {
			return fmt.Errorf("%w: no anti-rollback counter at 0x%08x (provd fw anchor set)", firmware.ErrNoAnchor, uint32(CounterHandle))
		} else if err != nil {
			return err
		}
		if n, err := tpm.NVPublicName(CounterPublic(true)); err != nil || !bytes.Equal(n, cx.Name.Buffer) {
			return fmt.Errorf("%w: NV index 0x%08x is not provd's anti-rollback counter", firmware.ErrAnchorUntrusted, uint32(CounterHandle))
		}
		return nil
	})
	if err != nil {
		return Info{}, cx, err
	}
	in.Authenticated = t.PinnedSRKName() != nil
	return in, cx, nil
}

// readCounter is Read's second half: the counter's value (through its
// policy), the lowest version it accepts, and whether the owner hierarchy
// has an authorization value.
func (in *Info) readCounter(t *tpm.TPM, cx tpm.NVIndex) (err error) {
	if in.Counter, err = t.ReadCounterByPolicy(cx); err != nil {
		return err
	}
	if in.Counter < in.Base {
		return fmt.Errorf("%w: the counter (%d) is below the anchor's base (%d)", firmware.ErrAnchorUntrusted, in.Counter, in.Base)
	}
	in.Lowest = in.Counter - in.Base
	// Authenticated when an SRK is pinned (found by review: the bit was
	// the bus's word during an authenticated set).
	perm, err := t.PermanentState()
	if err != nil {
		return err
	}
	in.OwnerAuthSet = perm.OwnerAuthSet
	return nil
}

// SetRequest is what fw anchor set writes.
type SetRequest struct {
	// Officer signs the write (the crypto officer's approval key, ECDSA
	// P-256 as for provd's other approvals); its name becomes the
	// anchor's write policy.
	Officer crypto.Signer
	// Signer and Next are the firmware signers' public keys (Next nil
	// when no rotation is under way).
	Signer, Next crypto.PublicKey
	Class        string
	// OwnerAuth is the owner hierarchy's authorization value, nil when it
	// has none.
	OwnerAuth []byte
	// CommitAuthPath keeps the counter's authValue (root-only): written
	// when the counter is (re)defined, read by fw verify --commit.
	CommitAuthPath string
	// Lowest, when set, is the lowest version to accept from now on: at or
	// above the current one (a set never lowers it); required when the
	// previous anchor is gone but an index remains (see setFloor).
	Lowest *uint64
	// Unauthenticated lets Set run on a TPM connection with no pinned SRK:
	// what it reads (the current floor, the counter) is then the bus's
	// word, and an interposer could make the officer sign a lower floor
	// (found by review). Benches only; fw anchor set authenticates the TPM
	// by its EK certificate first.
	Unauthenticated bool
}

// Set writes the anchor, defining the anchor index and the counter where
// they are missing or not provd's (an existing counter of provd's shape
// whose authValue is at CommitAuthPath is kept). The lowest accepted
// version is kept, raised to r.Lowest, never lowered (setFloor); the base
// is the counter's value less it (a counter never goes back, even across
// undefine and define: a new one starts at or above the highest any
// counter of this TPM reached). The anchor is written with the officer's
// signature over this one write.
func Set(t *tpm.TPM, r SetRequest) (Info, error) {
	if r.Officer == nil || r.Signer == nil || r.CommitAuthPath == "" {
		return Info{}, errors.New("anchor: officer, signer and commit authorization path are required")
	}
	if t.PinnedSRKName() == nil && !r.Unauthenticated {
		return Info{}, fmt.Errorf("%w: anchor: the TPM's identity is not authenticated, so the floor and the counter read now would be the bus's word; authenticate it first (its EK certificate: --ek-ca)", api.ErrUntrustedTPM)
	}
	officerPub, err := policy.SignerPublic(r.Officer.Public())
	if err != nil {
		return Info{}, fmt.Errorf("officer key: %w", err)
	}
	a := Anchor{Class: r.Class}
	if a.Officer, err = policy.SignerName(r.Officer.Public()); err != nil {
		return Info{}, fmt.Errorf("officer key: %w", err)
	}
	if a.Current, err = policy.SignerName(r.Signer); err != nil {
		return Info{}, fmt.Errorf("firmware signer: %w", err)
	}
	if r.Next != nil {
		if a.Next, err = policy.SignerName(r.Next); err != nil {
			return Info{}, fmt.Errorf("next firmware signer: %w", err)
		}
	}
	if _, err := a.Marshal(); err != nil { // validate before any TPM write
		return Info{}, err
	}
	floor, err := setFloor(t, r.Lowest, r.Unauthenticated, a.Officer)
	if err != nil {
		return Info{}, err
	}
	cx, auth, err := ensureCounter(t, r)
	if err != nil {
		return Info{}, err
	}
	defer clear(auth)
	counter, err := t.ReadCounterByPolicy(cx)
	if err != nil {
		return Info{}, err
	}
	if counter < floor {
		if floor-counter > maxCommitSteps {
			return Info{}, fmt.Errorf("anchor: a lowest version of %d needs %d increments of the counter, more than %d", floor, floor-counter, maxCommitSteps)
		}
		for range floor - counter {
			if err := t.IncrementAuth(cx, auth); err != nil {
				return Info{}, err
			}
		}
		if counter, err = t.ReadCounterByPolicy(cx); err != nil {
			return Info{}, err
		}
		if counter < floor {
			return Info{}, fmt.Errorf("%w: the counter is %d after the increments, want at least %d", firmware.ErrAnchorUntrusted, counter, floor)
		}
	}
	a.Base = counter - floor
	content, err := a.Marshal()
	if err != nil {
		return Info{}, err
	}
	x, err := ensureAnchorIndex(t, a.Officer, r.OwnerAuth)
	if err != nil {
		return Info{}, err
	}
	sign := func(aHash []byte) (tpm2.TPMTSignature, error) { return policy.SignDigest(r.Officer, aHash) }
	if err := t.NVWriteSigned(x, content, officerPub, AnchorRef, sign); err != nil {
		return Info{}, fmt.Errorf("writing the anchor: %w", err)
	}
	in, err := Read(t)
	if err != nil {
		return Info{}, err
	}
	if got, _ := in.Anchor.Marshal(); !bytes.Equal(got, content) {
		return Info{}, fmt.Errorf("%w: the anchor read back is not the one written", firmware.ErrAnchorUntrusted)
	}
	return in, nil
}

// setFloor is the lowest accepted version a set leaves: never below what a
// trusted anchor says now (the counter may be replaced under it: the base
// is recomputed so the floor stays), want when given. Whether the indices
// exist is taken only from the TPM's authenticated list (tpm.NVDefined),
// never from a lookup's "not found", which the bus can forge (found by
// review). An anchor that exists but does not read as provd's stops the
// set: the floor it held is unknown, and guessing it would hand a rollback
// to whoever made the read fail. No anchor but a counter: the officer says
// the floor (want). Neither: a first set, at want or 0. An anchor that
// names another officer than the one setting (officer, its name) says a
// floor that is that officer's word, not this one's: a copy of provd's
// anchor made by whoever could undefine the genuine one (an empty owner
// authorization), naming an officer of its own and floor 0, was taken at
// the genuine officer's next set and lowered the genuine floor (review 69:
// a rolled-back release verified again, to its good PCR 12 value); the
// officer gives the floor then (want), as after any incident.
func setFloor(t *tpm.TPM, want *uint64, unauthenticated bool, officer []byte) (uint64, error) {
	defined, err := t.NVDefined(AnchorHandle, CounterHandle)
	if err != nil && unauthenticated && t.PinnedSRKName() == nil {
		// A bench (SetRequest.Unauthenticated): the bus's word.
		defined = map[tpm2.TPMHandle]bool{}
		for _, h := range []tpm2.TPMHandle{AnchorHandle, CounterHandle} {
			_, rerr := t.ReadNVPublic(h)
			defined[h] = rerr == nil
		}
	} else if err != nil {
		return 0, err
	}
	old, err := Read(t)
	switch {
	case err == nil && !bytes.Equal(old.Anchor.Officer, officer):
		if want != nil {
			return *want, nil
		}
		return 0, fmt.Errorf("%w: the anchor at 0x%08x names another officer (%x) than this one: the lowest accepted version it says is that officer's word; "+
			"give it (--lowest-version), as after an incident, or set with the anchor's own officer", firmware.ErrAnchorUntrusted, uint32(AnchorHandle), old.Anchor.Officer)
	case err == nil:
		if want != nil && *want < old.Lowest {
			return 0, fmt.Errorf("anchor: the lowest accepted version is %d; a set never lowers it (asked %d)", old.Lowest, *want)
		}
		if want != nil {
			return *want, nil
		}
		return old.Lowest, nil
	case defined[AnchorHandle]:
		return 0, fmt.Errorf("%w: the NV index at 0x%08x exists but does not read as provd's anchor (%w): the lowest accepted version it held is unknown; "+
			"if another process put it there, remove it with the owner's authorization (tpm2_nvundefine 0x%08x) and set again with --lowest-version",
			firmware.ErrAnchorUntrusted, uint32(AnchorHandle), err, uint32(AnchorHandle))
	case want != nil:
		return *want, nil
	case defined[CounterHandle]:
		return 0, fmt.Errorf("%w: the anchor is gone but the counter remains: the lowest accepted version is unknown; after an incident the officer gives it (--lowest-version)", firmware.ErrAnchorUntrusted)
	}
	return 0, nil
}

// ensureCounter returns provd's counter and its authValue (the caller
// clears it), defining the counter (and writing its new authValue to
// r.CommitAuthPath first) when it is missing, not provd's, or its
// authValue is not on disk.
func ensureCounter(t *tpm.TPM, r SetRequest) (tpm.NVIndex, []byte, error) {
	x, err := t.ReadNVPublic(CounterHandle)
	switch {
	case err == nil:
		want, _ := tpm.NVPublicName(CounterPublic(true))
		if auth, rerr := readCommitAuth(r.CommitAuthPath); rerr == nil && bytes.Equal(want, x.Name.Buffer) {
			// The value on disk must be the counter's (a state directory
			// restored from elsewhere, or a counter redefined, leaves one
			// that is not). PolicySecret proves it and changes nothing
			// (found by review: proving it by an increment raised the
			// floor by one at every set that failed later).
			perr := t.ProveNVAuth(x, auth)
			if perr == nil {
				return x, auth, nil
			}
			clear(auth)
			if !errors.Is(perr, tpm.ErrBadAuth) {
				return tpm.NVIndex{}, nil, perr
			}
		}
		if err := t.UndefineNVAuth(CounterHandle, r.OwnerAuth); err != nil {
			return tpm.NVIndex{}, nil, err
		}
	case !errors.Is(err, tpm.ErrNotFound):
		return tpm.NVIndex{}, nil, err
	}
	auth, err := tpm.NewGateAuth(randReader)
	if err != nil {
		return tpm.NVIndex{}, nil, err
	}
	if err := store.WriteFile(r.CommitAuthPath, auth, 0o600); err != nil {
		clear(auth)
		return tpm.NVIndex{}, nil, fmt.Errorf("the counter's authorization: %w", err)
	}
	if x, err = t.DefineNVAuth(CounterPublic(false), auth, r.OwnerAuth); err != nil {
		clear(auth)
		return tpm.NVIndex{}, nil, err
	}
	if err := t.IncrementAuth(x, auth); err != nil {
		clear(auth)
		return tpm.NVIndex{}, nil, err
	}
	if x, err = t.ReadNVPublic(CounterHandle); err != nil {
		clear(auth)
		return tpm.NVIndex{}, nil, err
	}
	return x, auth, nil
}

// ensureAnchorIndex returns the anchor index for officer, defining it
// (after removing whatever else sits at its handle) when needed.
func ensureAnchorIndex(t *tpm.TPM, officer, ownerAuth []byte) (tpm.NVIndex, error) {
	x, err := t.ReadNVPublic(AnchorHandle)
	switch {
	case err == nil:
		want, err := AnchorPublic(officer, x.Public.Attributes.Written)
		if err != nil {
			return tpm.NVIndex{}, err
		}
		if n, err := tpm.NVPublicName(want); err == nil && bytes.Equal(n, x.Name.Buffer) {
			return x, nil
		}
		if err := t.UndefineNVAuth(AnchorHandle, ownerAuth); err != nil {
			return tpm.NVIndex{}, err
		}
	case !errors.Is(err, tpm.ErrNotFound):
		return tpm.NVIndex{}, err
	}
	pub, err := AnchorPublic(officer, false)
	if err != nil {
		return tpm.NVIndex{}, err
	}
	return t.DefineNVAuth(pub, nil, ownerAuth)
}

// readCommitAuth reads the counter's authValue: a regular file of exactly
// tpm.GateAuthSize bytes.
func readCommitAuth(path string) ([]byte, error) {
	b, err := readFile(path, tpm.GateAuthSize)
	if err != nil {
		return nil, err
	}
	if len(b) != tpm.GateAuthSize {
		n := len(b)
		clear(b)
		return nil, fmt.Errorf("%s: not a counter authorization (%d bytes)", path, n)
	}
	return b, nil
}
