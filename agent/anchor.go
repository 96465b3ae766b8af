package agent

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/internal/safefile"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// gateFile, beside the audit log, holds the audit anchor's gate: the blob of
// a key under the SRK and its authorization value, which only this state
// directory holds; the anchor's authPolicy requires that authorization
// (TPM2_PolicySecret) for TPM2_NV_Extend. It is not in the manifest: records are written before a
// PK exists, and zeroize wipes the manifest before its last record.
const gateFile = "audit.gate"

// gateRecord is audit.gate's content. Version 2 has the gate key's
// authorization value; a version 1 gate has none (its blob, which crosses
// the bus at every load, was enough to use it) and is replaced at the next
// record (ensureGated).
type gateRecord struct {
	Version int    `json:"version"`
	Handle  uint32 `json:"nv_index"`
	Blob    string `json:"gate_blob"` // hex of tpm.Blob.Marshal
	Name    string `json:"gate_name"` // hex
	// Auth is the gate key's authorization value (hex), a secret: it goes
	// to the TPM only inside encrypted or HMAC sessions.
	Auth string `json:"gate_auth,omitempty"`
	// SRK is the name (hex) of the pinned SRK the gate key was created
	// through, "" when none was pinned: before first contact the SRK is what
	// the bus says, and an interposer then could have changed the gate's
	// creation. Provision makes a new gate when this is not its pinned SRK.
	SRK string `json:"srk_name,omitempty"`
	// Persistent is AuditGateHandle when the gate key was made persistent
	// there (newGatedAnchor), 0 when not: records prove it in place, and
	// load it from Blob only when that fails (withGate).
	Persistent uint32 `json:"gate_handle,omitempty"`
	// Moving is set while the trail moves to this gate (newGatedAnchor
	// writes it before the old index goes; the move clears it once its
	// audit-anchor record is in the log and anchored, under the log's
	// lock): the move's record and the names the anchor's handle may hold
	// meanwhile. A crash or a fault in the move leaves it set; while the
	// move's record is not in the log the trail is read against no index
	// (errMoveUnfinished), and openAudit or audit repair makes the move
	// again (finishMove). Found by make test: a power cut between the old
	// index's removal and the new gate's record left a trail whose anchor
	// was gone, which only an officer's reanchor took.
	Moving *anchorMove `json:"moving,omitempty"`
}

// errAnchorMoved: the index at the anchor's handle is not the trail's own
// gated index (removed, or replaced by an index with another policy). It is
// tampering; the way out is the officer's audit reanchor.
var errAnchorMoved = errors.New("the audit anchor refused the extend: it is not this trail's own NV index any more (removed, or redefined by another process), " +
	"or the extend's policy session was disturbed on the bus; provd audit verify says which: an unanchored last line is accepted with " +
	"provd audit repair --anchor-last, a replaced index is recorded and the trail moved to a new anchor with provd audit reanchor (crypto officer)")

// trailAnchor is the audit trail's audit.Anchor: the gated NV extend index
// named by audit.gate. It reads audit.gate at every use, so a reanchor by
// another provd process is seen at once.
//
// Without audit.gate the trail has no gated anchor yet: a new trail (nothing
// at the handle is its own: Read is empty) or, when the log already has
// lines (legacy), a trail of a provd that anchored in an ungated index, read
// as it was until record() moves the trail to a gated anchor.
type trailAnchor struct {
	t      *tpm.TPM
	log    *slog.Logger
	dir    string
	legacy bool
	// held is the gate key zeroize loads before it evicts the SRK, for its
	// last record; nil otherwise (the gate is loaded per record).
	held **tpm.Gate
	// kept keeps the gate and the last extend's policy session for the
	// next record while it is on (a new trail's first record and the
	// record after it: gateKeep).
	kept *gateKeep
	// proven is the written anchor the last Read read, or the unwritten
	// one newGatedAnchor has just defined, until Prepare takes it or
	// ReadPrepare, which extends, drops it: Prepare then needs no
	// NV_ReadPublic (issue 14). With an SRK pinned the read was in a
	// salted session, so the TPM answered for that name; before first
	// contact it proves nothing, nor does a define's answer (it has no
	// HMAC), and the extend's proof, bound to the name the gate gives,
	// still lands on no other index: the TPM refuses an extend whose
	// cpHash is not the proof's.
	proven atomic.Pointer[tpm.NVIndex]
	// move is the gate of the move this anchor makes (newGatedAnchor):
	// under a move's mark, its audit-anchor record's is the only extend
	// Prepare makes.
	move string
}

var (
	_ audit.Anchor   = (*trailAnchor)(nil)
	_ audit.Preparer = (*trailAnchor)(nil)
)

func (a *Agent) trailAnchor() *trailAnchor {
	fi, err := os.Stat(a.auditPath())
	return &trailAnchor{t: a.t, log: a.log, dir: a.dir, legacy: err == nil && fi.Size() > 0, held: &a.heldGate, kept: &a.gateKeep}
}

// maxGateFile bounds audit.gate: a gate record is a few hundred bytes.
const maxGateFile = 64 << 10

