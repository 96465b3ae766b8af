package agent

// A move of the audit trail to a new anchor (a new trail, provision's move
// to a gate made through the pinned SRK, an old gate's replacement, the
// officer's reanchor) removes one NV index at the anchor's fixed handle
// and defines another: a crash or a fault in between must leave a state
// the next audited operation recovers by itself. The move is marked in
// audit.gate before the old index goes (gateRecord.Moving) and made again
// under the log's lock until its record is anchored (finishMove).

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// anchorMove is a move to a new anchor that is not known to be finished.
type anchorMove struct {
	// Objects and UID are the move's audit-anchor record as the move
	// began it (why, the officer's findings, the index and the gate it
	// replaces: the evidence), written as they are when the move is made
	// again.
	Objects map[string]string `json:"record"`
	UID     int               `json:"uid"`
	// Known are the names (hex) of indices the anchor's handle may hold
	// that are this trail's: the trail's anchor before the move (its
	// gate's index, written or not), what the move found at the handle,
	// and the same of every interrupted move it makes again. With nothing
	// there, or this gate's own index, they are what finishMove takes.
	Known []string `json:"known_nv_names"`
	// Evicting is the name of an object not provd's that the move was
	// about to evict at AuditGateHandle (persistGate): replaced_gate_name
	// once the eviction is known to be done.
	Evicting string `json:"evicting_gate_name,omitempty"`
	// Fresh: the move begins the log anew, its lines archived (the
	// officer's reanchor of a log its anchor contradicts, audit.Move's
	// Archive); made again, it cuts them too.
	Fresh bool `json:"fresh,omitempty"`
}

// errMoveUnfinished: audit.gate says a move to a new anchor was not
// finished (gateRecord.Moving, moveUnfinished); the trail is not read
// against any index until finishMove has made the move again. It is an
// api.ErrAuditMoveUnfinished (audit_move_unfinished, exit 8): scripts tell
// it apart from a tampered trail (exit 14) and from any other error.
var errMoveUnfinished error = moveUnfinished{}

type moveUnfinished struct{}

func (moveUnfinished) Error() string {
	return "the audit trail was moving to a new anchor when provd stopped or the TPM failed (audit.gate says so): " +
		"the next audited operation, or provd audit repair, makes the move again"
}

func (moveUnfinished) Is(target error) bool { return target == api.ErrAuditMoveUnfinished }

// moveUnfinishedErr is why the trail is read against no index while a
// move is marked: errMoveUnfinished, or errZeroizeUnfinished while a
// zeroize's record waits (only zeroize run again makes the move: found by
// review 26, verify and status named audit repair, which is refused).
func (an *trailAnchor) moveUnfinishedErr() error {
	if waits, _ := waitingZeroize(an.dir); waits {
		return errZeroizeUnfinished
	}
	return errMoveUnfinished
}

