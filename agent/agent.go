// Package agent is the device side of provd: provisioning, sealing, keys, the
// audit trail and zeroization, on top of the tpm package (the only one that
// talks to the TPM), the state store, the policy package and the key catalog.
//
// It exists so that one place orchestrates them for a device and every path
// enforces the same rules: the CLI calls an *Agent in-process, the daemon
// (agent/server) serves the same api.Service to every local caller, and a
// check made here (a policy re-run at every key use, an audit record written
// before an operation counts) cannot be skipped by taking the other path.
package agent

import (
	"context"
	"crypto/fips140"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
	"github.com/provd/provd/tpm/objcache"
)

// NV indices provd defines, in the owner range (TCG Handles registry). Fixed
// handles: zeroize and tpm2-tools checks know exactly what is provd's.
const (
	// PolicyCounterHandle is the monotonic counter that versions signed policies:
	// a policy for version N is valid while the counter is <= N.
	PolicyCounterHandle tpm2.TPMHandle = 0x01707600
	// AuditAnchorHandle is the NV extend index the audit chain head is extended
	// into after each append.
	AuditAnchorHandle tpm2.TPMHandle = 0x01707601
	// CounterAuthorizerHandle holds, write-locked, the policy that gates the
	// policy counter's increments on this device (tpm.DefineGatedCounter):
	// the counter's authPolicy names it by its fleet-constant name.
	CounterAuthorizerHandle tpm2.TPMHandle = 0x01707602
)

// AuditGateHandle is where the audit trail's gate key is made persistent
// (owner storage range, TCG Handles registry), so that a record proves the
// gate without loading it (issue 14: a TPM2_Load and a TPM2_FlushContext
// per record). It is provd's as the anchor's handle is: a new gated anchor
// evicts whatever is there, and zeroize evicts it.
const AuditGateHandle tpm2.TPMHandle = 0x81007601

// Config is what an Agent needs. TPM is opened by the caller, who closes it.
type Config struct {
	TPM      *tpm.TPM
	StateDir string
	Logger   *slog.Logger
	// UID is the uid the audit trail records for an operation whose context
	// names no caller (api.WithCaller): the CLI's own, in-process.
	UID int
	// Now is the clock (tests inject one).
	Now func() time.Time
	// KeepSession keeps the key uses' policy session between operations
	// (opSession), and the operations' shared audit session
	// (tpm.TPM.KeepShared): for a process that lives, the daemon.
	KeepSession bool
}

// Agent performs provd's operations. It is safe for concurrent use: one
// Agent serves every request of the daemon and every Key of agent/tpmkey,
// and its operations run one at a time (lock), because they share one TPM
// connection with a few object slots, the key cache and the audit trail.
// Who asked travels with each call (api.WithCaller), never on the Agent.
type Agent struct {
	mu     sync.Mutex // held for one operation (lock)
	t      *tpm.TPM
	st     *store.Store
	log    *slog.Logger
	uid    int // the caller when ctx names none (Config.UID)
	now    func() time.Time
	audit  *audit.Log
	dir    string
	keys   *objcache.Cache // operational keys kept loaded or context-saved
	signed signedCache     // the installed signed policy, parsed and verified
	states keyStates       // what key uses read from the state, per committed state
	// heldGate is the audit gate key while zeroize runs (trailAnchor.held).
	heldGate *tpm.Gate
	// zeroizing: Zeroize runs (finishMove: only zeroize finishes a move
	// while a zeroize record waits).
	zeroizing bool
	// gateKeep holds the new trail's gate and policy session from its
	// first record to the record that follows (trailAnchor.kept).
	gateKeep gateKeep
	// op is the key uses' policy session (opSession); hot says the running
	// operation is a key use, keepOp that op outlives it (KeepSession).
	op     *opSession
	hot    bool
	keepOp bool
	// pk is the PK's saved context, kept by the daemon (savedPK).
	pk *savedPK
	// replaceAnchor lets a new trail replace an index it finds at the
	// audit anchor's handle (another state directory's trail): set by a
	// provision that succeeded (having found none there, or been told
	// --force), for its record.
	replaceAnchor bool
}