// gate reads audit.gate; nil when there is none.
func (an *trailAnchor) gate() (*gateRecord, error) {
	b, err := safefile.ReadFile(filepath.Join(an.dir, gateFile), maxGateFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, stateFileErr(err)
	}
	var g gateRecord
	if err := json.Unmarshal(b, &g); err != nil || tpm2.TPMHandle(g.Handle) != AuditAnchorHandle ||
		(g.Version != 1 || g.Auth != "") && (g.Version != gateVersion || len(g.Auth) != 2*tpm.GateAuthSize) {
		return nil, fmt.Errorf("%w: %s is not a provd audit gate", api.ErrTampered, gateFile)
	}
	return &g, nil
}

// gateVersion is the version of audit.gate provd writes: a gate with an
// authorization value.
const gateVersion = 2

// auth is the gate key's authorization value; empty for a version 1 gate.
func (g *gateRecord) auth() ([]byte, error) {
	a, err := hex.DecodeString(g.Auth)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", api.ErrTampered, gateFile, err)
	}
	return a, nil
}

func (g *gateRecord) name() ([]byte, error) { return hex.DecodeString(g.Name) }

// persistent is the gate key persistent at AuditGateHandle, when the record
// says it was made so; ok false otherwise (the record is the disk's word:
// a handle that holds anything else only makes the proof fail, and the
// gate is then loaded from its blob).
func (g *gateRecord) persistent() (gk tpm.Gate, ok bool) {
	if tpm2.TPMHandle(g.Persistent) != AuditGateHandle || g.Version != gateVersion {
		return tpm.Gate{}, false
	}
	name, err := g.name()
	if err != nil {
		return tpm.Gate{}, false
	}
	auth, err := g.auth()
	if err != nil {
		return tpm.Gate{}, false
	}
	return tpm.PersistentGate(AuditGateHandle, name, auth), true
}

// writtenAnchor is the anchor as it must be once extended: gated by this
// gate, its name the written one.
func (g *gateRecord) writtenAnchor() (tpm.NVIndex, error) { return g.anchorIndex(true) }

// anchorIndex is the anchor as it must be, written or not: the gated public
// area with the gate's name in its authPolicy. An index recreated with
// another policy or other attributes has another name.
func (g *gateRecord) anchorIndex(written bool) (tpm.NVIndex, error) {
	gn, err := g.name()
	if err != nil {
		return tpm.NVIndex{}, err
	}
	pub, err := tpm.GatedExtendPublic(AuditAnchorHandle, gn, written)
	if err != nil {
		return tpm.NVIndex{}, err
	}
	name, err := tpm.NVPublicName(pub)
	if err != nil {
		return tpm.NVIndex{}, err
	}
	return tpm.NVIndex{Handle: AuditAnchorHandle, Name: tpm2.TPM2BName{Buffer: name}, Public: pub}, nil
}

// expectedNames are the anchor's names, unwritten and written (anchorIndex).
func (g *gateRecord) expectedNames() (unwritten, written []byte, err error) {
	u, err := g.anchorIndex(false)
	if err != nil {
		return nil, nil, err
	}
	w, err := g.anchorIndex(true)
	if err != nil {
		return nil, nil, err
	}
	return u.Name.Buffer, w.Name.Buffer, nil
}

func (an *trailAnchor) Read() ([]byte, error) {
	an.proven.Store(nil)
	g, err := an.gate()
	if err != nil {
		return nil, err
	}
	if an.moveUnfinished(g, false) {
		return nil, an.moveUnfinishedErr()
	}
	if g == nil {
		if !an.legacy {
			return nil, audit.ErrAnchorEmpty
		}
		var v []byte
		err := an.t.WithAuthenticatedNV(func(r *tpm.AuthenticatedNV) error {
			x, err := r.ReadPublic(AuditAnchorHandle)
			if err != nil {
				return err
			}
			v, err = r.ReadExtendIndex(x)
			return err
		})
		if errors.Is(err, tpm.ErrNotFound) || errors.Is(err, tpm.ErrNVUninitialized) {
			return nil, audit.ErrAnchorEmpty
		}
		return v, err
	}
	unwritten, written, err := g.expectedNames()
	if err != nil {
		return nil, err
	}
	// Read in an audit session salted to the pinned SRK: what verify and
	// every record compare the trail with is the TPM's, not the bus's.
	// First as the index it must be (written, gated by this gate): the
	// TPM keys the session's command HMAC with the name it holds, so it
	// answers only if the index is that one (issue 14: no NV_ReadPublic,
	// 3 commands). Any failure is told apart by the full read below.
	want, err := g.writtenAnchor()
	if err != nil {
		return nil, err
	}
	var v []byte
	err = an.t.WithAuthenticatedNV(func(r *tpm.AuthenticatedNV) error {
		var err error
		v, err = r.ReadExtendIndex(want)
		var te *tpm.Error
		if err == nil || !errors.As(err, &te) {
			return err // read, or no answer of the TPM's to tell apart
		}
		// The TPM refused the read: tell why from the index it holds.
		// An error answer has no HMAC, nor has NV_ReadPublic's: only
		// what the TPM says in the session counts (found by review: A1
		// answering the read NV_UNINITIALIZED and NV_ReadPublic with
		// the written bit cleared made a genuine trail "tampered"). If
		// the TPM says the index is the written anchor, the refusal
		// was not the TPM's.
		switch has, err := r.Has(want); {
		case has:
			return fmt.Errorf("%w: the audit anchor's read was refused, but the TPM holds it as written", tpm.ErrResponseForged)
		case errors.Is(err, tpm.ErrResponseForged):
			return err
		}
		x, err := r.ReadPublic(AuditAnchorHandle)
		if errors.Is(err, tpm.ErrNotFound) {
			return fmt.Errorf("%w: %w (NV index 0x%08x is gone)", api.ErrTampered, errAnchorMoved, uint32(AuditAnchorHandle))
		}
		if err != nil {
			return err
		}
		switch {
		case string(x.Name.Buffer) == string(unwritten):
			switch has, err := r.Has(x); {
			case has || errors.Is(err, tpm.ErrNoSession):
				return audit.ErrAnchorEmpty
			case err != nil:
				return err
			}
			return fmt.Errorf("%w: TPM2_NV_ReadPublic says the audit anchor is unwritten, the TPM does not", tpm.ErrResponseForged)
		case string(x.Name.Buffer) != string(written):
			return fmt.Errorf("%w: %w (NV index 0x%08x has name %x, this trail's anchor is %x)",
				api.ErrTampered, errAnchorMoved, uint32(AuditAnchorHandle), x.Name.Buffer, written)
		}
		v, err = r.ReadExtendIndex(x)
		return err
	})
	if err == nil {
		// Read as want, or as x of want's name: the TPM keyed the read's
		// command HMAC with the name it holds.
		an.proven.Store(&want)
	}
	return v, err
}