// newGatedAnchor replaces whatever is at the anchor's handle with a new
// gated extend index under a new gate key, and writes audit.gate. rec is
// the move's audit-anchor record as it will be written; it returns what
// the record adds: the new index and gate, and the name and value of the
// index it replaced (the evidence of whatever was there). The index
// defined is an's to extend first (proven: no NV_ReadPublic).
//
// audit.gate names the new gate, the move marked (gateRecord.Moving: the
// record, and the names the handle may hold), before the old index is
// removed: a crash or a fault at any step leaves the old trail whole
// (before that write) or a marked move, which openAudit makes again
// (finishMove). The mark is cleared once the move's record is anchored
// (moveTrail). A move made again over nothing or over the interrupted
// move's own unwritten index keeps the evidence its record has (what the
// interrupted move replaced); over anything else it names what it finds.
func (a *Agent) newGatedAnchor(an *trailAnchor, rec audit.Record, again, fresh bool) (map[string]string, error) {
	objects := map[string]string{"nv_index": fmt.Sprintf("0x%08x", uint32(AuditAnchorHandle))}
	cur, _ := an.gate()  // the gate this trail had, if any (an officer's reanchor, a move made again)
	var oldPolicy []byte // the replaced anchor's authPolicy: its gate's (ownGate)
	old, err := a.t.ReadNVPublic(AuditAnchorHandle)
	there := err == nil
	if err != nil && !errors.Is(err, tpm.ErrNotFound) {
		return nil, err
	}
	var known []string
	if cur != nil {
		if u, w, err := cur.expectedNames(); err == nil {
			known = append(known, hex.EncodeToString(u), hex.EncodeToString(w))
		}
		if cur.Moving != nil {
			known = append(known, cur.Moving.Known...)
		}
	}
	// The interrupted move's own index, never written, anchored nothing;
	// with it or nothing there, the record keeps what that move replaced
	// (found by review: a written one is the anchor this move replaces,
	// and is named as such).
	// Its own index written by no record of its own (no honest path
	// since review 21: an append under another's mark extends nothing)
	// is named with its value, and the record still names what that
	// move replaced (found by review 21: named as the replaced anchor,
	// the trail's anchor before the move was in no record).
	u, w, merr := cur.expectedNamesIfMoving()
	ownWritten := merr == nil && there && bytes.Equal(old.Name.Buffer, w)
	carry := merr == nil && (!there || bytes.Equal(old.Name.Buffer, u) || ownWritten)
	if ownWritten {
		if v, err := a.t.ReadExtendIndex(old); err == nil {
			objects["unrecorded_nv_value"] = hex.EncodeToString(v)
		}
	}
	if there {
		oldPolicy = old.Public.AuthPolicy.Buffer
		known = append(known, hex.EncodeToString(old.Name.Buffer))
	}
	switch {
	case carry:
		putNonEmpty(objects, "replaced_nv_name", cur.Moving.Objects["replaced_nv_name"])
		putNonEmpty(objects, "replaced_nv_value", cur.Moving.Objects["replaced_nv_value"])
	case there:
		objects["replaced_nv_name"] = hex.EncodeToString(old.Name.Buffer)
		if v, err := a.t.ReadExtendIndex(old); err == nil {
			objects["replaced_nv_value"] = hex.EncodeToString(v)
		}
	}
	if cur != nil && cur.Moving != nil && cur.Moving.Evicting != "" && rec.Objects["replaced_gate_name"] == "" {
		// The interrupted move was about to evict another's object from
		// the gate's handle: named replaced if it is gone (found by
		// review: the name was only in the killed process's memory).
		if x, err := a.t.ReadPublic(AuditGateHandle); errors.Is(err, tpm.ErrNotFound) || err == nil && hex.EncodeToString(x.Name.Buffer) != cur.Moving.Evicting {
			objects["replaced_gate_name"] = cur.Moving.Evicting
		}
	}
	srk, err := a.t.SRK()
	if err != nil {
		return nil, err
	}
	blob, auth, err := a.moveGate(cur, again, srk)
	if err != nil {
		return nil, err
	}
	gn, err := blob.Name()
	if err != nil {
		return nil, err
	}
	pub, err := tpm.GatedExtendPublic(AuditAnchorHandle, gn.Buffer, false)
	if err != nil {
		return nil, err
	}
	move := &anchorMove{Objects: maps.Clone(rec.Objects), UID: rec.UID, Known: slices.Compact(slices.Sorted(slices.Values(known))), Fresh: fresh}
	if move.Objects == nil {
		move.Objects = map[string]string{}
	}
	maps.Copy(move.Objects, objects)
	g := gateRecord{Version: gateVersion, Handle: uint32(AuditAnchorHandle), Blob: hex.EncodeToString(blob.Marshal()), Name: hex.EncodeToString(gn.Buffer),
		Auth: hex.EncodeToString(auth), SRK: hex.EncodeToString(a.t.PinnedSRKName()), Moving: move}
	if err := writeGateRecord(a.dir, g); err != nil {
		return nil, err
	}
	if there {
		if err := a.t.UndefineNVIndex(old); err != nil {
			return nil, fmt.Errorf("remove the index at the anchor's handle: %w", err)
		}
	}
	x, err := a.t.DefineNV(pub)
	if err != nil {
		return nil, err
	}
	evicting := func(name string) error {
		// Named in the mark before the eviction: a crash after it
		// leaves the name for the move made again.
		g.Moving.Evicting = name
		return writeGateRecord(a.dir, g)
	}
	persistent, replaced := a.persistGate(cur, oldPolicy, blob, auth, evicting)
	g.Moving.Evicting = ""
	if replaced != "" {
		objects["replaced_gate_name"] = replaced
		g.Moving.Objects["replaced_gate_name"] = replaced
	}
	g.Persistent = persistent
	if err := writeGateRecord(a.dir, g); err != nil {
		return nil, err
	}
	_, written, err := g.expectedNames()
	if err != nil {
		return nil, err
	}
	objects["nv_name"] = hex.EncodeToString(written)
	objects["gate_key"] = g.Name
	an.proven.Store(&x)
	an.move = g.Name
	return objects, nil
}

