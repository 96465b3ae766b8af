package fleet

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// How an appraisal is recorded: the one write of the hot path. Whichever
// way, the nonce is taken, the appraisal stored and the device's last
// verdict set together or not at all, and RecordAppraisal returns only once
// that is committed: the endpoint answers, and delivers, after it.
//
//   - PostgreSQL: one statement (recordOneStatement), its own transaction,
//     one round trip where a transaction of three statements took five.
//   - SQLite: a group commit (groupCommit). SQLite has one writer at a time,
//     and each commit syncs the log: callers queued for the write lock were
//     the appraisal's latency (issue 14). One goroutine commits whatever
//     records are waiting in one transaction, each in a savepoint of its
//     own, and answers each caller after the commit. The durability setting
//     stays SQLite's default (synchronous=FULL): synchronous=NORMAL in WAL
//     mode would lose the last commits on power loss, after the device was
//     told it passed.

// record is an appraisal as its columns.
type record struct {
	a              Appraisal
	nonce          string // base64, "" without a nonce
	reasons, pcrs  string // JSON
	verdict        string
	pass, at, nexp int64
}

func newRecord(a Appraisal) (record, error) {
	reasons, err := json.Marshal(a.Reasons)
	if err != nil {
		return record{}, err
	}
	pcrs, err := json.Marshal(a.PCRs)
	if err != nil {
		return record{}, err
	}
	r := record{a: a, reasons: string(reasons), pcrs: string(pcrs), verdict: "fail", at: ms(a.At)}
	if a.Pass {
		r.verdict, r.pass = "pass", 1
	}
	if a.Nonce != nil {
		r.nonce, r.nexp = b64.EncodeToString(a.Nonce.Nonce), ms(a.Nonce.ExpiresAt)
	}
	return r, nil
}

const (
	insertAppraisal = `INSERT INTO appraisals (id, device_id, at, pass, reasons, pcrs) VALUES ($1, $2, $3, $4, $5, $6)`
	// The verdict is set only on an enrolled device, and the record stands
	// or falls with it (ErrNotEnrolled): a revocation that committed while
	// the appraisal ran wins (found by review: a revoked device's pass was
	// recorded and its class's secrets delivered).
	updateVerdict = `UPDATE devices SET last_verdict = $1, last_at = $2 WHERE id = $3 AND state = '` + StateEnrolled + `'`
	// A nonce is taken only if no sweep could have deleted it: one that
	// expires before the sweeps' mark (nonce_sweep) is refused, as if taken
	// (found by review: a record stalled past a sweep took the swept nonce
	// again, one nonce and two verdicts).
	insertNonce = `INSERT INTO nonces (nonce, device_id, expires_at) SELECT $1, $2, $3
		WHERE $3 >= (SELECT swept_before FROM nonce_sweep WHERE id = 1) ON CONFLICT (nonce) DO NOTHING`
	// markSweep raises the mark before sweepNonces deletes below it.
	markSweep   = `UPDATE nonce_sweep SET swept_before = $1 WHERE id = 1 AND swept_before < $1`
	sweepNonces = `DELETE FROM nonces WHERE expires_at < $1`
)

// recordTx records r in a transaction of its own.
func (s *sqlStore) recordTx(ctx context.Context, r record) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if r.a.Nonce != nil {
		if err := s.takeNonce(ctx, tx, *r.a.Nonce); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, s.d.q(insertAppraisal), r.a.ID, r.a.DeviceID, r.at, r.pass, r.reasons, r.pcrs); err != nil {
		return err
	}
	res, err := tx.ExecContext(ctx, s.d.q(updateVerdict), r.verdict, r.at, r.a.DeviceID)
	if err := verdictSet(res, err); err != nil {
		return err
	}
	return tx.Commit()
}