// Prepare readies the gated extend of head before the log writes its line: the
// gate key is loaded under the SRK (one command: tpm.LoadGate), the anchor's
// public is read (1; none when the last Read proved the anchor, as a
// one-shot command's record after the trail's open: provenAnchor), the
// gate proves its authorization in a policy session salted to the pinned
// SRK (4: two StartAuthSession, PolicySecret in a one-use HMAC session
// keyed by the gate's authorization value, bound to the extend of head by
// its cpHashA, PolicyCommandCode; 3 when the operation's shared session is
// still started: the PolicySecret is authorized in it, tpm.TPM.proveGate)
// and is flushed (1); the extend is then one command, its response
// authenticated by the salted session, and release flushes the session
// (1). 7 to 9 commands per record, where the ungated index took 1
// (ReadPrepare shares the anchor read's session).
// Without a gate only a legacy trail's ungated index is extended (record()
// gives every trail a gate before it appends).
func (an *trailAnchor) Prepare(head []byte) (extend func() error, release func() error, err error) {
	g, err := an.gate()
	if err != nil {
		return nil, nil, err
	}
	if g == nil {
		if !an.legacy {
			return nil, nil, errors.New("audit: the trail has no anchor yet")
		}
		return func() error { return an.t.NVExtend(AuditAnchorHandle, head) }, func() error { return nil }, nil
	}
	if g.Name != an.move && an.moveUnfinished(g, true) {
		// Another's move, marked since this trail's anchor was last read
		// (a log's first append after its open reads no anchor): its
		// index is its record's to extend first (found by review 21: a
		// one-shot seal opened before an officer's reanchor that failed
		// after its define extended the new index, and the move made
		// again named it replaced).
		return nil, nil, an.moveUnfinishedErr()
	}
	proven := an.provenAnchor(g)
	ge, err := an.withGate(g, func(gk tpm.Gate) (*tpm.GatedExtend, error) {
		if proven == nil {
			return an.t.PrepareGatedExtend(AuditAnchorHandle, gk, head)
		}
		if ge, ok, err := an.kept.again(an.t, gk, *proven, head); ok {
			return ge, err
		}
		return an.t.PrepareGatedExtendOf(*proven, gk, head)
	})
	if err != nil {
		return nil, nil, err
	}
	return gatedExtend(ge), an.kept.release(ge), nil
}

// provenAnchor takes the anchor the last Read proved or newGatedAnchor
// defined (proven), if it is still this gate's anchor, written or not (a
// new trail's gate has another); nil otherwise. Whatever happened since,
// the proof Prepare makes is for that name: an index recreated meanwhile
// refuses the extend (tampering, as it is).
func (an *trailAnchor) provenAnchor(g *gateRecord) *tpm.NVIndex {
	x := an.proven.Swap(nil)
	if x == nil {
		return nil
	}
	for _, written := range []bool{true, false} {
		if want, err := g.anchorIndex(written); err == nil && bytes.Equal(want.Name.Buffer, x.Name.Buffer) {
			return x
		}
	}
	return nil
}