// moveGate is the gate key of a move: a new one, or, for a move made
// again (again) whose mark's gate was made through the SRK pinned now (or
// with none pinned then and now), that gate (found by reviews: a move
// whose define kept failing made a new gate key, and grew the mark, at
// every request).
func (a *Agent) moveGate(cur *gateRecord, again bool, srk tpm.Object) (tpm.Blob, []byte, error) {
	if again && cur != nil && cur.Moving != nil && cur.SRK == hex.EncodeToString(a.t.PinnedSRKName()) {
		auth, aerr := cur.auth()
		blob, berr := cur.blob()
		if aerr == nil && berr == nil && len(auth) == tpm.GateAuthSize {
			if n, err := blob.Name(); err == nil && hex.EncodeToString(n.Buffer) == cur.Name {
				return blob, auth, nil
			}
		}
	}
	auth, err := tpm.NewGateAuth(rand.Reader)
	if err != nil {
		return tpm.Blob{}, nil, err
	}
	blob, err := a.t.CreateGate(srk, auth)
	if err != nil {
		return tpm.Blob{}, nil, fmt.Errorf("audit gate key: %w", err)
	}
	return blob, auth, nil
}

// putNonEmpty sets m[k] to v unless v is empty.
func putNonEmpty(m map[string]string, k, v string) {
	if v != "" {
		m[k] = v
	}
}

// expectedNamesIfMoving is expectedNames of a gate whose move is marked;
// an error for no gate or no mark.
func (g *gateRecord) expectedNamesIfMoving() (unwritten, written []byte, err error) {
	if g == nil || g.Moving == nil {
		return nil, nil, errors.New("no move")
	}
	return g.expectedNames()
}

// moveUnfinished reports whether g marks a move (gateRecord.Moving) whose
// audit-anchor record (its gate_key g's name) is in no complete line of
// the log: the move is to be made again. Once that record is in, only its
// extend (lost: a crash, a fault, A1) or the mark's clearing is missing,
// and the trail is read as any other: an unanchored record is audit
// repair --anchor-last's, as before the mark; lines appended after it (a
// daemon whose log was open while a one-shot process's move was killed
// before its clearing) do not make the move unfinished again (found by
// review). locked: the caller holds the log's lock (an append), and a
// mark whose record is in is cleared, so that later reads do not read
// the log for it again.
func (an *trailAnchor) moveUnfinished(g *gateRecord, locked bool) bool {
	if g == nil || g.Moving == nil {
		return false
	}
	if !moveRecorded(filepath.Join(an.dir, audit.FileName), g.Name) {
		return true
	}
	if locked {
		if err := clearMove(an.dir, g.Name); err != nil {
			an.log.Debug("clearing a finished move's mark failed", "err", err)
		}
	}
	return false
}

// moveRecorded reports whether the log at path has a complete
// audit-anchor line of the gate named gate.
func moveRecorded(path, gate string) bool {
	recs, _ := audit.ReadRecords(path) // up to a torn line: the complete ones
	return slices.ContainsFunc(recs, func(r audit.Record) bool { return r.Op == audit.OpAnchor && r.Objects["gate_key"] == gate })
}

// clearMove clears audit.gate's mark if audit.gate is still the gate named
// gate (another process's move since has a gate of its own). Its callers
// hold the log's lock, under which moves are made.
func clearMove(dir, gate string) error {
	g, err := (&trailAnchor{dir: dir}).gate()
	if err != nil || g == nil || g.Moving == nil || g.Name != gate {
		return err
	}
	g.Moving = nil
	return writeGateRecord(dir, *g)
}

// opMoveDropped is the record of a new trail's first move that was
// interrupted and then found another's index at the anchor's handle: the
// trail was never begun (finishMove). It waits among the pending records.
const opMoveDropped = "audit-anchor-dropped"

// errNoMove: the move finishMove was to make again is not there any more
// (made, or replaced by another process's, meanwhile).
var errNoMove = errors.New("no move to make again")

