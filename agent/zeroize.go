package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// opZeroizeStart is the record a zeroize writes before it destroys
// anything: when the trail cannot take it, zeroize is refused.
const opZeroizeStart = "zeroize-start"

// opZeroize is zeroize's last record: the keys destroyed.
const opZeroize = "zeroize"

// keysDestroyed is the object only Zeroize's last record has ("true": every
// step done; "false": it failed on the way).
const keysDestroyed = "keys_destroyed"

// provdNV lists the NV indices provd defines.
var provdNV = []tpm2.TPMHandle{PolicyCounterHandle, CounterAuthorizerHandle, AuditAnchorHandle}

// Zeroize removes every TPM object and NV index provd created and overwrites
// and removes the state's blob files. The PK's blob gone, the PK is gone: it
// never existed outside the TPM. The zeroization is recorded in the audit
// trail; then the trail's anchor index is removed too and the log is archived
// beside the state (audit-<UTC time>.log), its last line the zeroize record.
//
// Nothing is destroyed unless the trail can take a record first: a
// zeroize-start record is written (and anchored) before anything else, and
// when that fails zeroize is refused (the audit trail's error, exit 14 for a
// tampered trail or a moved anchor) with everything left in place.
func (a *Agent) Zeroize(ctx context.Context, opts api.ZeroizeOptions) (res api.ZeroizeResult, err error) {
	defer a.lock()()
	a.zeroizing = true
	defer func() { a.zeroizing = false }()
	// The daemon's kept audit session goes first, its key with it
	// (tpm.TPM.KeepShared): zeroize's records start sessions of their own.
	if err := a.t.DropKept(); err != nil {
		a.log.Debug("flush of the kept audit session failed", "err", err)
	}
	objects := map[string]string{"srk": fmt.Sprint(opts.SRK)}
	if !opts.SRK && a.srkEvictionOwed() {
		// The zeroize this one finishes evicted the SRK; the move this
		// one makes may create it again: it is evicted again (found by
		// review 26: zeroize run again without --srk left it back, and
		// no record said so).
		opts.SRK = true
		objects["srk"] = "true"
		objects["srk_because"] = "a zeroize that left its trail evicted the SRK (its record waits, or was written late)"
	}
	if err := a.record(ctx, opZeroizeStart, objects, nil); err != nil {
		return res, fmt.Errorf("zeroize refused, nothing destroyed: %w", err)
	}
	// The last record needs the gate key loaded when the SRK it loads
	// under is already evicted (--srk: the persistent gate may be gone, and
	// its fallback loads under the SRK): it is loaded now and survives the
	// flush of leftovers. Without --srk the last record proves the
	// persistent gate, or loads it, as every record does (found by review:
	// the load and its flush were 2 commands the persistent gate spares).
	if opts.SRK {
		if err := a.holdGate(); err != nil {
			return res, fmt.Errorf("zeroize refused, nothing destroyed: audit gate: %w", err)
		}
		defer func() {
			if ferr := a.t.Flush(a.heldGate.Handle); ferr != nil && err == nil {
				err = ferr
			}
			a.heldGate = nil
		}()
	}
	// The witness is started while the pinned SRK is still there and lives
	// until the anchor is gone: it authenticates the eviction of the SRK
	// it was salted to, and the anchor's removal after that.
	w, err := a.t.OpenWitness()
	if err != nil {
		return res, fmt.Errorf("zeroize refused, nothing destroyed: %w", err)
	}
	defer func() {
		if cerr := w.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	err = a.zeroizeTPMAndState(ctx, opts, &res, w)
	maps.Copy(objects, verifiedObjects(res))
	// Zeroize's own last record, told apart from a refused or failed
	// zeroize request's (op zeroize too: found by review 27, a role-less
	// caller's refusal waiting in audit.pending was taken for it):
	// waitingZeroize.
	objects[keysDestroyed] = fmt.Sprint(err == nil)
	if aerr := a.record(ctx, opZeroize, objects, err); aerr != nil && err == nil {
		// The keys are gone; the trail is what is left (found by review
		// 24: the refusal said only what any audited operation says,
		// and its advice, audit repair, put the evicted SRK back).
		err = zeroizeLeftTrail(aerr)
	}
	if err != nil {
		return res, err
	}
	// After the last record: the anchor and the live log go.
	if a.audit != nil {
		if err := a.audit.Close(); err != nil {
			return res, err
		}
		a.audit = nil
	}
	// In an order a crash at any step leaves a state the next record
	// repairs by itself (found by the kill test: the anchor removed first
	// and the log kept left a trail whose anchor was gone, refused until an
	// officer's reanchor):
	//  1. the gate file goes: a crash here leaves the log and its anchor, a
	//     trail of the ungated kind that the next record moves to a new gate;
	//  2. the log is archived: a crash here leaves no trail and an anchor
	//     index nobody's, which the next trail replaces (and records);
	//  3. the gate key's persistent copy goes, then the anchor index.
	// The gate key guarded the anchor only; the next record starts a new
	// trail with a new gate. Step 3 removes only this trail's gate and
	// anchor, named as the gate file says: it is read first.
	var g *gateRecord
	removeGate := func() (err error) {
		if g, err = a.trailAnchor().gate(); err != nil {
			return err
		}
		if g != nil && g.Moving != nil && !moveRecorded(a.auditPath(), g.Name) {
			// Another process's move, marked after zeroize's last
			// record (a record under a mark extends nothing) and not
			// finished (killed, or failing): its mark holds its record,
			// and what is at the handles is the trail's or the move's.
			// Nothing is removed; zeroize run again finishes the move
			// at its open and then removes the trail (found by review
			// 22: the mark went with audit.gate, the move's record was
			// in no file, and the trail's anchor and gate stayed).
			return zeroizeLeftTrail(errZeroizeUnfinished)
		}
		if err := os.Remove(filepath.Join(a.dir, gateFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return store.SyncDir(a.dir)
	}
	if fileExists(a.auditPath()) {
		// Steps 1 and 2 under the log's lock, where another process's
		// move or append may be waiting (found by review: a reanchor
		// that waited then cut and wrote the file zeroize had archived;
		// it now finds it moved, audit.ErrMoved; and by review 21: a
		// record between the gate file's removal and the archive moved
		// the trail to a new gate, whose record zeroize then archived).
		archived := a.archiveName()
		if err := audit.Locked(a.auditPath(), audit.Options{Anchor: a.trailAnchor()}, func() error {
			if err := removeGate(); err != nil {
				return err
			}
			if err := os.Rename(a.auditPath(), archived); err != nil {
				return err
			}
			return store.SyncDir(a.dir)
		}); err != nil {
			return res, err
		}
		res.AuditLog = archived
	} else if err := removeGate(); err != nil {
		return res, err
	}
	// The gate key's persistent copy before the anchor it guards: a crash
	// between the two leaves an anchor nobody's, which the next trail
	// replaces, as in step 2 (found by review: the other order left the
	// gate, which no later zeroize, and no new trail that does not know it
	// for provd's, would take). A new trail also takes it over as this
	// state's (an archived trail's gate_key: ownGate).
	evicted, gerr := a.evictGateVerified(w, g)
	res.GateEvicted = evicted
	removed, err := a.undefineAnchorVerified(w, g)
	res.NVIndices = append(res.NVIndices, removed...)
	return res, errors.Join(gerr, err)
}

// evictGateVerified evicts the trail's gate g from AuditGateHandle, only
// it (tpm.Witness.EvictNamed: found by review, a new trail that another
// process began once the gate file was gone had its gate evicted). A
// trail without a gate (g nil) has no persistent gate: nothing is evicted,
// and none of it is there (api.ZeroizeResult.GateEvicted: gone, or never
// there).
func (a *Agent) evictGateVerified(w *tpm.Witness, g *gateRecord) (bool, error) {
	if g == nil {
		return true, nil
	}
	name, err := g.name()
	if err != nil {
		return false, err
	}
	return evictVerified(w, AuditGateHandle, func() (bool, error) { return w.EvictNamed(AuditGateHandle, name) })
}

// undefineAnchorVerified removes the trail's anchor, only it: the index at
// its handle named as g's anchor is, written or not
// (tpm.Witness.UndefineNVNamed: found by review, as the gate); a trail
// without a gate (an ungated, legacy one) removes what is at the handle, as
// before.
func (a *Agent) undefineAnchorVerified(w *tpm.Witness, g *gateRecord) ([]string, error) {
	if g == nil {
		return a.undefineVerified(w, []tpm2.TPMHandle{AuditAnchorHandle})
	}
	unwritten, written, err := g.expectedNames()
	if err != nil {
		return nil, err
	}
	return a.undefineVerifiedBy(w, []tpm2.TPMHandle{AuditAnchorHandle}, func(h tpm2.TPMHandle) (bool, error) {
		return w.UndefineNVNamed(h, unwritten, written)
	})
}

// verifiedObjects is what the zeroize record says the TPM confirmed (or,
// where no SRK is pinned, what the bus said: tpm_authenticated false).
func verifiedObjects(res api.ZeroizeResult) map[string]string {
	return map[string]string{
		"tpm_authenticated":         fmt.Sprint(res.Authenticated),
		"nv_indices_removed":        strings.Join(res.NVIndices, ","),
		"transient_handles_flushed": fmt.Sprint(res.Flushed),
		"srk_evicted":               fmt.Sprint(res.SRKEvicted),
	}
}

// zeroize is Zeroize without the audit trail: provision --force zeroizes
// the old PK, and the trail and its anchor go on.
func (a *Agent) zeroize(ctx context.Context, opts api.ZeroizeOptions) (err error) {
	w, err := a.t.OpenWitness()
	if err != nil {
		return err
	}
	defer func() {
		if cerr := w.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	var res api.ZeroizeResult
	return a.zeroizeTPMAndState(ctx, opts, &res, w)
}

// zeroizeTPMAndState flushes, undefines and evicts through the witness and
// reports in res only what the TPM confirmed: a removal whose response the
// witness authenticated and whose absence an authenticated read-back shows
// (TPM2_FlushContext takes no session: a flush counts once the read-back
// no longer lists the handle). A read-back that contradicts what the bus
// answered is ErrResponseForged. Without a pinned SRK nothing is
// authenticated (res.Authenticated false) and res is what the bus said.
func (a *Agent) zeroizeTPMAndState(ctx context.Context, opts api.ZeroizeOptions, res *api.ZeroizeResult, w *tpm.Witness) error {
	res.Authenticated = w.Authenticated()
	a.pk = nil
	errs := []error{a.keys.Close()}
	// Transient objects and sessions: on a TPM without a resource manager
	// these may be provd's from a crashed run.
	left, err := w.Leftovers()
	errs = append(errs, err)
	var flushed []tpm2.TPMHandle
	for _, h := range left {
		if a.heldGate != nil && h == a.heldGate.Handle {
			continue
		}
		if err := a.t.Flush(h); err == nil {
			flushed = append(flushed, h)
		}
	}
	// The state first, the TPM's indices after: a crash in between leaves
	// a state with no PK and indices nothing refers to, which the next
	// provision replaces (ensureCounter). The other order left a PK whose
	// policy counter was gone, and status failed on it (found by the kill
	// test once signed PKs and policy install were among its operations).
	errs = append(errs, a.st.Wipe(ctx, store.WipeOptions{}))
	var nv []tpm2.TPMHandle
	for _, h := range provdNV {
		if h != AuditAnchorHandle { // removed after the zeroize record
			nv = append(nv, h)
		}
	}
	removed, err := a.undefineVerified(w, nv)
	res.NVIndices = append(res.NVIndices, removed...)
	errs = append(errs, err)
	if opts.SRK {
		evicted, err := evictVerified(w, tpm.SRKHandle, func() (bool, error) { return false, w.EvictSRK() })
		res.SRKEvicted = evicted
		errs = append(errs, err)
	}
	if !w.Authenticated() {
		res.Flushed = len(flushed)
		return errors.Join(errs...)
	}
	after, err := w.Leftovers()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	var still []string
	for _, h := range flushed {
		if slices.Contains(after, h) {
			still = append(still, fmt.Sprintf("0x%08x", uint32(h)))
		} else {
			res.Flushed++
		}
	}
	if len(still) > 0 {
		errs = append(errs, fmt.Errorf("%w: TPM2_FlushContext answered success, yet the TPM still holds %s", tpm.ErrResponseForged, strings.Join(still, " ")))
	}
	return errors.Join(errs...)
}

// undefineVerified undefines the indices hs through the witness and returns
// those the TPM confirmed removed: the witness authenticated the
// NV_UndefineSpace and, read back in the witness, the index is gone. An
// index the read-back still lists is ErrResponseForged (its removal was
// answered by the bus, or NV_ReadPublic denied it exists); one whose
// removal failed is that failure. Without a pinned
// SRK it returns what the bus answered.
func (a *Agent) undefineVerified(w *tpm.Witness, hs []tpm2.TPMHandle) ([]string, error) {
	return a.undefineVerifiedBy(w, hs, func(h tpm2.TPMHandle) (bool, error) { return false, w.UndefineNV(h) })
}

// undefineVerifiedBy is undefineVerified with undefine doing each removal:
// left true, an index the witness confirmed is not the one meant stays
// there, no contradiction (tpm.Witness.UndefineNVNamed).
func (a *Agent) undefineVerifiedBy(w *tpm.Witness, hs []tpm2.TPMHandle, undefine func(tpm2.TPMHandle) (left bool, err error)) ([]string, error) {
	var errs []error
	var done, failed []tpm2.TPMHandle
	for _, h := range hs {
		left, err := undefine(h)
		if left && err == nil {
			failed = append(failed, h) // not ours: it stays, no contradiction
			continue
		}
		if err == nil {
			done = append(done, h)
		} else if !errors.Is(err, tpm.ErrNotFound) {
			// Refused (an owner password, say): the index stays, and
			// that is no contradiction.
			failed = append(failed, h)
			errs = append(errs, err)
		}
	}
	if w.Authenticated() {
		defined, err := w.Handles(tpm.NVIndices)
		if err != nil {
			return nil, errors.Join(append(errs, err)...)
		}
		var still []string
		for _, h := range hs {
			if slices.Contains(defined, h) && !slices.Contains(failed, h) {
				still = append(still, fmt.Sprintf("0x%08x", uint32(h)))
				done = slices.DeleteFunc(done, func(d tpm2.TPMHandle) bool { return d == h })
			}
		}
		if len(still) > 0 {
			errs = append(errs, fmt.Errorf("%w: after zeroize the TPM still holds NV indices %s", tpm.ErrResponseForged, strings.Join(still, " ")))
		}
	}
	out := make([]string, len(done))
	for i, h := range done {
		out[i] = fmt.Sprintf("0x%08x", uint32(h))
	}
	return out, errors.Join(errs...)
}

// evictVerified evicts the persistent handle h through the witness (evict:
// w.EvictSRK for the SRK, w.EvictNamed for the audit gate) and reports it
// evicted when the TPM confirms h is empty (the witness, salted to the SRK
// before it went, authenticates the read-back), or evict left another
// object there, which the witness confirmed is not the one meant (what was
// meant is gone). Without a pinned SRK it reports what the bus answered.
func evictVerified(w *tpm.Witness, h tpm2.TPMHandle, evict func() (left bool, err error)) (bool, error) {
	left, err := evict()
	if err != nil && !errors.Is(err, tpm.ErrNotFound) {
		return false, err
	}
	if left || !w.Authenticated() {
		return true, nil
	}
	persistent, rerr := w.Handles(tpm.PersistentHandles)
	if rerr != nil {
		return false, rerr
	}
	if slices.Contains(persistent, h) {
		return false, fmt.Errorf("%w: after zeroize the TPM still holds the persistent object at 0x%08x", tpm.ErrResponseForged, uint32(h))
	}
	return true, nil
}

// zeroizeLeftTrail is zeroize's error once the keys are destroyed and err
// kept it from removing the audit trail: zeroize run again finishes.
func zeroizeLeftTrail(err error) error {
	return fmt.Errorf("the keys are destroyed, the audit trail is not removed: %w; run provd zeroize again (with the same options) to finish", err)
}

// holdGate loads the audit gate key into a.heldGate, for records written
// while the SRK may be gone.
func (a *Agent) holdGate() error {
	an := a.trailAnchor()
	g, err := an.gate()
	if err != nil {
		return err
	}
	if g == nil {
		return errors.New("the trail has no gate")
	}
	gk, err := an.loadGate(g)
	if err != nil {
		return err
	}
	// Its handle is the bus's word, as withGate's load's: zeroize's flush of
	// leftovers takes a copy A1 kept only if the TPM's handle list is not
	// refused on the bus (found by review), so the sweep is asked for too.
	a.t.Unheld()
	a.heldGate = &gk
	return nil
}

// archiveName is where an archived audit trail goes: beside the state, named
// by the UTC time to the nanosecond (audit-20261204T172800.123456789Z.log),
// readable and in order when listed.
func (a *Agent) archiveName() string {
	return filepath.Join(a.dir, "audit-"+a.now().UTC().Format("20060102T150405.000000000Z")+".log")
}

// errZeroizeUnfinished: a move of the trail is unfinished (another
// process's, marked while zeroize ran) and zeroize, which has destroyed
// the keys, makes it when run again; no other operation makes it before
// (finishMove). It is an errMoveUnfinished.
var errZeroizeUnfinished error = zeroizeUnfinished{}

type zeroizeUnfinished struct{}

func (zeroizeUnfinished) Error() string {
	return "a zeroize destroyed the keys and left the audit trail (its record waits in audit.pending; another process's move of the trail " +
		"to a new anchor may be unfinished, audit.gate says so): provd zeroize run again finishes, and no other operation moves the trail before"
}

func (zeroizeUnfinished) Is(target error) bool {
	return target == errMoveUnfinished || errors.Is(errMoveUnfinished, target)
}

// zeroizeWaits reports whether zeroize's last record waits among the
// pending records (a zeroize refused its trail's removal: zeroizeLeftTrail).
func (a *Agent) zeroizeWaits() bool {
	waits, _ := waitingZeroize(a.dir)
	return waits
}

// waitingZeroize reports whether zeroize's last record waits among the
// pending records of the state directory dir, and whether that zeroize
// evicted the SRK.
func waitingZeroize(dir string) (waits, srkEvicted bool) {
	for _, r := range pendingIn(dir) {
		if r.Op == opZeroize && r.Objects[keysDestroyed] != "" {
			waits = true
			srkEvicted = srkEvicted || r.Objects["srk_evicted"] == "true"
		}
	}
	return waits, srkEvicted
}

// zeroizeCanFinish reports whether zeroize run again can finish what a
// waiting zeroize left: its start record needs a trail that takes it,
// one whose unfinished move it makes again (the anchor's handle holds
// nothing, a known name or the move's own index: finishMove) or one that
// is not tampered with. Where it cannot, the officer's reanchor is the
// way out (found by review 27: refused under a waiting zeroize, with
// another's index at the handle, nothing was left but editing
// audit.pending).
//
// A failed read is the caller's error, never "cannot finish" (found by
// review 28: one TPM_RC_MEMORY answer let the officer's reanchor go on).
func (a *Agent) zeroizeCanFinish() (bool, error) {
	an := a.trailAnchor()
	g, err := an.gate()
	if err != nil {
		return false, err
	}
	if g != nil && g.Moving != nil && !moveRecorded(a.auditPath(), g.Name) {
		x, err := a.t.ReadNVPublic(AuditAnchorHandle)
		switch {
		case errors.Is(err, tpm.ErrNotFound):
			return true, nil
		case err != nil:
			return false, err
		}
		return g.mayHold(x.Name.Buffer), nil
	}
	_, verr := audit.Verify(a.auditPath(), an)
	return !errors.Is(verr, audit.ErrTampered) && !errors.Is(verr, api.ErrTampered), nil
}

// srkEvictionOwed reports whether a zeroize that left its trail evicted
// the SRK, which a provd before review 30 created again for any operation
// that needed it (since, only provision and a PK's load persist it:
// tpm.TransientSRKOnly; a state that provd left may still hold it), with
// no provision since (its SRK is the new PK's) and no zeroize since that
// kept the SRK as asked. The records are read as they will stand in the
// trail, newest first: the pending ones, then the live log's (which a
// finished zeroize archives); the officer's reanchor that archives the
// log carries the debt into the new trail (srkEvictionOwedKey). Found by
// review 28: the waiting record written late (by the next record, or by a
// zeroize again that then failed), the eviction was forgotten and the SRK
// stayed; by review 29: a zeroize asked to evict that failed to ended the
// debt, and a provision whose record waited did not; by review 30: a
// reanchor that archived the log forgot it.
func (a *Agent) srkEvictionOwed() bool {
	recs, _ := audit.ReadRecords(a.auditPath())
	recs = append(recs, pendingIn(a.dir)...)
	for i := len(recs) - 1; i >= 0; i-- {
		r := recs[i]
		switch {
		case r.Op == "provision" && r.Result == "ok":
			return false // provisioned since: the SRK is the new PK's
		case r.Objects[srkEvictionOwedKey] == "true":
			return true // carried over an archive by the officer's reanchor
		case r.Op != opZeroize || r.Objects[keysDestroyed] == "":
		case r.Objects["srk_evicted"] == "true":
			return true
		case r.Objects["srk"] != "true":
			return false // a zeroize that kept the SRK, as asked
		}
		// A zeroize asked to evict the SRK that did not: the debt stands.
	}
	return false
}

// srkEvictionOwedKey is the object of the officer's reanchor's record
// that carries an owed SRK eviction into the new trail (the record that
// owed it archived with the old log).
const srkEvictionOwedKey = "srk_eviction_owed"

// errGateMovedInZeroize: while zeroize held its trail's gate, the trail
// moved to another gate, which only a load under the SRK (that zeroize
// --srk evicts) could prove; the record waits for zeroize run again.
var errGateMovedInZeroize = errors.New("the audit trail moved to another gate while zeroize destroyed the keys: its record waits")