// withGate runs prepare with the gate key: the one zeroize holds, the one
// kept loaded (gateKeep), the persistent one (issue 14: no load, no flush),
// or loaded for it and flushed after (the prepared session holds the
// proof). A persistent gate that does not prove (tpm.ErrPersistentGate:
// evicted or replaced by whoever has the owner's authorization, or the bus
// refused it) leaves nothing proved, and prepare runs again with the gate
// loaded from its blob: the trail goes on as before gates were persistent.
// A failed flush fails the preparation, its session closed.
func (an *trailAnchor) withGate(g *gateRecord, prepare func(tpm.Gate) (*tpm.GatedExtend, error)) (*tpm.GatedExtend, error) {
	if h := *an.held; h != nil && hex.EncodeToString(h.Name.Buffer) == g.Name {
		// Zeroize's, for its trail's gate only (found by review 23: a
		// move's record was proved with it for another gate's index).
		return prepare(*h)
	}
	if gk := an.kept.loaded(an.t, g); gk != nil {
		return prepare(*gk)
	}
	gone := false
	if gk, ok := g.persistent(); ok {
		ge, err := prepare(gk)
		if !errors.Is(err, tpm.ErrPersistentGate) {
			return ge, err
		}
		gone = true
		an.log.Debug("the persistent audit gate did not prove; loading it from its blob", "err", err)
	}
	if *an.held != nil {
		// Zeroize holds its trail's gate, and this is another's (a
		// move another process made meanwhile): a load needs the SRK,
		// which zeroize --srk may have evicted and SRK would put back
		// (found by review 24). The record waits; zeroize run again
		// writes it.
		return nil, errGateMovedInZeroize
	}
	gen := an.t.Generation() // before the load: the gate is of this one
	gk, err := an.loadGate(g)
	if err != nil {
		return nil, err
	}
	// The load's handle came in an answer with no HMAC: renamed on the bus
	// (to another object, and the proof fails; or to A1's own copy of the
	// gate, made by a replay of an earlier load of its blob, which the
	// password allows, and the proof passes), the flush below takes
	// another handle and the gate stays loaded, held by nobody. The sweep
	// after the operation flushes what provd does not hold (found by
	// review, as for the AK; before, only a failed proof asked for it).
	// Zeroize's held gate asks for it too (holdGate).
	an.t.Unheld()
	ge, err := prepare(gk)
	if err == nil && gone && an.t.Generation() == gen {
		an.persistAgain(g, gk)
	}
	if err == nil && an.kept.keep(gk, gen) {
		return ge, nil
	}
	if ferr := an.t.Flush(gk.Handle); ferr != nil {
		if ge != nil {
			ferr = errors.Join(ferr, ge.Close())
		}
		return nil, errors.Join(err, ferr)
	}
	return ge, err
}

// persistAgain makes the gate gk, loaded and proved (it is the trail's),
// persistent again where the record's persistent one did not prove: the
// next records prove it in place, and whatever took its handle (another
// key, one that counts against the dictionary-attack lockout at each
// refused proof among them) is evicted. Where the TPM refuses (no
// persistent slot left, an owner password set since), audit.gate no longer
// names the handle, so that later records, in this process and others,
// load the gate at once rather than try the handle, spend the refused
// proof and try to make it persistent again at every record (found by
// review: 31 commands a one-shot seal, where 21 load it). It is rewritten
// only if it is still g (the caller holds the trail's lock, as every writer
// of audit.gate but zeroize's removal does). An interrupted try (a reset,
// power cut or migration) changes nothing: the next record tries again.
func (an *trailAnchor) persistAgain(g *gateRecord, gk tpm.Gate) {
	gen := an.t.Generation()
	_, err := persistGateKey(an.t, gk, true)
	if err == nil {
		return
	}
	an.log.Debug("the audit gate could not be made persistent again", "err", err)
	var te *tpm.Error
	if an.t.Generation() != gen || !errors.As(err, &te) {
		return
	}
	now, rerr := an.gate()
	if rerr != nil || now == nil || *now != *g {
		return
	}
	now.Persistent = 0
	if werr := writeGateRecord(an.dir, *now); werr != nil {
		an.log.Debug("audit.gate could not be rewritten without its persistent handle", "err", werr)
	}
}

// writeGateRecord writes audit.gate (mode 0600, atomically).
func writeGateRecord(dir string, g gateRecord) error {
	b, err := json.Marshal(g)
	if err != nil {
		return err
	}
	return store.WriteFile(filepath.Join(dir, gateFile), b, 0o600)
}

// gatedExtend is the extend of a prepared gated extend: a policy the index
// does not accept is the anchor moved (tampering).
func gatedExtend(ge *tpm.GatedExtend) func() error {
	return func() error {
		err := ge.Extend()
		if errors.Is(err, tpm.ErrPolicyNotSatisfied) {
			return fmt.Errorf("%w: %w: %v", api.ErrTampered, errAnchorMoved, err)
		}
		return err
	}
}

// ReadPrepare is Read then Prepare in one session (issue 14): the gate
// key's session reads the anchor as the index it must be, this trail's
// written anchor, and proves the gate for the extend of head
// (tpm.ReadPrepareGatedExtend). A record in the daemon is then 8 commands
// where Read and Prepare took 10: StartAuthSession, NV_Read,
// StartAuthSession, PolicySecret, PolicyCommandCode, FlushContext, the
// extend and the policy session's flush (and the gate's load and flush in
// a process that does not hold it). When the TPM refuses that read (the
// index was never extended, or is another: Read tells which), or no SRK is
// pinned, it is Read then Prepare.
func (an *trailAnchor) ReadPrepare(head []byte) (value []byte, extend func() error, release func() error, err error) {
	an.proven.Store(nil)
	g, err := an.gate()
	if err != nil {
		return nil, nil, nil, err
	}
	if an.moveUnfinished(g, true) {
		return nil, nil, nil, an.moveUnfinishedErr()
	}
	if g != nil {
		value, ge, err := an.readPrepare(g, head)
		if err == nil {
			return value, gatedExtend(ge), ge.Close, nil
		}
		if !errors.Is(err, errReadApart) {
			return nil, nil, nil, err
		}
	}
	value, err = an.Read()
	if errors.Is(err, audit.ErrAnchorEmpty) {
		value, err = nil, nil
	}
	if err != nil {
		return nil, nil, nil, err
	}
	extend, release, err = an.Prepare(head)
	return value, extend, release, err
}

// errReadApart: readPrepare left nothing loaded, and the anchor is to be
// read and prepared apart.
var errReadApart = errors.New("audit anchor: read apart")