// finishMove makes a move to a new anchor again that a crash or a fault
// interrupted (audit.gate's Moving: newGatedAnchor), with the record the
// interrupted move began (what it replaced, its uid) and a note saying so,
// so that the trail takes records again without an officer. Decided under
// the log's lock (moveTrail's check), where no other move is under way:
// nothing is done when the mark is gone or no longer this gate's, and only
// the mark is cleared when the move's record is in. The anchor's handle
// must hold what the interrupted move may have left there: nothing, one
// of its known names, or its own index; anything else was put there by
// someone else, and the officer's reanchor records it (the read is the
// bus's word: A1 can make provd refuse, and an index it hides makes the
// move's own NV_DefineSpace fail). A trail with no line yet whose handle
// holds another's index was never begun: its mark, which carries no
// evidence, is dropped, and the state is one without a trail (another
// state's anchor is then refused, or replaced by provision --force, as
// for any). It does nothing when no move is marked.
func (a *Agent) finishMove() error {
	an := a.trailAnchor()
	g, err := an.gate()
	if err != nil || g == nil || g.Moving == nil {
		return err
	}
	if a.heldGate != nil || !a.zeroizing && a.zeroizeWaits() {
		// Zeroize is destroying (its gate held, the SRK maybe evicted):
		// it makes no move; its record waits, and zeroize run again
		// makes the move at its open (found by review 23: made here
		// with the held gate, the move's record was left unanchored,
		// and the SRK zeroize had evicted was put back). Until then no
		// other operation makes it (found by review 25: audit repair,
		// as the refusal then advised, or the daemon's next request,
		// put the evicted SRK back, the trail saying it was evicted).
		return errZeroizeUnfinished
	}
	rec := audit.Record{UID: g.Moving.UID, Objects: maps.Clone(g.Moving.Objects)}
	if rec.Objects == nil {
		rec.Objects = map[string]string{}
	}
	// What the move replaces is read again (newGatedAnchor keeps the
	// interrupted move's where that one took it away).
	delete(rec.Objects, "replaced_nv_name")
	delete(rec.Objects, "replaced_nv_value")
	rec.Objects["made_again"] = "a crash or a fault interrupted this move; made again by the next audited operation"
	check := func() error {
		now, err := an.gate()
		switch {
		case err != nil:
			return err
		case now == nil || now.Moving == nil || now.Name != g.Name:
			return errNoMove
		case moveRecorded(a.auditPath(), now.Name):
			return errors.Join(errNoMove, clearMove(a.dir, now.Name))
		}
		x, err := a.t.ReadNVPublic(AuditAnchorHandle)
		switch {
		case errors.Is(err, tpm.ErrNotFound):
			return nil
		case err != nil:
			return err
		case now.mayHold(x.Name.Buffer):
			return nil
		}
		tampered := fmt.Errorf("%w: %w (NV index 0x%08x has name %x: none that the trail's unfinished move may have left there)",
			api.ErrTampered, errAnchorMoved, uint32(AuditAnchorHandle), x.Name.Buffer)
		if a.trailAnchor().legacy {
			return tampered
		}
		switch has, err := a.hasPK(context.Background()); {
		case err != nil:
			return err
		case has:
			// A provisioned state: the officer's reanchor, which keeps
			// the mark's record in its own (found by review: dropped,
			// the officer's findings were lost, and every audited
			// operation acted before its record was refused).
			return tampered
		}
		// No PK and no line: the trail was never begun. Its mark goes,
		// its record kept among the records that wait for the next trail
		// (found by review: a refused provision's interrupted first move
		// left a directory that neither provision --force nor reanchor
		// took), and the state is a fresh one beside another's anchor.
		dropped := audit.Record{Time: a.now(), Op: opMoveDropped, UID: now.Moving.UID, Objects: maps.Clone(now.Moving.Objects), Result: "ok"}
		if dropped.Objects == nil {
			dropped.Objects = map[string]string{}
		}
		dropped.Objects["dropped_because"] = fmt.Sprintf("the first move of a trail with no line was interrupted, and NV index 0x%08x has name %x since: the trail was never begun", uint32(AuditAnchorHandle), x.Name.Buffer)
		putNonEmpty(dropped.Objects, "evicting_gate_name", now.Moving.Evicting)
		dropped.Objects["dropped_gate_key"] = now.Name
		// Kept once: a crash before audit.gate went leaves it kept
		// (found by review: kept again by the next operation).
		data, err := readPendingFile(a.pendingPath())
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		waiting, err := readPending(data)
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(waiting, func(r audit.Record) bool {
			return r.Op == opMoveDropped && r.Objects["dropped_gate_key"] == now.Name
		}) {
			if err := a.keepPending(dropped); err != nil {
				return err
			}
		}
		if err := os.Remove(filepath.Join(a.dir, gateFile)); err != nil {
			return err
		}
		return errors.Join(errNoMove, store.SyncDir(a.dir))
	}
	// Decided first under the log's lock alone: a mark whose record is in
	// is cleared even where the log no longer links up (tampering, which
	// the open then reports, found by review), and nothing moves then.
	err = audit.Locked(a.auditPath(), audit.Options{Anchor: an}, check)
	if err == nil {
		// The archive is written now if the crash came before it was; a
		// fresh move whose mark names none would cut lines kept nowhere.
		move := audit.Move{Fresh: g.Moving.Fresh, Archive: a.markedArchive(g.Moving)}
		if move.Fresh && move.Archive == "" {
			return fmt.Errorf("%w: %s marks a move that begins the log anew and names no archive for its lines", api.ErrTampered, gateFile)
		}
		_, err = a.moveTrail(rec, check, move)
	}
	if errors.Is(err, errNoMove) {
		return nil
	}
	return err
}

