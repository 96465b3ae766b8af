package fleet

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"github.com/provd/provd/attest/fleetapi"
	_ "modernc.org/sqlite" // database/sql driver "sqlite", pure Go
)

// dialect is what differs between SQLite and PostgreSQL: the driver, the
// placeholder syntax, and how migrations are serialized between replicas.
type dialect struct {
	name   string
	driver string
	// lock runs inside the migration transaction before anything is read:
	// PostgreSQL takes a transaction-scoped advisory lock, so two replicas
	// starting at once apply each migration once; SQLite's transactions
	// are IMMEDIATE (the DSN), which locks the file the same way.
	lock string
	// forShare ends a subquery whose row must not change before the
	// statement commits: PostgreSQL's FOR SHARE waits for a write in
	// flight and reads the row as committed (found by review: a baseline
	// read a device's row from before a committing revocation). SQLite
	// needs none: its one writer waits for the other's commit.
	forShare string
}

var (
	sqliteDialect   = dialect{name: "sqlite", driver: "sqlite"}
	postgresDialect = dialect{name: "postgres", driver: "pgx", lock: "SELECT pg_advisory_xact_lock(7072767) ", forShare: " FOR SHARE"}
)

var placeholder = regexp.MustCompile(`\$([0-9]+)`)

// q writes a query's $N placeholders as the dialect wants them: SQLite
// binds ?N by number ($N would bind by first appearance).
func (d dialect) q(query string) string {
	if d.name == "sqlite" {
		return placeholder.ReplaceAllString(query, "?$1")
	}
	return query
}

// migrations are the schema's versions, applied in order at Open. A
// migration is never edited once released: a change is a new one. Types
// are the ones both databases read the same: TEXT (hex, base64, JSON),
// BIGINT (Unix milliseconds, booleans as 0/1).
var migrations = []string{
	// 1: the fleet.
	`CREATE TABLE devices (
		id TEXT PRIMARY KEY,
		class TEXT NOT NULL,
		state TEXT NOT NULL,
		ek_public TEXT NOT NULL,
		ek_cert TEXT NOT NULL,
		ak_public TEXT NOT NULL,
		secret_hash TEXT NOT NULL,
		enrolled_at BIGINT NOT NULL,
		updated_at BIGINT NOT NULL,
		last_verdict TEXT NOT NULL,
		last_at BIGINT NOT NULL
	);
	CREATE TABLE nonces (
		nonce TEXT PRIMARY KEY,
		device_id TEXT NOT NULL,
		expires_at BIGINT NOT NULL
	);
	CREATE INDEX nonces_expiry ON nonces (expires_at);
	CREATE TABLE appraisals (
		id TEXT PRIMARY KEY,
		device_id TEXT NOT NULL,
		at BIGINT NOT NULL,
		pass BIGINT NOT NULL,
		reasons TEXT NOT NULL,
		pcrs TEXT NOT NULL
	);
	CREATE INDEX appraisals_device ON appraisals (device_id, at);
	CREATE TABLE policies (
		class TEXT PRIMARY KEY,
		pcrs TEXT NOT NULL,
		manifests TEXT NOT NULL,
		tofu BIGINT NOT NULL,
		updated_at BIGINT NOT NULL
	);`,
	// 2: secrets delivered to attested devices.
	`CREATE TABLE secrets (
		class TEXT NOT NULL,
		name TEXT NOT NULL,
		value TEXT NOT NULL,
		updated_at BIGINT NOT NULL,
		PRIMARY KEY (class, name)
	);`,
	// 3: the replicas' shared settings (the nonce key); nonces are no
	// longer stored at challenge time, only once used.
	`CREATE TABLE settings (
		name TEXT PRIMARY KEY,
		value TEXT NOT NULL
	);
	DELETE FROM nonces;`,
	// 4: devices' transfer keys, for the endpoint as the duplication
	// authority.
	`CREATE TABLE peers (
		device_id TEXT PRIMARY KEY,
		identity TEXT NOT NULL,
		parent_name TEXT NOT NULL,
		pk_name TEXT NOT NULL,
		pk_policy TEXT NOT NULL,
		registered_at BIGINT NOT NULL
	);`,
	// 5: keys delivered beside secrets.
	`ALTER TABLE secrets ADD COLUMN kind TEXT NOT NULL DEFAULT 'secret';`,
	// 6: the PK policy digests a class's devices may register (the
	// duplication authority signs over nothing else).
	`ALTER TABLE policies ADD COLUMN pk_policies TEXT NOT NULL DEFAULT '[]';`,
	// 7: the version of the class's policy a transfer key was vouched for.
	`ALTER TABLE peers ADD COLUMN policy_at BIGINT NOT NULL DEFAULT 0;`,
	// 8: the expiry before which taken nonces may have been swept: a
	// nonce expiring before it is never taken again (sweep, insertNonce).
	`CREATE TABLE nonce_sweep (
		id BIGINT PRIMARY KEY,
		swept_before BIGINT NOT NULL
	);
	INSERT INTO nonce_sweep (id, swept_before) VALUES (1, 0);`,
}