// recordOneStatement is PostgreSQL's record: the device's row locked if
// it is enrolled, the nonce's insert, the appraisal's and the verdict's
// update are one statement, so one transaction. The nonce is taken only
// under the enrolled device's lock (a revocation committed meanwhile makes
// FOR UPDATE see the revoked row: nothing is written), and the appraisal
// and the verdict only from the nonce's inserted row: a nonce taken before
// (or meanwhile, on another replica: the insert waits for that
// transaction and then conflicts) writes nothing and counts 0.
// Data-modifying WITH clauses run once and to completion whether or not
// the outer query reads them.
func (s *sqlStore) recordOneStatement(ctx context.Context, r record) error {
	var enrolled, taken int
	err := s.db.QueryRowContext(ctx, `WITH d AS (
			SELECT 1 FROM devices WHERE id = $5 AND state = '`+StateEnrolled+`' FOR UPDATE
		), n AS (
			INSERT INTO nonces (nonce, device_id, expires_at) SELECT $1, $2, $3 FROM d
			WHERE $3 >= (SELECT swept_before FROM nonce_sweep WHERE id = 1) ON CONFLICT (nonce) DO NOTHING RETURNING 1
		), a AS (
			INSERT INTO appraisals (id, device_id, at, pass, reasons, pcrs) SELECT $4, $5, $6, $7, $8, $9 FROM n RETURNING 1
		), v AS (
			UPDATE devices SET last_verdict = $10, last_at = $6 WHERE id = $5 AND EXISTS (SELECT 1 FROM a) RETURNING 1
		)
		SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM n)`,
		r.nonce, r.a.Nonce.DeviceID, r.nexp, r.a.ID, r.a.DeviceID, r.at, r.pass, r.reasons, r.pcrs, r.verdict).Scan(&enrolled, &taken)
	switch {
	case err != nil:
		return err
	case enrolled != 1:
		return ErrNotEnrolled
	case taken != 1:
		return ErrNonceUnknown
	}
	return nil
}

// maxGroup bounds one group commit.
const maxGroup = 64

// ErrClosed is a store used after Close.
var ErrClosed = errors.New("fleet: store closed")

// groupCommit is SQLite's one appraisal writer: a connection of its own,
// its statements prepared once, and a goroutine that commits the records
// waiting, together.
type groupCommit struct {
	s    *sqlStore
	conn *sql.Conn
	// stmts in the order of stmtSQL.
	stmts []*sql.Stmt
	reqs  chan *pending
	quit  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
}

type pending struct {
	r    record
	done chan error
}

const (
	stBegin = iota
	stCommit
	stRollback
	stSavepoint
	stRelease
	stRollbackTo
	stNonce
	stAppraisal
	stVerdict
	stMarkSweep
	stSweep
)

var stmtSQL = []string{
	stBegin:      `BEGIN IMMEDIATE`,
	stCommit:     `COMMIT`,
	stRollback:   `ROLLBACK`,
	stSavepoint:  `SAVEPOINT record`,
	stRelease:    `RELEASE record`,
	stRollbackTo: `ROLLBACK TO record`,
	stNonce:      insertNonce,
	stAppraisal:  insertAppraisal,
	stVerdict:    updateVerdict,
	stMarkSweep:  markSweep,
	stSweep:      sweepNonces,
}

func startGroupCommit(ctx context.Context, s *sqlStore) (*groupCommit, error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	g := &groupCommit{s: s, conn: conn, reqs: make(chan *pending), quit: make(chan struct{})}
	for _, q := range stmtSQL {
		st, err := conn.PrepareContext(ctx, s.d.q(q))
		if err != nil {
			g.closeStmts()
			return nil, fmt.Errorf("fleet: preparing %q: %w", q, err)
		}
		g.stmts = append(g.stmts, st)
	}
	g.wg.Add(1)
	go g.run()
	return g, nil
}

func (g *groupCommit) closeStmts() {
	for _, st := range g.stmts {
		st.Close()
	}
	g.conn.Close()
}

// close stops the writer after the batch it is committing, answered.
func (g *groupCommit) close() {
	g.once.Do(func() {
		close(g.quit)
		g.wg.Wait()
		g.closeStmts()
	})
}

// record hands r to the writer and waits for its commit. Once handed
// over, the answer is the commit's, whatever ctx does meanwhile: an error
// returned early could be a record that is committed after all.
func (g *groupCommit) record(ctx context.Context, r record) error {
	// An ended context is refused before the select, which would
	// otherwise pick the hand-over or the refusal at random.
	if err := ctx.Err(); err != nil {
		return err
	}
	p := &pending{r: r, done: make(chan error, 1)}
	select {
	case g.reqs <- p:
	case <-ctx.Done():
		return ctx.Err()
	case <-g.quit:
		return ErrClosed
	}
	return <-p.done
}