// New opens the state directory (creating it, mode 0700) and the audit log.
func New(cfg Config) (*Agent, error) {
	if cfg.TPM == nil {
		return nil, errors.New("agent: no TPM")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	// The store resolves the path as the kernel does and checks it; the
	// agent's own files (the trail, the gate, the pending records) go in
	// the directory it resolved, never in a text of the path cleaned
	// (found by review 65: filepath.Abs made "lnk/../state" another
	// directory than the one the serve lock and the kernel resolved).
	st, err := store.Open(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	dir := st.Dir()
	a := &Agent{t: cfg.TPM, st: st, log: cfg.Logger, uid: cfg.UID, now: cfg.Now, dir: dir,
		keys: objcache.New(cfg.TPM, objcache.Options{}), keepOp: cfg.KeepSession}
	if cfg.KeepSession {
		_ = cfg.TPM.KeepShared(true) // no command: it only sets keeping
	}
	// The SRK is persisted only by provision and by an operation that uses
	// the PK or the AK, which live under it (tpm.PersistSRK,
	// tpm.PersistMissingSRK): elsewhere, where 0x81000001 is empty
	// (zeroize --srk evicted it, or nobody made it yet), an operation that
	// needs it uses a transient copy, flushed when it ends (unlock).
	cfg.TPM.TransientSRKOnly()
	// The TPM the state was provisioned on: from here on the SRK is the
	// pinned one, never what the bus says.
	if _, _, err := a.pinIdentity(context.Background()); err != nil {
		return nil, errors.Join(fmt.Errorf("the state's TPM identity: %w", err), cfg.TPM.DropTransientSRK())
	}
	// A copy of the SRK pinIdentity's check made is held by no operation.
	if err := cfg.TPM.DropTransientSRK(); err != nil {
		return nil, err
	}
	return a, nil
}

var _ api.Service = (*Agent)(nil)

// lock takes the Agent for one operation and returns its release:
// every exported method starts with defer a.lock()() (a key use, or an
// operation that sends the TPM nothing, with lockKeep). Every operation
// salts to the pinned SRK again if it came back after this connection
// evicted it (tpm.TPM.SRKBack: a command only then). Any other operation
// starts by flushing the key uses' kept session (opSession), so that every
// session slot is its own, and by dropping what key uses kept from the
// state (keyStates: zeroize and Close leave no decoded authValue behind
// them; the hex text the state's JSON was parsed into is immutable, and
// stays on the heap until collected, as every state read's does).
func (a *Agent) lock() func() {
	a.mu.Lock()
	a.t.SRKBack()
	a.states.reset()
	if err := a.dropOp(); err != nil {
		a.log.Debug("flush of the kept policy session failed", "err", err)
	}
	// At most one key stays loaded: the operation may need two object
	// slots (an audit record loads the gate key, then starts a session
	// salted to the SRK, which takes a slot while it starts).
	if err := a.keys.Trim(1); err != nil {
		a.log.Debug("eviction of a cached key failed", "err", err)
	}
	return a.unlock
}

// lockKeep is lock for a key use, which may use and keep the operation's
// policy session (opSession), and for an operation that sends the TPM
// nothing (KeyPublic, which the CLI asks before a sign), which leaves it be.
func (a *Agent) lockKeep() func() {
	a.mu.Lock()
	a.t.SRKBack()
	a.hot = true
	return a.unlock
}

func (a *Agent) unlock() {
	a.hot, a.replaceAnchor = false, false
	if a.audit != nil {
		a.audit.ForgetOpenRead() // it stands for the anchor in this operation only
	}
	// A session no policy was applied in (it guarded the PK's load, then
	// the operation failed) is not kept: only a session a key use went
	// through is, so that a fresh one is always this operation's own
	// (loadPK).
	if !a.keepOp || (a.op != nil && !a.op.applied) {
		if err := a.dropOp(); err != nil {
			a.log.Debug("flush of the operation's policy session failed", "err", err)
		}
	}
	if a.t.PersistMissingSRK(false) {
		a.evictSRKUnowed()
	}
	if err := a.t.DropTransientSRK(); err != nil {
		a.log.Debug("flush of the SRK's transient copy failed", "err", err)
	}
	if a.t.NeedsSweep() {
		a.sweepLeaks()
	}
	a.mu.Unlock()
}

// evictSRKUnowed evicts the SRK the operation persisted again for a PK's
// or an AK's load (tpm.PersistMissingSRK) when the state, read again, is
// neither provisioned nor pins a TPM: another program wiped it meanwhile,
// a zeroize whose --srk eviction came after the state read the operation
// began with (found by review 39: the SRK was back at 0x81000001, in a
// state with no PK). It reads and evicts under the store's lock, which
// the wipe takes: a provision committed meanwhile keeps the SRK, and one
// under way persists it again as it commits (tpm.PersistSRKAgain). Only
// the pinned SRK is evicted. A failure is logged: the operation's result
// stands, and the next zeroize --srk evicts it.
func (a *Agent) evictSRKUnowed() {
	err := a.st.View(context.Background(), func(tx *store.Tx) error {
		_, err := a.readPK(tx)
		if !errors.Is(err, api.ErrNotProvisioned) {
			return err
		}
		if err := requirePinned(tx); !errors.Is(err, errNotPinned) {
			return err
		}
		if _, err := a.t.ReadPublic(tpm.SRKHandle); errors.Is(err, tpm.ErrNotFound) {
			return nil // the zeroize's eviction came after the persist
		} else if err != nil {
			return err
		}
		// Only the pinned SRK, as zeroize evicts it: in the witness, whose
		// HMAC binds the pinned name, so that the TPM refuses any other
		// key (found by review 41: a handle-only eviction took another
		// program's key, persisted there after the zeroize).
		w, err := a.t.OpenWitness()
		if err != nil {
			return err
		}
		if !w.Authenticated() {
			return errors.Join(errors.New("no SRK is pinned: the key at 0x81000001 is left"), w.Close())
		}
		a.log.Warn("the SRK persisted for this operation's PK or AK is evicted again: the state was wiped meanwhile (zeroize)")
		_, err = evictVerified(w, tpm.SRKHandle, func() (bool, error) { return false, w.EvictSRK() })
		return errors.Join(err, w.Close())
	})
	if err != nil {
		a.log.Warn("the SRK persisted for this operation could not be checked against the state, or evicted", "err", err)
	}
}

// sweepLeaks runs after an operation in which a handle may have leaked (a
// command that makes one failed, or the slots ran out: tpm.NeedsSweep),
// once the operation's own handles are flushed: on a TPM provd talks to
// alone, every transient object or session it does not hold (its cache's
// resident keys, the held audit gate, the kept sessions) is a leak and is flushed (found by
// review: an error forged on the bus after the TPM had made a session left
// it loaded; eight filled the slots, and provd failed until restart). It
// costs three TPM2_GetCapability on such failure paths only.
func (a *Agent) sweepLeaks() {
	if !a.t.Exclusive() {
		return
	}
	left, err := a.t.Leftovers()
	if err != nil {
		return
	}
	held := a.heldHandles()
	n := 0
	for _, h := range left {
		if !slices.Contains(held, h) && a.t.Flush(h) == nil {
			n++
		}
	}
	if n > 0 {
		a.log.Warn("flushed TPM handles provd did not hold (left by a failed command, or a client before it)", "count", n)
	}
}

// heldHandles is what the agent holds loaded in the TPM: its cache's
// resident keys, the held audit gate, the sessions of a kept gate proof,
// the kept policy session and the kept shared audit session. On a TPM
// provd has to itself, whatever else is loaded between its operations is
// a leak (sweepLeaks).
func (a *Agent) heldHandles() []tpm2.TPMHandle {
	held := a.keys.Handles()
	if a.heldGate != nil {
		held = append(held, a.heldGate.Handle)
	}
	held = append(held, a.gateKeep.handles()...)
	for _, h := range []tpm2.TPMHandle{a.opHandle(), a.t.SharedHandle(), a.t.TransientSRK()} {
		if h != 0 {
			held = append(held, h)
		}
	}
	return held
}

// callerUID is the uid the audit trail records for an operation run with ctx.
func (a *Agent) callerUID(ctx context.Context) int {
	if c, ok := api.CallerFrom(ctx); ok {
		return c.UID
	}
	return a.uid
}

// TPMInfo reads what the TPM says about itself; it writes nothing.
func (a *Agent) TPMInfo(context.Context) (api.TPMInfo, error) {
	defer a.lock()()
	info, err := a.t.Info()
	return api.TPMInfo{TPM: a.t.Spec(), Info: info, GoFIPS140: fips140.Enabled()}, err
}

// RecordRefusal writes a refused request to the audit trail: op is the
// operation asked for, ctx names the caller, why is what its role lacked.
// The refusal is not an error of the agent's; the returned error is the
// audit trail's.
func (a *Agent) RecordRefusal(ctx context.Context, op, why string) error {
	defer a.lock()()
	return a.t.Share(func() error {
		return a.record(ctx, op, map[string]string{"refused": why}, fmt.Errorf("%w: %s", api.ErrRefused, why))
	})
}

// RecordFault writes to the audit trail that operation op failed on a bug
// (a panic the daemon recovered from): what reaches it is a defect to fix,
// and the trail must show that the operation did not complete. what is the
// panic's value, never request data.
func (a *Agent) RecordFault(ctx context.Context, op, what string) error {
	defer a.lock()()
	return a.t.Share(func() error {
		return a.record(ctx, op, map[string]string{"fault": what}, fmt.Errorf("%w: %s", errFault, what))
	})
}

// errFault marks a recovered panic's record: always written.
var errFault = errors.New("internal error")

// Rest ends the sessions the daemon keeps in the TPM between requests: the
// key uses' policy session (opSession) and the operations' shared audit
// session (tpm.TPM.KeepShared); the next request starts new ones (two
// commands more for it). Resident keys stay: an object's saved context
// does not age. The daemon rests when idle behind a resource manager
// (server.Server's restWhenIdle): there a kept session waits as a saved
// context, and every saved session context counts against the TPM's
// context gap (docs/threat-model.md, "The daemon rests when idle").
func (a *Agent) Rest() error {
	a.mu.Lock()
	defer a.unlock()
	return errors.Join(a.dropOp(), a.t.DropKept())
}

// Close flushes cached keys and releases the audit log.
func (a *Agent) Close() error {
	defer a.lock()() // flushes the kept policy session
	a.pk = nil
	err := a.keys.Close()
	if a.keepOp {
		err = errors.Join(err, a.t.KeepShared(false))
	}
	if a.audit != nil {
		return errors.Join(err, a.audit.Close())
	}
	return err
}

func (a *Agent) auditPath() string { return filepath.Join(a.dir, audit.FileName) }

// openAudit opens the audit trail for appending, verifying it against the
// TPM anchor. Audited operations call it before they act: an operation whose
// record cannot be written must not happen, rather than happen and report a
// failure. A trail that fails verification is api.ErrTampered (exit 14).
func (a *Agent) openAudit() error {
	if a.audit != nil {
		// Open already (the daemon): only a move marked since, by another
		// process, needs more (found by review: the daemon acted under
		// another process's unfinished move, and its record was refused
		// after the operation had run). One small file read.
		// Or a log another process archived or began anew since it was
		// opened (found by review: the daemon's next operation ran, then
		// its record failed, "the log shrank while open").
		if g, err := a.trailAnchor().gate(); (err != nil || g == nil || g.Moving == nil) && !a.audit.Stale() {
			return nil
		}
		if err := a.audit.Close(); err != nil {
			return err
		}
		a.audit = nil
	}
	err := a.finishMove()
	if errors.Is(err, audit.ErrMoved) {
		err = a.finishMove() // the log begun anew by another process meanwhile
	}
	var l *audit.Log
	if err == nil {
		l, err = audit.Open(a.auditPath(), audit.Options{Anchor: a.trailAnchor(), Now: a.now})
	}
	if errors.Is(err, audit.ErrMoved) {
		// Once more: another process's move began the log anew while the
		// open waited for its lock (found by review 20).
		l, err = audit.Open(a.auditPath(), audit.Options{Anchor: a.trailAnchor(), Now: a.now})
	}
	if err != nil {
		if errors.Is(err, audit.ErrTampered) || errors.Is(err, audit.ErrTornTail) {
			err = errors.Join(api.ErrTampered, err)
		}
		return fmt.Errorf("audit trail (see provd audit verify): %w", err)
	}
	a.audit = l
	return nil
}

// record appends one line to the audit trail. A failure to audit fails the
// operation's report: an operation that cannot be audited must be visible.
func (a *Agent) record(ctx context.Context, op string, objects map[string]string, opErr error) error {
	if a.nothingToActOn(ctx, op, opErr) {
		return nil
	}
	// The operation's time, kept if the record must wait.
	rec := audit.Record{Time: a.now(), Op: op, UID: a.callerUID(ctx), Objects: objects, Result: audit.Result(opErr)}
	// A new trail's gate and policy session, kept from its first record
	// (ensureGated), go when this one is written or fails.
	defer a.gateKeep.drop(a.t, a.log)
	for _, step := range []func() error{
		a.openAudit, // its errors name the trail already
		func() error { return wrapTrail(a.ensureGated(ctx, true)) },
		func() error { return a.writePending(ctx) }, // likewise
	} {
		if err := step(); err != nil {
			if op == opZeroizeStart {
				// Zeroize is refused, nothing destroyed: no record of
				// a start that did not happen waits (found by the
				// review: it entered the next trail, late).
				return err
			}
			// The trail cannot take a line now: the record waits, so
			// that a refusal or fault recorded here is not lost (found
			// by review: two forged answers erased the record of a
			// refused caller).
			return a.pendRecord(rec, err)
		}
	}
	err := a.audit.Append(rec)
	if errors.Is(err, audit.ErrMoved) {
		// Another process's move archived the log or began it anew
		// while the operation ran: the trail at the path is opened
		// (verified against its anchor) and takes the record.
		_ = a.audit.Close()
		a.audit = nil
		if oerr := a.openAudit(); oerr != nil {
			err = fmt.Errorf("%w: %w", audit.ErrNotWritten, oerr) // the record waits (below)
		} else {
			err = a.audit.Append(rec)
		}
	}
	if errors.Is(err, audit.ErrNotWritten) && a.audit != nil {
		// The operation has run, and its line is not in the log: tried
		// once more (found by the daemon's fault test: a TPM reset or
		// power cut between an operation and its record left a key
		// deleted with no line for it).
		err = a.audit.Append(rec)
	}
	if err == nil {
		return nil
	}
	// The log refuses appends once a line may be out of step with its
	// anchor (an extend whose outcome is not known): it is opened again by
	// the next operation, which verifies it against the anchor. If the TPM
	// did extend, work goes on; if not, the trail's last line is
	// unanchored and every audited operation is refused until an officer's
	// audit repair (found by the daemon's fault test: the stuck log
	// refused every request even when the extend had happened).
	if a.audit != nil {
		_ = a.audit.Close()
		a.audit = nil
	}
	if errors.Is(err, audit.ErrNotWritten) || errors.Is(err, audit.ErrMoved) {
		// Still no line for the operation (found by review: two answers
		// forged on the bus left a key deleted with no trace, and audit
		// verify passed): its record waits in the pending file, which the
		// next audited operation writes into the trail first, or is
		// refused.
		return a.pendRecord(rec, wrapTrail(err))
	}
	return wrapTrail(err)
}

// wrapTrail names the audit trail in err (nil stays nil).
func wrapTrail(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("audit trail: %w", err)
}

// pendRecord keeps rec for the next audited operation (keepPending) after
// err kept it from the trail, and reports both.
func (a *Agent) pendRecord(rec audit.Record, err error) error {
	if perr := a.keepPending(rec); perr != nil {
		return fmt.Errorf("%w (and keeping the record for later failed: %v)", err, perr)
	}
	if errors.Is(err, errZeroizeUnfinished) {
		// Only zeroize run again goes on (finishMove; found by review
		// 25: the advice sent to operations that put the evicted SRK
		// back).
		return fmt.Errorf("%w (the record is kept, and written by provd zeroize run again)", err)
	}
	return fmt.Errorf("%w (the record is kept, and written before the next audited operation)", err)
}

// nothingToActOn: the operation failed on a state with nothing to act on (not
// provisioned: fresh, or zeroized) and no trail: writing a record would begin
// a trail, and define an NV index in the TPM, for nothing (found by review:
// key delete after zeroize --srk recreated both). Refusals of callers and
// faults and failed provisioning (first contact refusing a TPM) are always
// recorded.
func (a *Agent) nothingToActOn(ctx context.Context, op string, opErr error) bool {
	if errors.Is(opErr, errForeignAnchor) {
		// A trail begun here would end the other state's (ensureGated).
		return true
	}
	if opErr == nil || errors.Is(opErr, api.ErrRefused) || errors.Is(opErr, errFault) || op == "provision" {
		return false
	}
	if fi, err := os.Stat(a.auditPath()); err == nil && fi.Size() > 0 {
		return false
	}
	if g, err := a.trailAnchor().gate(); err != nil || g != nil {
		return false
	}
	has, err := a.hasPK(ctx)
	return err == nil && !has // a state that cannot be read may hold one: recorded
}

// hasPK reports whether the state holds a PK (a PK record, readable or
// not); an error when the state cannot be read (locked by another process
// past the store's timeout, or ctx done), which each caller decides
// about.
func (a *Agent) hasPK(ctx context.Context) (bool, error) {
	has := true
	err := a.st.View(ctx, func(tx *store.Tx) error {
		_, err := a.readPK(tx)
		has = !errors.Is(err, api.ErrNotProvisioned)
		return nil
	})
	return has, err
}

// audited runs op and records its outcome; the operation's own error wins.
// It refuses to run op when the audit trail cannot take a record.
//
// The trail's read, op and the record share one audit session for their
// authenticated reads and loads (tpm.TPM.Share: a one-shot seal's anchor
// read, PK load and PCR read; provision's reads of its new anchor before
// its record). The record's gated extend starts its policy session beside
// the shared one, if it is still started, and proves the gate in it
// (tpm.TPM.Send keeps it over that start); any other session's start has
// the shared one give its slot up first.
func (a *Agent) audited(ctx context.Context, op string, objects map[string]string, fn func() error) error {
	return a.t.Share(func() error {
		ran := false
		err := func() error {
			if err := a.openAudit(); err != nil {
				return err
			}
			if err := a.writePending(ctx); err != nil && (op != "provision" || !errors.Is(err, errForeignAnchor)) {
				// A provision decides about another state's anchor itself
				// (--force): records waiting in a fresh state directory are
				// written after it, by its record (found by the review: a
				// refusal waiting there refused provision --force for ever).
				return err
			}
			ran = true
			return fn()
		}()
		if !ran {
			return err
		}
		if aerr := a.record(ctx, op, objects, err); aerr != nil {
			if err != nil {
				return errors.Join(err, aerr)
			}
			return aerr
		}
		return err
	})
}

// Share runs fn, a sequence of this agent's operations, in one shared
// session (tpm.TPM.Share), where each operation started and flushed its
// own: attest now's quote and, after the endpoint's answer, its record
// (issue 14: a StartAuthSession and a FlushContext fewer). Only for a
// process that is the agent's one user, as a one-shot command is: the
// session is the TPM connection's, and the daemon's requests, taken one
// at a time under the agent's lock, each run their own Share (which
// adopts the session the one before kept: tpm.TPM.KeepShared).
func (a *Agent) Share(fn func() error) error { return a.t.Share(fn) }

// auditedResult is audited for operations that return a result.
func auditedResult[T any](ctx context.Context, a *Agent, op string, objects map[string]string, fn func() (T, error)) (T, error) {
	var res T
	err := a.audited(ctx, op, objects, func() error {
		var err error
		res, err = fn()
		return err
	})
	return res, err
}

// flush flushes handles in reverse order, joining errors into *err.
func (a *Agent) flush(err *error, hs ...tpm2.TPMHandle) {
	for i := len(hs) - 1; i >= 0; i-- {
		if ferr := a.t.Flush(hs[i]); ferr != nil && *err == nil {
			*err = ferr
		}
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }
