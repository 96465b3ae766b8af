package fleet_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
)

// Found by review (issue 14), now refused: a taken nonce is kept
// fleet.NonceKeep past its expiry, and an appraisal is not recorded more
// than fleet.MaxRecordDelay after its nonce expired. The attack: a nonce
// is checked for expiry when the appraisal starts (checkNonce, e.now())
// but taken only when its record is written, and the
// sweep (SQLite's group commit after each batch, PostgreSQL's after each
// record) deletes taken nonces whose expiry is before the sweeping
// record's time. Evidence replayed so that its appraisal starts just before
// the nonce expires and its record lands after another record's sweep (any
// device's record a second later; the replay's own appraisal can be made
// slow by its sender with a large event log) finds the nonce gone from the
// table, inserts it again, and passes a second time: two verdicts and two
// deliveries of one nonce.

// clock is the endpoint's Now, moved by the test.
type clock struct{ ns atomic.Int64 }

func (c *clock) now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *clock) add(d time.Duration) { c.ns.Add(int64(d)) }

// slowRecordStore stands for a replay whose appraisal takes long enough
// for another record's sweep to run before its own record: on the replay
// (the second record of one nonce), before recording it, time passes
// beyond the nonce's expiry and sweep runs (another device's attestation).
type slowRecordStore struct {
	fleet.Store
	mu    sync.Mutex
	seen  map[string]int
	sweep func()
}

func (s *slowRecordStore) RecordAppraisal(ctx context.Context, a fleet.Appraisal) error {
	if a.Nonce != nil {
		s.mu.Lock()
		k := string(a.Nonce.Nonce)
		s.seen[k]++
		n := s.seen[k]
		s.mu.Unlock()
		if n == 2 && s.sweep != nil {
			s.sweep()
		}
	}
	return s.Store.RecordAppraisal(ctx, a)
}

// The replay's record is held up, after the endpoint's checks, for a
// moment past the nonce's expiry, or for longer than fleet.NonceKeep (a
// stalled connection, a lock wait, a paused process: found by the second
// review, the swept nonce was taken again), while another record sweeps.
func TestNonceReplayedAcrossItsExpiryIsRefused(t *testing.T) {
	raw, vals := benchLog(t)
	for _, stall := range []time.Duration{2 * time.Second, fleet.NonceKeep + 2*time.Second} {
		for name, url := range storeURLs(t) { // fresh stores for each
			t.Run(fmt.Sprintf("%s/%v", name, stall), func(t *testing.T) {
				replayAcrossExpiry(t, url, raw, vals, stall)
			})
		}
	}
}