// readPrepare is ReadPrepare's shared session.
func (an *trailAnchor) readPrepare(g *gateRecord, head []byte) ([]byte, *tpm.GatedExtend, error) {
	want, err := g.writtenAnchor()
	if err != nil {
		return nil, nil, err
	}
	var value []byte
	ge, err := an.withGate(g, func(gk tpm.Gate) (ge *tpm.GatedExtend, err error) {
		value, ge, err = an.t.ReadPrepareGatedExtend(want, gk, head)
		return ge, err
	})
	// Only the TPM's refusal of the read sends the caller to Read, which
	// tells why; a session it could not start, or a forged answer, is
	// the record's failure as with Read.
	var te *tpm.Error
	if errors.Is(err, tpm.ErrNoSharedSession) || errors.As(err, &te) && te.Command == "TPM2_NV_Read" {
		return nil, nil, errReadApart
	}
	return value, ge, err
}

// Extend is Prepare, extend and release in one (audit repair --anchor-last).
func (an *trailAnchor) Extend(head []byte) (err error) {
	extend, release, err := an.Prepare(head)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, release()) }()
	return extend()
}

// blob is the gate key's blob.
func (g *gateRecord) blob() (tpm.Blob, error) {
	raw, err := hex.DecodeString(g.Blob)
	if err != nil {
		return tpm.Blob{}, fmt.Errorf("%w: %s: %v", api.ErrTampered, gateFile, err)
	}
	blob, err := tpm.UnmarshalBlob(raw)
	if err != nil {
		return tpm.Blob{}, fmt.Errorf("%w: %s: %v", api.ErrTampered, gateFile, err)
	}
	return blob, nil
}

func (an *trailAnchor) loadGate(g *gateRecord) (tpm.Gate, error) {
	blob, err := g.blob()
	if err != nil {
		return tpm.Gate{}, err
	}
	auth, err := g.auth()
	if err != nil {
		return tpm.Gate{}, err
	}
	srk, err := an.t.SRK()
	if err != nil {
		return tpm.Gate{}, err
	}
	gk, err := an.t.LoadGate(srk, blob, auth)
	if err != nil {
		return tpm.Gate{}, fmt.Errorf("audit gate key: %w", err)
	}
	if want, _ := g.name(); string(gk.Name.Buffer) != string(want) {
		return tpm.Gate{}, errors.Join(fmt.Errorf("%w: %s names another key", api.ErrTampered, gateFile), an.t.Flush(gk.Handle))
	}
	return gk, nil
}

// persistGate makes a new gate key persistent at AuditGateHandle, so that
// every record proves it in place (issue 14: no TPM2_Load and no flush per
// record). What the handle holds is read first (ReadPublic): empty, or a
// gate of provd's (ownGate), it is taken; anything else only by a new
// trail a provision begins (Agent.replaceAnchor: the provision was done,
// over nothing foreign at the anchor's handle or with --force, as the
// anchor's handle is taken over), and then its name is returned (replaced)
// for the new trail's audit-anchor record; otherwise the gate stays
// transient (found by review: a new trail evicted another application's
// key there, with no trace). 4 commands (ReadPublic, Load, EvictControl,
// FlushContext), 5 where something is evicted first, and the sweep the
// load asks for after the operation (3 GetCapability). It returns the
// handle, or 0 when the gate stays transient (the handle not provd's to
// take, an owner password, no persistent slot left, the bus): records then
// load the gate from its blob, as before. The answers are the bus's word either way:
// what the handle holds is proved by each record's proof, whose HMAC and
// policy digest take the gate's name (tpm.PersistentGate).
//
// evicting is called with the name of an object not provd's before it is
// evicted (the move marks it: newGatedAnchor); its error leaves the gate
// transient.
func (a *Agent) persistGate(cur *gateRecord, oldPolicy []byte, blob tpm.Blob, auth []byte, evicting func(name string) error) (handle uint32, replaced string) {
	var err error
	for range 3 {
		gen := a.t.Generation()
		var evicted string
		evicted, err = a.persistGateOnce(cur, oldPolicy, blob, auth, gen, evicting)
		if evicted != "" {
			// Recorded whatever comes after (found by review: a try an
			// event ended after the eviction lost the name).
			replaced = evicted
		}
		if err == nil {
			return uint32(AuditGateHandle), replaced
		}
		if a.t.Generation() == gen {
			break // refused, not interrupted
		}
		// A reset, power cut or migration on the way (found by review:
		// one honest fault here left the trail's gate transient for good):
		// again, from the read (measured: a power cut moved the
		// generation once in each of the first two tries).
	}
	a.log.Debug("the audit gate stays transient: each record loads it", "err", err)
	return 0, replaced
}