// markedArchive is the path of the archive a move that begins the log
// anew names in its mark (archived_log), in the state directory whatever
// the mark says (its base name); "" when the move is not such a move or
// names nothing a file could be.
func (a *Agent) markedArchive(m *anchorMove) string {
	n := m.Objects["archived_log"]
	b := filepath.Base(n)
	if !m.Fresh || n == "" || b == "." || b == ".." || b == string(filepath.Separator) {
		return ""
	}
	return filepath.Join(a.dir, b)
}

// ownsIndex reports whether name is g's own anchor's, written or not.
func (g *gateRecord) ownsIndex(name []byte) bool {
	unwritten, written, err := g.expectedNames()
	return err == nil && (bytes.Equal(name, unwritten) || bytes.Equal(name, written))
}

// mayHold reports whether the anchor's handle may hold the index named
// name while g's move is marked and the move is made again over it: one
// of the mark's known names (the trail's anchor before the move, what the
// move found there) or the move's own index, written or not.
func (g *gateRecord) mayHold(name []byte) bool {
	return g.Moving != nil && slices.Contains(g.Moving.Known, hex.EncodeToString(name)) || g.ownsIndex(name)
}

// anchorTrail moves the trail to a new gated anchor with an audit-anchor
// record (why says why; objects go into the record too).
func (a *Agent) anchorTrail(ctx context.Context, why string, objects map[string]string) (audit.Report, error) {
	if objects == nil {
		objects = map[string]string{}
	}
	objects["reason"] = why
	return a.moveTrail(audit.Record{UID: a.callerUID(ctx), Objects: objects}, nil, audit.Move{})
}

// moveTrail moves the trail to a new gated anchor with the audit-anchor
// record rec (newGatedAnchor). The open log is closed first and reopened
// after. check, if set, runs under the log's lock before anything moves
// (finishMove's decision); its error stops the move. The move's mark is
// cleared under that lock once its record is anchored, and only if
// audit.gate is still its gate (found by review: a mark cleared outside
// the lock could be another process's move's, just begun).
//
// move's Archive and Fresh say whether the log is archived and begun anew
// (the officer's reanchor of a log its anchor contradicts); the mark keeps
// Fresh, for a move made again.
func (a *Agent) moveTrail(rec audit.Record, check func() error, move audit.Move) (audit.Report, error) {
	if a.audit != nil {
		if err := a.audit.Close(); err != nil {
			return audit.Report{}, err
		}
		a.audit = nil
	}
	an := a.trailAnchor()
	var made string
	fresh := move.Fresh || move.Archive != ""
	move.Reset = func(rec audit.Record) (map[string]string, error) {
		if check != nil {
			if err := check(); err != nil {
				return nil, err
			}
		}
		objects, err := a.newGatedAnchor(an, rec, check != nil, fresh)
		made = objects["gate_key"]
		return objects, err
	}
	move.Done = func() error { return clearMove(a.dir, made) }
	rep, err := audit.Reanchor(a.auditPath(), audit.Options{Anchor: an, Now: a.now}, rec, move)
	if err != nil {
		return rep, fmt.Errorf("audit trail: new anchor: %w", err)
	}
	return rep, a.openAudit()
}