func replayAcrossExpiry(t *testing.T, url string, raw []byte, vals map[int][]byte, stall time.Duration) {
	ctx := context.Background()
	st := openStore(t, url)
	d := recordFleet(t, st, vals)
	c := &clock{}
	c.ns.Store(time.Now().UnixNano())
	const ttl = 2 * time.Minute
	ss := &slowRecordStore{Store: st, seen: map[string]int{}}
	e := fleet.New(fleet.Config{Store: ss, Now: c.now, NonceTTL: ttl})

	req := d.evidence(t, e, raw, vals)
	v, err := e.Attest(ctx, req)
	if err != nil || !v.Pass || len(v.Deliveries) != 1 {
		t.Fatalf("first attestation: %+v %v", v, err)
	}
	// The replay is sent a moment before the nonce expires; while
	// it is appraised, the nonce expires and another record (here
	// the same device's next, genuine attestation: any device's
	// does) sweeps the expired nonces.
	c.add(ttl - time.Millisecond)
	ss.sweep = func() {
		ss.sweep = nil
		c.add(stall)
		other := d.evidence(t, e, raw, vals)
		if v, err := e.Attest(ctx, other); err != nil || !v.Pass {
			t.Errorf("the sweeping attestation: %+v %v", v, err)
		}
	}
	v, err = e.Attest(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if v.Pass || len(v.Deliveries) > 0 {
		t.Fatalf("evidence replayed across its nonce's expiry passed again (%d deliveries): one nonce, two verdicts", len(v.Deliveries))
	}
	if len(v.Reasons) != 1 || (v.Reasons[0].Code != fleet.CodeNonceUnknown && v.Reasons[0].Code != fleet.CodeNonceExpired) {
		t.Fatalf("the replay: %+v", v)
	}
}

// The same without any slowness: two replicas on one PostgreSQL database
// whose clocks differ by 5 seconds. The replica ahead sweeps, with its own
// time, the nonces the other still takes as unexpired: a replay sent to
// the replica behind, in the last seconds of its nonce's life, passes again.
func TestNonceReplayAcrossSkewedReplicasIsRefused(t *testing.T) {
	raw, vals := benchLog(t)
	ctx := context.Background()
	const ttl = 2 * time.Minute
	r := newSkewedReplicas(t, vals, ttl, 5*time.Second)
	d, behind, ea, eb := r.d, r.behind, r.ahead, r.behindE

	req := d.evidence(t, eb, raw, vals)
	if v, err := eb.Attest(ctx, req); err != nil || !v.Pass || len(v.Deliveries) != 1 {
		t.Fatalf("first attestation: %+v %v", v, err)
	}
	behind.add(ttl - 2*time.Second)
	// Any record on the replica ahead (here the device's next attestation).
	if v, err := ea.Attest(ctx, d.evidence(t, ea, raw, vals)); err != nil || !v.Pass {
		t.Fatalf("attestation on the replica ahead: %+v %v", v, err)
	}
	v, err := eb.Attest(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if v.Pass || len(v.Deliveries) > 0 {
		t.Fatalf("evidence replayed to the replica behind passed again (%d deliveries): one nonce, two verdicts", len(v.Deliveries))
	}
}

// Found by review (issue 14), now refused: SQLite's group commit hands a record to its writer in a select
// that also watches the caller's context; when the context has already
// ended and the writer is waiting, both cases are ready and Go picks one at
// random. The record of a caller whose context has ended is then kept, and
// answered nil (pass), about half the time: the threat model's "a caller
// whose context has ended before the hand-over gets an error with nothing
// kept" holds by chance (fleettest checks it once). Attest then goes on
// with that ended context: the verdict is committed, the delivery's read
// fails, the caller's answer is an error, and the nonce is spent.
func TestEndedContextRecordIsNotKept(t *testing.T) {
	_, vals := benchLog(t)
	ctx := context.Background()
	st, err := fleet.Open(ctx, "sqlite://"+t.TempDir()+"/fleet.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	d := recordFleet(t, st, vals)
	done, cancel := context.WithCancel(ctx)
	cancel()
	kept := 0
	const n = 64
	for i := range n {
		nonce := &fleet.Nonce{Nonce: []byte(fmt.Sprintf("ended-%d", i)), DeviceID: d.id, ExpiresAt: time.Now().Add(time.Minute)}
		if err := st.RecordAppraisal(done, fleet.Appraisal{ID: fmt.Sprintf("ended-%d", i), DeviceID: d.id, Nonce: nonce, At: time.Now(), Pass: true,
			PCRs: map[string]map[int]string{}}); err == nil {
			kept++
		}
		time.Sleep(time.Millisecond) // the writer back at its receive
	}
	if kept != 0 {
		t.Fatalf("%d of %d records whose caller's context had ended were kept and answered nil", kept, n)
	}
}

// Found by review (issue 14), now refused: the record is conditional on
// the device being enrolled (fleet.ErrNotEnrolled). The attack: the record did not check that
// the device is still enrolled. A revocation that commits while the
// device's appraisal runs (between its one read and its one write: the
// device can keep an appraisal in flight most of the time, and make each
// slow with a large event log) is followed by a "pass" recorded as the
// revoked device's last verdict and the class's secrets delivered to it.
// The one-statement record (PostgreSQL) and the group commit (SQLite) were
// the place to make the write conditional on the device's state.
func TestRevokedDuringAppraisalGetsNothing(t *testing.T) {
	raw, vals := benchLog(t)
	for name, url := range storeURLs(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			st := openStore(t, url)
			d := recordFleet(t, st, vals)
			e := fleet.New(fleet.Config{Store: &revoking{Store: st, at: revokeBeforeRecord}})
			v, err := e.Attest(ctx, d.evidence(t, e, raw, vals))
			if err != nil {
				t.Fatal(err)
			}
			dev, derr := st.Device(ctx, d.id)
			if v.Pass || len(v.Deliveries) > 0 {
				t.Fatalf("a device revoked during its appraisal: pass %v, %d deliveries; stored state %q, last verdict %q (%v)",
					v.Pass, len(v.Deliveries), dev.State, dev.LastVerdict, derr)
			}
		})
	}
}

// A device revoked while its appraisal ran, the first of a class without
// golden values, does not make its quote the class's baseline (it was
// stored before the record, which alone checked the device's state: the
// revoked, perhaps compromised, device set what every later device of its
// class was compared with). It is answered revoked, with nothing recorded.
func TestRevokedDuringAppraisalSetsNoBaseline(t *testing.T) {
	raw, vals := benchLog(t)
	for name, url := range storeURLs(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			st := openStore(t, url)
			d := enrollSim(t, st, 1)
			e := fleet.New(fleet.Config{Store: &revoking{Store: st, at: revokeAtBaseline}, DefaultPCRs: simPCRs})
			v, err := e.Attest(ctx, d.evidence(t, e, raw, vals))
			if err != nil {
				t.Fatal(err)
			}
			if v.Pass || len(v.Reasons) != 1 || v.Reasons[0].Code != fleet.CodeRevoked {
				t.Fatalf("verdict %+v, want revoked", v)
			}
			if p, err := st.Policy(ctx, "bench"); !errors.Is(err, fleet.ErrNotFound) {
				t.Fatalf("the class's policy after a revoked device's appraisal: %+v, %v", p, err)
			}
			if h, err := st.Appraisals(ctx, d.id, 10); err != nil || len(h) != 0 {
				t.Fatalf("history %+v %v, want nothing recorded", h, err)
			}
			// An enrolled device of the class still sets it.
			d2 := enrollSim(t, st, 2)
			e = fleet.New(fleet.Config{Store: st, DefaultPCRs: simPCRs})
			if v, err := e.Attest(ctx, d2.evidence(t, e, raw, vals)); err != nil || !v.Pass || v.Reasons[0].Code != fleet.CodeBaseline {
				t.Fatalf("the next device: %+v, %v", v, err)
			}
		})
	}
}