// PendingTTL is how long a pending enrollment holds its device ID against
// an enrollment of another AK.
const PendingTTL = 10 * time.Minute

// maxConns is how many connections a store keeps open between uses, and
// opens at most on PostgreSQL (each is a server process). SQLite opens at
// most twice as many: a writer waits for the file's one write lock holding
// its connection, and the appraisals' reads go on beside those waiting
// (found by review: a burst of 300 enrollments opened 294 connections,
// three file descriptors each).
const maxConns = 32

// sqlStore is the Store over database/sql, for both dialects.
type sqlStore struct {
	db *sql.DB
	d  dialect
	// lastSweep is when this store last deleted expired nonces (Unix ms).
	lastSweep atomic.Int64
	// group is SQLite's appraisal writer (record.go), nil on PostgreSQL.
	group *groupCommit
	// lookup is DeviceWithPolicy's query, prepared once: the appraisal's
	// one read (SQLite's driver otherwise compiles the join every time).
	lookup *sql.Stmt
}

// Open opens the store a URL names and applies pending migrations:
// sqlite:///path/fleet.db (created, mode 0600) or postgres://... (pgx).
func Open(ctx context.Context, rawURL string) (Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("fleet: database URL: %w", err)
	}
	var s *sqlStore
	switch u.Scheme {
	case "sqlite":
		if u.Path == "" || u.Host != "" {
			return nil, fmt.Errorf("fleet: %q: want sqlite:///absolute/path.db", rawURL)
		}
		dsn := "file:" + u.Path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_txlock=immediate"
		db, err := sql.Open("sqlite", dsn)
		if err != nil {
			return nil, err
		}
		s = &sqlStore{db: db, d: sqliteDialect}
	case "postgres", "postgresql":
		// A lock wait inside a record's statement is bounded (30 s, unless
		// the URL sets lock_timeout): the statement reads the sweep's mark
		// when it starts, so it must end long before a sweep could delete
		// a nonce it is about to take (NonceKeep - MaxRecordDelay; found
		// by review: a record stalled for minutes took a swept nonce again).
		if q := u.Query(); q.Get("lock_timeout") == "" {
			q.Set("lock_timeout", "30000")
			u.RawQuery = q.Encode()
			rawURL = u.String()
		}
		db, err := sql.Open("pgx", rawURL)
		if err != nil {
			return nil, err
		}
		s = &sqlStore{db: db, d: postgresDialect}
	default:
		return nil, fmt.Errorf("%w: %q", ErrUnknownDriver, u.Scheme)
	}
	// Up to maxConns kept idle: database/sql keeps 2 by default, and
	// under load every connection beyond them was closed on release and
	// opened again. On PostgreSQL that is a new server process with its
	// TLS and authentication (and at most maxConns are opened); on SQLite
	// the file opened again, its pragmas run, its schema read and the
	// appraisal's read compiled again (120 us of each SQLite appraisal's
	// CPU in the profile, 45 with the connections kept).
	if s.d.name == "postgres" {
		s.db.SetMaxOpenConns(maxConns)
	} else {
		s.db.SetMaxOpenConns(2 * maxConns)
	}
	s.db.SetMaxIdleConns(maxConns)
	err = s.migrate(ctx)
	// SQLite answers SQLITE_BUSY without waiting when replicas open a new
	// database at once and one switches it to WAL (seen in the replicas
	// test, rarely): the switch is made once, so a retry finds it done.
	for i := 0; i < 20 && err != nil && s.d.name == "sqlite" && strings.Contains(err.Error(), "SQLITE_BUSY"); i++ {
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-time.After(50 * time.Millisecond):
			err = s.migrate(ctx)
		}
	}
	if err == nil {
		s.lookup, err = s.db.PrepareContext(ctx, s.d.q(lookupQuery))
	}
	if err == nil && s.d.name == "sqlite" {
		s.group, err = startGroupCommit(ctx, s)
	}
	if err != nil {
		s.db.Close()
		return nil, err
	}
	return s, nil
}