func (g *groupCommit) run() {
	defer g.wg.Done()
	batch := make([]*pending, 0, maxGroup)
	for {
		select {
		case p := <-g.reqs:
			batch = append(batch[:0], p)
		case <-g.quit:
			return
		}
	more:
		for len(batch) < maxGroup {
			select {
			case p := <-g.reqs:
				batch = append(batch, p)
			default:
				break more
			}
		}
		g.commit(batch)
	}
}

func (g *groupCommit) exec(ctx context.Context, st int, args ...any) (sql.Result, error) {
	return g.stmts[st].ExecContext(ctx, args...)
}

// commit writes a batch in one transaction, each record in a savepoint (a
// record that fails, or whose nonce was taken, leaves nothing and does not
// take the others with it), and answers each caller after the commit: a
// failed commit is every caller's error, with nothing of theirs kept.
func (g *groupCommit) commit(batch []*pending) {
	ctx := context.Background()
	errs := make([]error, len(batch))
	fail := func(err error) {
		for i := range errs {
			errs[i] = err
		}
	}
	if _, err := g.exec(ctx, stBegin); err != nil {
		fail(err)
	} else {
		ok := true
		for i, p := range batch {
			var broken error
			errs[i], broken = g.one(ctx, p.r)
			if broken != nil {
				ok = false
				fail(broken)
				break
			}
		}
		if ok {
			if _, err := g.exec(ctx, stCommit); err != nil {
				fail(err)
				ok = false
			}
		}
		if !ok {
			_, _ = g.exec(ctx, stRollback)
		}
	}
	var sweepAt time.Time
	for i, p := range batch {
		p.done <- errs[i]
		if errs[i] == nil && p.r.a.Nonce != nil && p.r.a.At.After(sweepAt) {
			sweepAt = p.r.a.At
		}
	}
	// After the commit, on its own (RecordAppraisal says why).
	if !sweepAt.IsZero() {
		last := g.s.lastSweep.Load()
		if now := ms(sweepAt); now-last >= sweepEvery.Milliseconds() && g.s.lastSweep.CompareAndSwap(last, now) {
			// The mark first: the writer is SQLite's only one, so no
			// record runs between the two.
			if _, err := g.exec(ctx, stMarkSweep, sweepCutoff(sweepAt)); err == nil {
				_, _ = g.exec(ctx, stSweep, sweepCutoff(sweepAt))
			}
		}
	}
}

// one writes r inside the batch's transaction: its own error, and broken
// when the transaction can no longer be trusted (a savepoint that could
// not be rolled back to or released).
func (g *groupCommit) one(ctx context.Context, r record) (err, broken error) {
	if _, err := g.exec(ctx, stSavepoint); err != nil {
		return err, err
	}
	err = g.write(ctx, r)
	if err != nil {
		if _, rerr := g.exec(ctx, stRollbackTo); rerr != nil {
			return err, rerr
		}
	}
	if _, rerr := g.exec(ctx, stRelease); rerr != nil {
		return err, rerr
	}
	return err, nil
}

func (g *groupCommit) write(ctx context.Context, r record) error {
	if r.a.Nonce != nil {
		res, err := g.exec(ctx, stNonce, r.nonce, r.a.Nonce.DeviceID, r.nexp)
		if err != nil {
			return err
		}
		if k, err := res.RowsAffected(); err != nil || k != 1 {
			return ErrNonceUnknown
		}
	}
	if _, err := g.exec(ctx, stAppraisal, r.a.ID, r.a.DeviceID, r.at, r.pass, r.reasons, r.pcrs); err != nil {
		return err
	}
	return verdictSet(g.exec(ctx, stVerdict, r.verdict, r.at, r.a.DeviceID))
}

// verdictSet is updateVerdict's outcome: ErrNotEnrolled when no enrolled
// device took it.
func verdictSet(res sql.Result, err error) error {
	if err != nil {
		return err
	}
	if k, err := res.RowsAffected(); err != nil {
		return err
	} else if k != 1 {
		return ErrNotEnrolled
	}
	return nil
}