// persistGateOnce is one try of persistGate, in TPM generation gen (read
// before it). It returns the name of an object it evicted that is not a
// gate of provd's ("" for none). The load's handle is used only in that
// generation, and flushed but where a moved generation may have given its
// number to another object (tpm.TPM.ForgetsStale; found by review, as
// gateKeep's: behind a resource manager, where no sweep runs, a load
// forgotten there stayed loaded). The SRK is asked for in each try: a
// transient copy of it (where 0x81000001 is empty) does not outlive a
// reset (found by review 34: the next try loaded the gate under the dead
// copy's handle, and the new trail's gate stayed transient).
func (a *Agent) persistGateOnce(cur *gateRecord, oldPolicy []byte, blob tpm.Blob, auth []byte, gen uint64, evicting func(string) error) (replaced string, err error) {
	there, err := a.t.ReadPublic(AuditGateHandle)
	occupied, foreign := err == nil, ""
	switch {
	case errors.Is(err, tpm.ErrNotFound):
	case err != nil:
		return "", err
	case a.ownGate(cur, oldPolicy, there.Name.Buffer):
	case a.replaceAnchor:
		foreign = hex.EncodeToString(there.Name.Buffer)
	default:
		return "", fmt.Errorf("0x%08x holds another object (name %x), not a gate of provd's: left as it is", uint32(AuditGateHandle), there.Name.Buffer)
	}
	srk, err := a.t.SRK()
	if err != nil {
		return "", err
	}
	gk, err := a.t.LoadGate(srk, blob, auth)
	if err != nil {
		return "", err
	}
	a.t.Unheld() // the load's handle is the bus's word (withGate)
	defer func() {
		if a.t.ForgetsStale(gen) {
			return
		}
		if ferr := a.t.Flush(gk.Handle); ferr != nil {
			a.log.Debug("flush of the audit gate after its persistence failed", "err", ferr)
		}
	}()
	if a.t.Generation() != gen {
		return "", errGenerationMoved
	}
	if foreign != "" {
		if err := evicting(foreign); err != nil {
			return "", err
		}
	}
	evicted, err := persistGateKey(a.t, gk, occupied)
	if evicted {
		replaced = foreign
	}
	return replaced, err
}

// errGenerationMoved: the TPM reset, lost power or was migrated since a
// handle was made; it is not used.
var errGenerationMoved = errors.New("the TPM restarted since the handle was made")

// ownGate reports whether name is a gate key of provd's on this TPM: this
// trail's gate (cur), the gate of the anchor newGatedAnchor replaces (its
// authPolicy is GatePolicy of that name; foreignAnchor let it be
// replaced), or a gate this state directory's trail or archived trails
// name (trailGateKey: a zeroize that did not get to evict it, an earlier
// gate of this trail).
func (a *Agent) ownGate(cur *gateRecord, oldPolicy, name []byte) bool {
	if cur != nil && cur.Name == hex.EncodeToString(name) {
		return true
	}
	if p, err := tpm.GatePolicy(name, tpm2.TPMCCNVExtend); err == nil && len(oldPolicy) > 0 && bytes.Equal(p, oldPolicy) {
		return true
	}
	return a.trailGateKey(hex.EncodeToString(name))
}

// trailGateKey reports whether name is the gate_key of an audit-anchor
// record of this state directory's trail or of its archived trails: a gate
// of provd's this state made, which a later trail or a forged answer left
// at the handle (found by review: one forged ReadPublic in a reanchor kept
// every later one from taking the handle back).
func (a *Agent) trailGateKey(name string) bool {
	found, _ := a.anyTrail(true, func(recs []audit.Record) bool {
		return slices.ContainsFunc(recs, func(r audit.Record) bool { return r.Op == audit.OpAnchor && r.Objects["gate_key"] == name })
	})
	return found
}

// persistGateKey makes the loaded gate key gk persistent at
// AuditGateHandle, evicting what is there first when occupied (1 or 2
// commands); evicted says something was.
func persistGateKey(t *tpm.TPM, gk tpm.Gate, occupied bool) (evicted bool, err error) {
	if occupied {
		err := t.Evict(AuditGateHandle)
		if err != nil && !errors.Is(err, tpm.ErrNotFound) {
			return false, err
		}
		evicted = err == nil
	}
	return evicted, t.Persist(gk.Object, AuditGateHandle)
}

// ensureGated gives a trail without a gate (a new one, or one anchored by a
// provd before gates, verified by openAudit) its gated anchor. The first
// record of a new trail is then its audit-anchor record. A trail whose gate
// has no authorization value (version 1: anyone who recorded the gate's
// load on the bus could extend the anchor), verified by openAudit, moves to
// a new gate the same way. forRecord: Agent.record asks, and writes a
// record after the new trail's first (gateKeep).
func (a *Agent) ensureGated(ctx context.Context, forRecord bool) error {
	g, err := a.trailAnchor().gate()
	if err != nil || g != nil && g.Version == gateVersion {
		return err
	}
	why := "new trail"
	switch {
	case g != nil:
		why = "moved from a gate without an authorization value"
	case a.trailAnchor().legacy:
		why = "moved from an ungated anchor"
	case !a.replaceAnchor:
		if err := a.foreignAnchor(); err != nil {
			return err
		}
	}
	// The new trail's first record and the record this is for prove the
	// same gate one after the other: one load of it, one policy session
	// (record drops them).
	a.gateKeep.on = forRecord
	_, err = a.anchorTrail(ctx, why, nil)
	return err
}

// errForeignAnchor: the TPM's audit anchor handle holds an index, and this
// state directory has no trail of its own: another state's trail (or a
// wiped one's) is anchored there.
var errForeignAnchor = errors.New("the TPM's audit anchor belongs to another state directory's trail")