// migrate applies the migrations the database lacks, each in one
// transaction under the dialect's lock, so that replicas starting together
// apply each once; a database newer than this binary is refused.
func (s *sqlStore) migrate(ctx context.Context) error {
	for {
		done, err := s.migrateOne(ctx)
		if err != nil || done {
			return err
		}
	}
}

func (s *sqlStore) migrateOne(ctx context.Context) (done bool, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	if s.d.lock != "" {
		if _, err := tx.ExecContext(ctx, s.d.lock); err != nil {
			return false, err
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)`); err != nil {
		return false, err
	}
	var version int
	switch err := tx.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&version); {
	case errors.Is(err, sql.ErrNoRows):
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES (0)`); err != nil {
			return false, err
		}
	case err != nil:
		return false, err
	}
	if version > len(migrations) {
		return false, fmt.Errorf("%w: version %d, this provd knows %d", ErrSchemaTooNew, version, len(migrations))
	}
	if version == len(migrations) {
		return true, tx.Commit()
	}
	for _, stmt := range strings.Split(migrations[version], ";") {
		if strings.TrimSpace(stmt) == "" {
			continue
		}
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return false, fmt.Errorf("fleet: migration %d: %w", version+1, err)
		}
	}
	if _, err := tx.ExecContext(ctx, s.d.q(`UPDATE schema_version SET version = $1`), version+1); err != nil {
		return false, err
	}
	return false, tx.Commit()
}

func (s *sqlStore) Close() error {
	if s.group != nil {
		s.group.close()
	}
	if s.lookup != nil {
		s.lookup.Close()
	}
	return s.db.Close()
}

func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v).UTC()
}

var b64 = base64.StdEncoding

const deviceCols = `id, class, state, ek_public, ek_cert, ak_public, secret_hash, enrolled_at, updated_at, last_verdict, last_at`

func scanDevice(row interface{ Scan(...any) error }) (Device, error) {
	var d Device
	var ek, cert, ak, secret string
	var enrolled, updated, last int64
	if err := row.Scan(&d.ID, &d.Class, &d.State, &ek, &cert, &ak, &secret, &enrolled, &updated, &d.LastVerdict, &last); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return Device{}, ErrNotFound
		}
		return Device{}, err
	}
	var err error
	for _, f := range []struct {
		in  string
		out *[]byte
	}{{ek, &d.EKPublic}, {cert, &d.EKCert}, {ak, &d.AKPublic}, {secret, &d.SecretHash}} {
		if *f.out, err = b64.DecodeString(f.in); err != nil {
			return Device{}, fmt.Errorf("fleet: device %s: %w", d.ID, err)
		}
	}
	if len(d.SecretHash) == 0 {
		d.SecretHash = nil
	}
	d.EnrolledAt, d.UpdatedAt, d.LastAt = fromMS(enrolled), fromMS(updated), fromMS(last)
	return d, nil
}