// A revocation committing while the first appraisal of a class stores its
// baseline (its UPDATE done, its COMMIT in flight): the baseline waits for
// it and stores nothing (found by review: on PostgreSQL the insert read the
// device's row from before the revocation and did not wait, so the class's
// baseline was the revoked device's quote while its record was refused).
func TestBaselineWaitsForACommittingRevocation(t *testing.T) {
	raw, vals := benchLog(t)
	for name, url := range storeURLs(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			st := openStore(t, url)
			d := enrollSim(t, st, 1)
			e := fleet.New(fleet.Config{Store: st, DefaultPCRs: simPCRs})
			ev := d.evidence(t, e, raw, vals)
			tx, err := rawDB(t, url).BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.ExecContext(ctx, `UPDATE devices SET state = 'revoked', secret_hash = '' WHERE id = $1`, d.id); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			var v fleetapi.Verdict
			go func() {
				var err error
				v, err = e.Attest(ctx, ev)
				done <- err
			}()
			time.Sleep(300 * time.Millisecond) // the appraisal reaches the baseline
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if v.Pass {
				t.Fatalf("verdict %+v for a device revoked during its appraisal", v)
			}
			if p, err := st.Policy(ctx, "bench"); !errors.Is(err, fleet.ErrNotFound) {
				t.Fatalf("the class's baseline from a device revoked while it was stored: %+v (%v)", p, err)
			}
		})
	}
}

// An appraisal that began before its nonce expired but reaches its record
// more than fleet.MaxRecordDelay after the expiry is not recorded: the
// store keeps a taken nonce only fleet.NonceKeep past its expiry, so a
// later record could find it swept and take it again.
func TestSlowAppraisalPastMaxRecordDelayIsNotRecorded(t *testing.T) {
	raw, vals := benchLog(t)
	for name, url := range storeURLs(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			st := openStore(t, url)
			d := recordFleet(t, st, vals)
			const ttl = 2 * time.Minute
			c := &clock{}
			c.ns.Store(time.Now().UnixNano())
			// The endpoint reads its clock for the verdict's time and the
			// nonce's check, then before the record: the appraisal in
			// between is made to take the nonce's life and more.
			var calls atomic.Int32
			var slow atomic.Bool
			now := func() time.Time {
				if slow.Load() && calls.Add(1) == 3 {
					c.add(ttl + fleet.MaxRecordDelay)
				}
				return c.now()
			}
			e := fleet.New(fleet.Config{Store: st, Now: now, NonceTTL: ttl})
			req := d.evidence(t, e, raw, vals)
			slow.Store(true)
			v, err := e.Attest(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			if v.Pass || len(v.Deliveries) > 0 || len(v.Reasons) != 1 || v.Reasons[0].Code != fleet.CodeNonceExpired {
				t.Fatalf("an appraisal recorded past MaxRecordDelay: %+v", v)
			}
			if h, err := st.Appraisals(ctx, d.id, 10); err != nil || len(h) != 0 {
				t.Fatalf("history %+v %v, want nothing recorded", h, err)
			}
		})
	}
}

// skewedReplicas are two endpoints on one PostgreSQL database, one's clock
// skew ahead of the other's (behind, moved by the test), and a device
// enrolled there.
type skewedReplicas struct {
	d              *simDevice
	behind         *clock
	ahead, behindE *fleet.Endpoint
	sb             fleet.Store
}

func newSkewedReplicas(t *testing.T, vals map[int][]byte, ttl, skew time.Duration) skewedReplicas {
	url := storeURLs(t)["postgres"]
	sa, sb := openStore(t, url), openStore(t, url)
	r := skewedReplicas{d: recordFleet(t, sa, vals), behind: &clock{}, sb: sb}
	r.behind.ns.Store(time.Now().UnixNano())
	r.ahead = fleet.New(fleet.Config{Store: sa, Now: func() time.Time { return r.behind.now().Add(skew) }, NonceTTL: ttl})
	r.behindE = fleet.New(fleet.Config{Store: sb, Now: r.behind.now, NonceTTL: ttl})
	return r
}