// foreignAnchor refuses to begin a trail in this state directory over an
// index at the anchor's handle (found by issue 14's review of provision: a
// provision in a fresh state directory, or a refusal recorded in one,
// replaced another state's anchor, and that trail no longer verified).
// Only provision replaces it, when told --force (Agent.replaceAnchor); the
// new trail's first record names what it replaced. The read is the bus's
// word: an interposer can make provd refuse, and hiding the index only
// lets newGatedAnchor replace it as before. The one index a state
// directory without a trail takes as its own is one its archived trails
// last anchored in (an archive's last audit-anchor record's nv_name; each
// trail's gate key is new, so its name is no other trail's): zeroize's
// crash window leaves it for the next trail to replace (and record). Any
// archive was not enough (found by the review: every completed zeroize
// leaves one, and such a state directory took another state's anchor
// over).
func (a *Agent) foreignAnchor() error {
	pub, err := a.t.ReadNVPublic(AuditAnchorHandle)
	if errors.Is(err, tpm.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	// An index never extended anchors no trail (found by make reliability:
	// a power cut during a new trail's NV_DefineSpace left the index
	// defined and its gate unwritten; the state directory then refused its
	// own next trail for good).
	if !pub.Public.Attributes.Written {
		return nil
	}
	if own, err := a.archivedAnchor(hex.EncodeToString(pub.Name.Buffer)); err == nil && own {
		return nil
	}
	return foreignAnchorError(fmt.Sprintf("%v (NV index 0x%08x, name %x): this TPM was provisioned with another state directory, and that trail would no longer verify. Use the state directory it belongs to; provision --force replaces it (the new trail records what it replaced)",
		errForeignAnchor, uint32(AuditAnchorHandle), pub.Name.Buffer))
}

// archivedAnchor reports whether one of this state directory's archived
// trails (audit-<UTC time>.log) last anchored in the index named name (the
// nv_name of its last audit-anchor record). Every archive is read: their
// names are times, and a clock that went back would put the newest first.
func (a *Agent) archivedAnchor(name string) (bool, error) {
	return a.anyTrail(false, func(recs []audit.Record) bool {
		for i := len(recs) - 1; i >= 0; i-- {
			if recs[i].Op == audit.OpAnchor {
				return recs[i].Objects["nv_name"] == name
			}
		}
		return false
	})
}

// anyTrail reports whether match holds for the records of one of this
// state directory's archived trails (audit-<UTC time>.log), or of the live
// trail too when live. Only regular files are read: a FIFO or a link
// planted under the name (A4) would hold the operation, or read without
// end; a trail that does not read is skipped.
func (a *Agent) anyTrail(live bool, match func([]audit.Record) bool) (bool, error) {
	paths, err := filepath.Glob(filepath.Join(a.dir, "audit-*.log"))
	if err != nil {
		return false, err
	}
	if live {
		paths = append(paths, a.auditPath())
	}
	for _, p := range paths {
		if fi, err := os.Lstat(p); err != nil || !fi.Mode().IsRegular() {
			continue
		}
		if recs, err := audit.ReadRecords(p); err == nil && match(recs) {
			return true, nil
		}
	}
	return false, nil
}

// foreignAnchorError is errForeignAnchor, and api.ErrAlreadyProvisioned for
// its kind and exit code, without that error's advice to zeroize: nothing
// of this state directory's would be.
type foreignAnchorError string

func (e foreignAnchorError) Error() string { return string(e) }
func (e foreignAnchorError) Is(target error) bool {
	return target == errForeignAnchor || target == api.ErrAlreadyProvisioned
}

// gateThroughPinnedSRK moves the trail to a new gate when its gate key was
// not created through the SRK pinned now (a trail begun before first
// contact, where the bus named the SRK): provision calls it once the
// identity is pinned.
func (a *Agent) gateThroughPinnedSRK(ctx context.Context) error {
	g, err := a.trailAnchor().gate()
	if err != nil {
		return err
	}
	pinned := hex.EncodeToString(a.t.PinnedSRKName())
	if g == nil || pinned == "" || g.SRK == pinned {
		return nil
	}
	_, err = a.anchorTrail(ctx, "a gate created through the TPM identity pinned at provisioning", nil)
	return err
}

// AuditReanchor is the way out when the anchor moved under provd's feet (an
// index removed or redefined by another process): it records what verify
// found and what the TPM now holds at the handle, and moves the trail to a
// new gated anchor. A trail whose own anchor disagrees with it (a line
// edited, removed or added) or whose lines no longer link up is not blessed:
// it is archived beside the state as audit-<UTC time>.log, as evidence, and
// a new trail starts whose first record names it and its SHA-256. The
// daemon allows it to the crypto officer only.
func (a *Agent) AuditReanchor(ctx context.Context) (api.AuditReanchorResult, error) {
	defer a.lock()()
	var res api.AuditReanchorResult
	waits, srkEvicted := waitingZeroize(a.dir)
	if waits {
		// A zeroize destroyed the keys and left the trail, its record
		// waiting: zeroize run again finishes (found by review 26: the
		// officer's reanchor moved the trail and put back the SRK
		// zeroize --srk had evicted). Where it cannot (the trail
		// tampered with), the reanchor goes on and its record says
		// what is left to do.
		can, err := a.zeroizeCanFinish()
		if err != nil {
			return res, err
		}
		if can {
			return res, errZeroizeUnfinished
		}
	}
	// A state directory with no trail (no gate, no log) and no PK (a new
	// or mistaken --state-dir: what waits in its pending file is no trail)
	// has nothing to reanchor, and does not take another state's anchor
	// over (found by the reviews: it did, and that trail no longer
	// verified). A provisioned one whose trail files are gone reanchors:
	// it is the way out the message names. A state that cannot be read
	// now (locked by another process, or the request given up) is
	// refused: it may be either (found by the third review).
	if g, err := a.trailAnchor().gate(); err != nil {
		return res, err
	} else if (g == nil || g.Moving != nil) && !a.trailAnchor().legacy {
		// A marked move with no line in the log is no trail either
		// (found by review: a new trail's first move, interrupted, let
		// the reanchor take another state's anchor over).
		has, err := a.hasPK(ctx)
		if err != nil {
			return res, err
		}
		if !has {
			if err := a.foreignAnchor(); err != nil {
				return res, err
			}
		}
	}
	if a.audit != nil {
		if err := a.audit.Close(); err != nil {
			return res, err
		}
		a.audit = nil
	}
	// A mark whose move's record is in (a crash before its clearing) is
	// no unfinished move: cleared first, under the log's lock (found by
	// review: copied into this record as interrupted, and, the log
	// archived, made again later with the finished move's gate).
	if g, err := a.trailAnchor().gate(); err == nil && g != nil && g.Moving != nil && fileExists(a.auditPath()) {
		if err := audit.Locked(a.auditPath(), audit.Options{Anchor: a.trailAnchor()}, func() error {
			now, err := a.trailAnchor().gate()
			if err != nil || now == nil || now.Moving == nil || !moveRecorded(a.auditPath(), now.Name) {
				return err
			}
			return clearMove(a.dir, now.Name)
		}); err != nil {
			return res, err
		}
	}
	objects := map[string]string{}
	if waits {
		objects["zeroize_waiting"] = "a zeroize destroyed the keys and its record waits: provd zeroize run again finishes"
		if srkEvicted {
			objects["zeroize_waiting"] += " (it evicted the SRK: zeroize run again evicts it if it is back)"
		}
	}
	if a.srkEvictionOwed() {
		// The record that owes it may go into the archive with the log
		// (found by review 30: the officer's reanchor of a torn log
		// archived it, and the debt was forgotten): the new trail's
		// first record carries it.
		objects[srkEvictionOwedKey] = "true"
	}
	vrep, verr := audit.Verify(a.auditPath(), a.trailAnchor())
	if verr != nil && !errors.Is(verr, audit.ErrTampered) && !errors.Is(verr, audit.ErrTornTail) && !errors.Is(verr, api.ErrTampered) && !errors.Is(verr, errMoveUnfinished) {
		return res, verr // not the trail's fault (the TPM, the file system): nothing to record yet
	}
	if verr != nil {
		objects["verify_error"] = verr.Error()
		res.Found = verr.Error()
	}
	// Lines are kept in place only when the anchor itself moved (the index
	// is not the trail's own: nothing in the TPM can say which lines are
	// genuine, so the record says what was found) and they link up. When the
	// trail's own anchor disagrees with the log, the log changed: it is
	// archived, never blessed.
	_, lerr := audit.VerifyLinks(a.auditPath())
	if verr != nil && !errors.Is(verr, errAnchorMoved) && !errors.Is(verr, errMoveUnfinished) && lerr == nil {
		lerr = verr
	}
	_, rerr := os.Stat(a.auditPath())
	if errors.Is(rerr, os.ErrNotExist) {
		// The log itself is gone (the anchor says there was one): nothing
		// to archive; the record names what the anchor held.
		objects["log_missing"] = "true"
		lerr, rerr = nil, nil
	}
	if rerr != nil {
		return res, rerr
	}
	var move audit.Move
	if err := lerr; err != nil {
		// Archived by the move, under the log's lock, and cut from the
		// live log only once the move's mark names the archive (found by
		// review: renamed away before the mark, then a fault, and no
		// record named the archive).
		move.Archive = a.archiveName()
		objects["archived_because"] = err.Error()
		res.ArchivedLog = move.Archive
	} else {
		objects["lines_before"] = fmt.Sprint(vrep.Lines)
	}
	if g, err := a.trailAnchor().gate(); err == nil && g != nil && g.Moving != nil {
		// An unfinished move's record goes into this one (found by
		// review: a move that archived a log, then interrupted, lost its
		// findings when taken over).
		for k, v := range g.Moving.Objects {
			objects["interrupted_move."+k] = v
		}
		objects["interrupted_move.uid"] = strconv.Itoa(g.Moving.UID)
		if p := a.markedArchive(g.Moving); p != "" {
			// Its decision to archive the log stands (found by review:
			// the reanchor run again kept a log its anchor contradicts
			// in place, the mark's archive never written): the log goes
			// to that archive, as the mark names it, and begins anew.
			move = audit.Move{Archive: p}
			objects["archived_log"] = filepath.Base(p)
			putNonEmpty(objects, "archived_sha256", g.Moving.Objects["archived_sha256"])
			putNonEmpty(objects, "archived_because", g.Moving.Objects["archived_because"])
			delete(objects, "lines_before")
			res.ArchivedLog = move.Archive
		}
	}
	objects["reason"] = "reanchor"
	move.LostOK = true // the officer's word: lines in no file are recorded lost
	rep, err := a.moveTrail(audit.Record{UID: a.callerUID(ctx), Objects: objects}, nil, move)
	if err != nil {
		return res, err
	}
	res.Lines, res.Head = rep.Lines, hex.EncodeToString(rep.Head)
	recs, err := audit.ReadRecords(a.auditPath())
	if err == nil && len(recs) > 0 {
		res.Record = recs[len(recs)-1]
	}
	return res, err
}