func (s *sqlStore) PutPending(ctx context.Context, d Device) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	old, err := scanDevice(tx.QueryRowContext(ctx, s.d.q(`SELECT `+deviceCols+` FROM devices WHERE id = $1`), d.ID))
	switch {
	case err == nil && old.State != StatePending:
		return fmt.Errorf("%w: device %s is %s", ErrExists, d.ID, old.State)
	case err == nil && !bytes.Equal(old.AKPublic, d.AKPublic) && d.EnrolledAt.Before(old.EnrolledAt.Add(PendingTTL)):
		// Found by review: EK certificates are public, and anyone could
		// replace a victim's pending enrollment with an AK of their own.
		return fmt.Errorf("%w: device %s has a pending enrollment of another AK until %s", ErrExists, d.ID, old.EnrolledAt.Add(PendingTTL).Format(time.RFC3339))
	case err == nil:
		if _, err := tx.ExecContext(ctx, s.d.q(`DELETE FROM devices WHERE id = $1`), d.ID); err != nil {
			return err
		}
	case !errors.Is(err, ErrNotFound):
		return err
	}
	_, err = tx.ExecContext(ctx, s.d.q(`INSERT INTO devices (`+deviceCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`),
		d.ID, d.Class, StatePending, b64.EncodeToString(d.EKPublic), b64.EncodeToString(d.EKCert), b64.EncodeToString(d.AKPublic),
		b64.EncodeToString(d.SecretHash), ms(d.EnrolledAt), ms(d.EnrolledAt), "", int64(0))
	if err != nil {
		return err
	}
	return tx.Commit()
}

func (s *sqlStore) Activate(ctx context.Context, id string, secretHash []byte, now time.Time) (Device, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Device{}, err
	}
	defer tx.Rollback()
	d, err := scanDevice(tx.QueryRowContext(ctx, s.d.q(`SELECT `+deviceCols+` FROM devices WHERE id = $1`), id))
	if err != nil {
		return Device{}, err
	}
	if d.State != StatePending {
		return Device{}, fmt.Errorf("%w: device %s is %s", ErrExists, id, d.State)
	}
	if len(d.SecretHash) == 0 || subtle.ConstantTimeCompare(d.SecretHash, secretHash) != 1 {
		return Device{}, ErrWrongSecret
	}
	// Conditional on the very record checked (found by review: on
	// PostgreSQL, READ COMMITTED, an UPDATE on id and state alone matched
	// a pending record another enrollment wrote in between, and enrolled
	// its AK under the victim's activation).
	res, err := tx.ExecContext(ctx, s.d.q(`UPDATE devices SET state = $1, secret_hash = '', updated_at = $2
		WHERE id = $3 AND state = $4 AND secret_hash = $5 AND ak_public = $6 AND enrolled_at = $7`),
		StateEnrolled, ms(now), id, StatePending, b64.EncodeToString(d.SecretHash), b64.EncodeToString(d.AKPublic), ms(d.EnrolledAt))
	if err != nil {
		return Device{}, err
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return Device{}, fmt.Errorf("%w: device %s changed under the activation", ErrExists, id)
	}
	if err := tx.Commit(); err != nil {
		return Device{}, err
	}
	d.State, d.SecretHash, d.UpdatedAt = StateEnrolled, nil, now
	return d, nil
}

const lookupQuery = `SELECT d.id, d.class, d.state, d.ek_public, d.ek_cert, d.ak_public, d.secret_hash, d.enrolled_at, d.updated_at, d.last_verdict, d.last_at,
		p.pcrs, p.manifests, p.tofu, p.updated_at, p.pk_policies
		FROM devices d LEFT JOIN policies p ON p.class = d.class WHERE d.id = $1`

func (s *sqlStore) DeviceWithPolicy(ctx context.Context, id string) (Device, *Policy, error) {
	var pcrs, manifests, pk sql.NullString
	var tofu, updated sql.NullInt64
	var d Device
	row := s.lookup.QueryRowContext(ctx, id)
	d, err := scanDevice(scanWith(row, &pcrs, &manifests, &tofu, &updated, &pk))
	if err != nil {
		return Device{}, nil, err
	}
	if !pcrs.Valid {
		return d, nil, nil
	}
	p, err := policyFromRow(d.Class, pcrs.String, manifests.String, pk.String, tofu.Int64, updated.Int64)
	if err != nil {
		return Device{}, nil, err
	}
	return d, &p, nil
}

// scanWith scans a row whose first columns are a device's and whose
// extra columns go to extra.
func scanWith(row interface{ Scan(...any) error }, extra ...any) interface{ Scan(...any) error } {
	return scanFunc(func(dest ...any) error { return row.Scan(append(dest, extra...)...) })
}

type scanFunc func(dest ...any) error

func (f scanFunc) Scan(dest ...any) error { return f(dest...) }

func (s *sqlStore) Device(ctx context.Context, id string) (Device, error) {
	return scanDevice(s.db.QueryRowContext(ctx, s.d.q(`SELECT `+deviceCols+` FROM devices WHERE id = $1`), id))
}

func (s *sqlStore) Devices(ctx context.Context, after string, limit int) ([]Device, error) {
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	rows, err := s.db.QueryContext(ctx, s.d.q(`SELECT `+deviceCols+` FROM devices WHERE id > $1 ORDER BY id LIMIT $2`), after, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

func (s *sqlStore) Revoke(ctx context.Context, id string, now time.Time) error {
	res, err := s.db.ExecContext(ctx, s.d.q(`UPDATE devices SET state = $1, secret_hash = '', updated_at = $2 WHERE id = $3`), StateRevoked, ms(now), id)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return fmt.Errorf("%w: device %s", ErrNotFound, id)
	}
	return nil
}

func (s *sqlStore) UseNonce(ctx context.Context, n Nonce, now time.Time) error {
	if err := s.sweep(ctx, now, true); err != nil {
		return err
	}
	return s.takeNonce(ctx, s.db, n)
}

// execer is a database or a transaction.
type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// takeNonce stores a used nonce: ErrNonceUnknown when it was taken before
// (or could have been, and swept since: insertNonce).
func (s *sqlStore) takeNonce(ctx context.Context, db execer, n Nonce) error {
	res, err := db.ExecContext(ctx, s.d.q(insertNonce), b64.EncodeToString(n.Nonce), n.DeviceID, ms(n.ExpiresAt))
	if err != nil {
		return err
	}
	if k, err := res.RowsAffected(); err != nil || k != 1 {
		return ErrNonceUnknown
	}
	return nil
}

// sweepEvery is how often a store deletes expired nonces on the hot path.
const sweepEvery = time.Second

// NonceKeep is how long a taken nonce is kept past its expiry. The
// endpoint refuses to record an appraisal later than MaxRecordDelay after
// its nonce expired, by its own clock; a nonce swept by a replica whose
// clock is ahead could otherwise be taken again by an appraisal that began
// before the expiry on a replica behind, or that ran slow (found by
// review: one nonce, two verdicts and two deliveries). So replicas' clocks
// must agree within NonceKeep - MaxRecordDelay (4 minutes): docs/fleet.md.
const NonceKeep = 5 * time.Minute

// sweepCutoff is the expiry before which a taken nonce is deleted at now.
func sweepCutoff(now time.Time) int64 { return ms(now.Add(-NonceKeep)) }

// sweep deletes the used nonces expired more than NonceKeep ago: always
// when force, else at most once per sweepEvery on this store (the table
// holds the nonces of the last NonceTTL and NonceKeep; one indexed range
// delete a second keeps it so).
func (s *sqlStore) sweep(ctx context.Context, now time.Time, force bool) error {
	if !force {
		last := s.lastSweep.Load()
		if now.UnixMilli()-last < sweepEvery.Milliseconds() || !s.lastSweep.CompareAndSwap(last, now.UnixMilli()) {
			return nil
		}
	}
	cut := sweepCutoff(now)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, s.d.q(markSweep), cut); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, s.d.q(sweepNonces), cut); err != nil {
		return err
	}
	return tx.Commit()
}

func (s *sqlStore) NonceKey(ctx context.Context) ([]byte, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if _, err := s.db.ExecContext(ctx, s.d.q(`INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING`),
		"nonce_key", b64.EncodeToString(key)); err != nil {
		return nil, err
	}
	var v string
	if err := s.db.QueryRowContext(ctx, s.d.q(`SELECT value FROM settings WHERE name = $1`), "nonce_key").Scan(&v); err != nil {
		return nil, err
	}
	k, err := b64.DecodeString(v)
	if err != nil || len(k) != 32 {
		return nil, fmt.Errorf("fleet: the stored nonce key is not 32 bytes")
	}
	return k, nil
}

func (s *sqlStore) RecordAppraisal(ctx context.Context, a Appraisal) error {
	r, err := newRecord(a)
	if err != nil {
		return err
	}
	switch {
	case s.group != nil:
		err = s.group.record(ctx, r)
	case a.Nonce != nil && s.d.name == "postgres":
		err = s.recordOneStatement(ctx, r)
	default:
		err = s.recordTx(ctx, r)
	}
	if err != nil {
		return err
	}
	// The sweep after the commit, on its own: a record rolled back (a
	// replay) would take it back with it (found by review: replays sent
	// first in each second stopped every sweep). Best effort: the next
	// second's record sweeps again. SQLite's group commit sweeps in its
	// writer.
	if a.Nonce != nil && s.group == nil {
		_ = s.sweep(ctx, a.At, false)
	}
	return nil
}

func (s *sqlStore) Appraisals(ctx context.Context, deviceID string, limit int) ([]Appraisal, error) {
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	rows, err := s.db.QueryContext(ctx, s.d.q(`SELECT id, device_id, at, pass, reasons, pcrs FROM appraisals WHERE device_id = $1 ORDER BY at DESC, id LIMIT $2`), deviceID, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Appraisal
	for rows.Next() {
		var a Appraisal
		var at, pass int64
		var reasons, pcrs string
		if err := rows.Scan(&a.ID, &a.DeviceID, &at, &pass, &reasons, &pcrs); err != nil {
			return nil, err
		}
		a.At, a.Pass = fromMS(at), pass == 1
		if err := json.Unmarshal([]byte(reasons), &a.Reasons); err != nil {
			return nil, fmt.Errorf("fleet: appraisal %s: %w", a.ID, err)
		}
		if err := json.Unmarshal([]byte(pcrs), &a.PCRs); err != nil {
			return nil, fmt.Errorf("fleet: appraisal %s: %w", a.ID, err)
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

func policyRow(p Policy) (pcrs, manifests string, tofu int64, err error) {
	b, err := json.Marshal(p.PCRs)
	if err != nil {
		return "", "", 0, err
	}
	m := p.Manifests
	if m == nil {
		m = []string{}
	}
	mb, err := json.Marshal(m)
	if err != nil {
		return "", "", 0, err
	}
	if p.TOFU {
		tofu = 1
	}
	return string(b), string(mb), tofu, nil
}

func (s *sqlStore) SetPolicy(ctx context.Context, p Policy) error {
	pcrs, manifests, tofu, err := policyRow(p)
	if err != nil {
		return err
	}
	pk := p.PKPolicies
	if pk == nil {
		pk = []string{}
	}
	pkj, err := json.Marshal(pk)
	if err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx, s.d.q(`INSERT INTO policies (class, pcrs, manifests, tofu, updated_at, pk_policies) VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (class) DO UPDATE SET pcrs = excluded.pcrs, manifests = excluded.manifests, tofu = excluded.tofu, updated_at = excluded.updated_at,
			pk_policies = excluded.pk_policies`),
		p.Class, pcrs, manifests, tofu, ms(p.UpdatedAt), string(pkj))
	return err
}

func (s *sqlStore) Policy(ctx context.Context, class string) (Policy, error) {
	var pcrs, manifests, pk string
	var tofu, updated int64
	err := s.db.QueryRowContext(ctx, s.d.q(`SELECT pcrs, manifests, tofu, updated_at, pk_policies FROM policies WHERE class = $1`), class).Scan(&pcrs, &manifests, &tofu, &updated, &pk)
	if errors.Is(err, sql.ErrNoRows) {
		return Policy{}, ErrNotFound
	}
	if err != nil {
		return Policy{}, err
	}
	return policyFromRow(class, pcrs, manifests, pk, tofu, updated)
}

// policyFromRow reads a policies row's columns.
func policyFromRow(class, pcrs, manifests, pk string, tofu, updated int64) (Policy, error) {
	p := Policy{Class: class}
	if err := json.Unmarshal([]byte(pcrs), &p.PCRs); err != nil {
		return Policy{}, fmt.Errorf("fleet: policy %s: %w", class, err)
	}
	if err := json.Unmarshal([]byte(manifests), &p.Manifests); err != nil {
		return Policy{}, fmt.Errorf("fleet: policy %s: %w", class, err)
	}
	if err := json.Unmarshal([]byte(pk), &p.PKPolicies); err != nil {
		return Policy{}, fmt.Errorf("fleet: policy %s: %w", class, err)
	}
	if len(p.PKPolicies) == 0 {
		p.PKPolicies = nil
	}
	p.TOFU, p.UpdatedAt = tofu == 1, fromMS(updated)
	return p, nil
}

func (s *sqlStore) Baseline(ctx context.Context, deviceID string, p Policy) (Policy, bool, error) {
	pcrs, manifests, tofu, err := policyRow(p)
	if err != nil {
		return Policy{}, false, err
	}
	// The device's state is read in the insert's own statement (SQLite's
	// upsert after INSERT ... SELECT needs the WHERE it has), waiting for
	// a revocation being committed (forShare): a revocation that committed,
	// or was committing, before it leaves the class without a baseline.
	res, err := s.db.ExecContext(ctx, s.d.q(`INSERT INTO policies (class, pcrs, manifests, tofu, updated_at)
		SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM devices WHERE id = $6 AND class = $1 AND state = '`+StateEnrolled+`'`+s.d.forShare+`)
		ON CONFLICT (class) DO NOTHING`),
		p.Class, pcrs, manifests, tofu, ms(p.UpdatedAt), deviceID)
	if err != nil {
		return Policy{}, false, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return Policy{}, false, err
	}
	cur, err := s.Policy(ctx, p.Class)
	if n == 0 && errors.Is(err, ErrNotFound) {
		return Policy{}, false, ErrNotEnrolled
	}
	return cur, n == 1, err
}

func (s *sqlStore) PutSecret(ctx context.Context, sec Secret) error {
	kind := sec.Kind
	if kind == "" {
		kind = fleetapi.KindSecret
	}
	_, err := s.db.ExecContext(ctx, s.d.q(`INSERT INTO secrets (class, name, kind, value, updated_at) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (class, name) DO UPDATE SET kind = excluded.kind, value = excluded.value, updated_at = excluded.updated_at`),
		sec.Class, sec.Name, kind, b64.EncodeToString(sec.Value), ms(sec.UpdatedAt))
	return err
}

func (s *sqlStore) Secrets(ctx context.Context, class string) ([]Secret, error) {
	rows, err := s.db.QueryContext(ctx, s.d.q(`SELECT name, kind, value, updated_at FROM secrets WHERE class = $1 ORDER BY name`), class)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Secret
	for rows.Next() {
		sec := Secret{Class: class}
		var v string
		var at int64
		if err := rows.Scan(&sec.Name, &sec.Kind, &v, &at); err != nil {
			return nil, err
		}
		if sec.Value, err = b64.DecodeString(v); err != nil {
			return nil, fmt.Errorf("fleet: secret %s/%s: %w", class, sec.Name, err)
		}
		sec.UpdatedAt = fromMS(at)
		out = append(out, sec)
	}
	return out, rows.Err()
}

func (s *sqlStore) SecretsFor(ctx context.Context, id string) ([]Secret, error) {
	// One statement, one snapshot: the device's state and its class's
	// secrets as of the same moment (found by review: a revocation that
	// committed after the record, and returned to the operator, was
	// followed by the class's secrets delivered all the same).
	rows, err := s.db.QueryContext(ctx, s.d.q(`SELECT d.state, d.class, s.name, s.kind, s.value, s.updated_at
		FROM devices d LEFT JOIN secrets s ON s.class = d.class WHERE d.id = $1 ORDER BY s.name`), id)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Secret
	seen := false
	for rows.Next() {
		var state, class string
		var name, kind, v sql.NullString
		var at sql.NullInt64
		if err := rows.Scan(&state, &class, &name, &kind, &v, &at); err != nil {
			return nil, err
		}
		seen = true
		if state != StateEnrolled {
			return nil, ErrNotEnrolled
		}
		if !name.Valid {
			continue // no secrets for the class
		}
		sec := Secret{Class: class, Name: name.String, Kind: kind.String, UpdatedAt: fromMS(at.Int64)}
		if sec.Value, err = b64.DecodeString(v.String); err != nil {
			return nil, fmt.Errorf("fleet: secret %s/%s: %w", class, sec.Name, err)
		}
		out = append(out, sec)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if !seen {
		return nil, ErrNotEnrolled
	}
	return out, nil
}

func (s *sqlStore) PutPeer(ctx context.Context, p Peer) error {
	// One statement, so that a device revoked meanwhile (or never
	// enrolled) gets no row: the insert selects from its enrolled record.
	res, err := s.db.ExecContext(ctx, s.d.q(`INSERT INTO peers (device_id, identity, parent_name, pk_name, pk_policy, registered_at, policy_at)
		SELECT id, $2, $3, $4, $5, $6, $8 FROM devices WHERE id = $1 AND state = $7
		ON CONFLICT (device_id) DO UPDATE SET identity = excluded.identity, parent_name = excluded.parent_name,
			pk_name = excluded.pk_name, pk_policy = excluded.pk_policy, registered_at = excluded.registered_at, policy_at = excluded.policy_at`),
		p.DeviceID, b64.EncodeToString(p.Identity), p.ParentName, p.PKName, p.PKPolicy, ms(p.RegisteredAt), StateEnrolled, ms(p.PolicyAt))
	return touchedOne(res, err)
}

func (s *sqlStore) Peer(ctx context.Context, deviceID string) (Peer, error) {
	p := Peer{DeviceID: deviceID}
	var id string
	var at, policyAt int64
	err := s.db.QueryRowContext(ctx, s.d.q(`SELECT identity, parent_name, pk_name, pk_policy, registered_at, policy_at FROM peers WHERE device_id = $1`), deviceID).
		Scan(&id, &p.ParentName, &p.PKName, &p.PKPolicy, &at, &policyAt)
	if errors.Is(err, sql.ErrNoRows) {
		return Peer{}, ErrNotFound
	}
	if err != nil {
		return Peer{}, err
	}
	if p.Identity, err = b64.DecodeString(id); err != nil {
		return Peer{}, fmt.Errorf("fleet: peer %s: %w", deviceID, err)
	}
	p.RegisteredAt, p.PolicyAt = fromMS(at), fromMS(policyAt)
	return p, nil
}

func (s *sqlStore) DeleteSecret(ctx context.Context, class, name string) error {
	res, err := s.db.ExecContext(ctx, s.d.q(`DELETE FROM secrets WHERE class = $1 AND name = $2`), class, name)
	return touchedOne(res, err)
}

// touchedOne is ErrNotFound when a statement changed no row.
func touchedOne(res sql.Result, err error) error {
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return ErrNotFound
	}
	return nil
}
