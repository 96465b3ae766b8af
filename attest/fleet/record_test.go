package fleet_test

import (
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/test/pgtest"
)

// The appraisal's record against the real stores, through the endpoint:
// replicas that share a database, and the order of record and delivery.
// The devices are software-simulated (bench_test.go's AK and quotes), with
// an EK of software too, so that secrets can be sealed to it.

// storeURLs are a fresh SQLite file and a fresh PostgreSQL database.
func storeURLs(t *testing.T) map[string]string {
	srv := pgtest.Start(t)
	return map[string]string{"sqlite": "sqlite://" + filepath.Join(t.TempDir(), "fleet.db"), "postgres": srv.URL}
}

// softEK is an ECC P-256 EK's public area over a software key.
func softEK(t *testing.T) tpm2.TPMTPublic {
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	raw := k.PublicKey().Bytes()
	ek := tpm2.ECCEKTemplate
	ek.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: raw[1:33]}, Y: tpm2.TPM2BECCParameter{Buffer: raw[33:]}})
	return ek
}

// openStore opens the store at url for the test, closed at its end.
func openStore(t *testing.T, url string) fleet.Store {
	t.Helper()
	s, err := fleet.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// recordFleet enrolls one simulated device under class "bench" with golden
// values vals and a secret to deliver, in the store at url.
func recordFleet(t *testing.T, st fleet.Store, vals map[int][]byte) *simDevice {
	ctx := context.Background()
	golden := map[int]string{}
	for i, v := range vals {
		golden[i] = hex.EncodeToString(v)
	}
	if err := st.SetPolicy(ctx, fleet.Policy{Class: "bench", PCRs: map[string]map[int]string{"sha256": golden}, UpdatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutSecret(ctx, fleet.Secret{Class: "bench", Name: "wifi", Value: []byte("psk"), UpdatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return enrollSim(t, st, 1)
}

// simPCRs are what the simulated devices quote (simDevice.quote): for an
// endpoint whose class has no policy yet (Config.DefaultPCRs).
var simPCRs = map[string][]int{"sha256": {0, 1, 2, 3, 4, 5, 6, 7}}

// enrollSim enrolls simulated device n of class "bench".
func enrollSim(t *testing.T, st fleet.Store, n int) *simDevice {
	ctx := context.Background()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	d := &simDevice{id: fmt.Sprintf("%064x", n), key: key, ak: softAK(key)}
	secret := sha256.Sum256([]byte("record"))
	if err := st.PutPending(ctx, fleet.Device{ID: d.id, Class: "bench", EKPublic: tpm2.Marshal(softEK(t)), EKCert: []byte{1},
		AKPublic: tpm2.Marshal(d.ak), SecretHash: secret[:], EnrolledAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Activate(ctx, d.id, secret[:], time.Now()); err != nil {
		t.Fatal(err)
	}
	return d
}

func (d *simDevice) evidence(t *testing.T, e *fleet.Endpoint, raw []byte, vals map[int][]byte) fleetapi.AttestRequest {
	ch, err := e.Challenge(context.Background(), fleetapi.ChallengeRequest{DeviceID: d.id})
	if err != nil {
		t.Fatal(err)
	}
	q, sig := d.quote(t, ch.Nonce, vals)
	pcrs := map[string]string{}
	for j, v := range vals {
		pcrs[strconv.Itoa(j)] = hex.EncodeToString(v)
	}
	return fleetapi.AttestRequest{DeviceID: d.id, Nonce: ch.Nonce, Quote: q, Signature: sig,
		PCRs: map[string]map[string]string{"sha256": pcrs}, FirmwareLog: raw, Fetch: true}
}

// TestReplayAcrossReplicas: one genuine evidence (fetching secrets) sent
// 16 times at once to two endpoints that share one database, as replicas
// behind a load balancer do: one verdict passes and carries the delivery,
// the others are nonce_unknown and carry nothing, one appraisal is
// recorded. On SQLite and on PostgreSQL, several rounds.
func TestReplayAcrossReplicas(t *testing.T) {
	raw, vals := benchLog(t)
	for name, url := range storeURLs(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			var eps [2]*fleet.Endpoint
			var st fleet.Store
			for i := range eps {
				st = openStore(t, url)
				eps[i] = fleet.New(fleet.Config{Store: st})
			}
			d := recordFleet(t, st, vals)
			const rounds = 5
			for round := range rounds {
				req := d.evidence(t, eps[round%2], raw, vals)
				var wg sync.WaitGroup
				var pass, deliv, unknown atomic.Int32
				for i := range 16 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						v, err := eps[i%2].Attest(ctx, req)
						if err != nil {
							t.Error(err)
							return
						}
						if v.Pass {
							pass.Add(1)
						}
						if len(v.Deliveries) > 0 {
							deliv.Add(1)
						}
						if !v.Pass && len(v.Reasons) == 1 && v.Reasons[0].Code == fleet.CodeNonceUnknown {
							unknown.Add(1)
						}
					}()
				}
				wg.Wait()
				if pass.Load() != 1 || deliv.Load() != 1 || unknown.Load() != 15 {
					t.Fatalf("round %d: %d passed, %d delivered, %d nonce_unknown of 16 replays", round, pass.Load(), deliv.Load(), unknown.Load())
				}
			}
			if h, err := st.Appraisals(ctx, d.id, 100); err != nil || len(h) != rounds {
				t.Fatalf("%d appraisals recorded for %d nonces: %v", len(h), rounds, err)
			}
		})
	}
}

// durableStore checks, when the endpoint reads the class's secrets to
// deliver them, that the verdict is already committed: another store on
// the same database (other connections) sees it.
type durableStore struct {
	fleet.Store
	other     fleet.Store
	deviceID  string
	checked   atomic.Int32
	notStored atomic.Int32
}

func (s *durableStore) SecretsFor(ctx context.Context, id string) ([]fleet.Secret, error) {
	s.checked.Add(1)
	if d, err := s.other.Device(ctx, s.deviceID); err != nil || d.LastVerdict != "pass" {
		s.notStored.Add(1)
	}
	return s.Store.SecretsFor(ctx, id)
}

// failingStore counts the reads of secrets to deliver.
type failingStore struct {
	fleet.Store
	secretsRead atomic.Int32
}

func (s *failingStore) SecretsFor(ctx context.Context, id string) ([]fleet.Secret, error) {
	s.secretsRead.Add(1)
	return s.Store.SecretsFor(ctx, id)
}

// TestVerdictDurableBeforeDelivery: on both stores, the passing verdict
// is committed (visible to another connection) before the endpoint reads a
// secret to deliver, and a record the database refuses answers an error
// that carries no verdict and no delivery, leaves no appraisal and leaves
// the nonce unused: the same evidence passes once the database accepts it.
func TestVerdictDurableBeforeDelivery(t *testing.T) {
	raw, vals := benchLog(t)
	for name, url := range storeURLs(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			st, other := openStore(t, url), openStore(t, url)
			d := recordFleet(t, st, vals)
			ds := &durableStore{Store: st, other: other, deviceID: d.id}
			e := fleet.New(fleet.Config{Store: ds})
			v, err := e.Attest(ctx, d.evidence(t, e, raw, vals))
			if err != nil || !v.Pass || len(v.Deliveries) != 1 {
				t.Fatalf("%+v %v", v, err)
			}
			if ds.checked.Load() != 1 || ds.notStored.Load() != 0 {
				t.Fatalf("secrets read %d times, %d of them before the verdict was committed", ds.checked.Load(), ds.notStored.Load())
			}

			// The database refuses the next record (a trigger, added
			// by this test, on every appraisal's insert).
			db := rawDB(t, url)
			refuse, allow := refuseAppraisals(name)
			for _, q := range refuse {
				if _, err := db.Exec(q); err != nil {
					t.Fatal(err)
				}
			}
			fs := &failingStore{Store: st}
			e = fleet.New(fleet.Config{Store: fs})
			req := d.evidence(t, e, raw, vals)
			before, err := st.Appraisals(ctx, d.id, 100)
			if err != nil {
				t.Fatal(err)
			}
			v, err = e.Attest(ctx, req)
			if err == nil || len(v.Deliveries) > 0 || fs.secretsRead.Load() != 0 {
				t.Fatalf("a refused record answered %+v, %v; secrets read %d times", v, err, fs.secretsRead.Load())
			}
			if errors.Is(err, fleet.ErrNonceUnknown) {
				t.Fatalf("the error: %v", err)
			}
			after, err := st.Appraisals(ctx, d.id, 100)
			if err != nil || len(after) != len(before) {
				t.Fatalf("%d appraisals after a refused record, %d before: %v", len(after), len(before), err)
			}
			if _, err := db.Exec(allow); err != nil {
				t.Fatal(err)
			}
			if v, err := e.Attest(ctx, req); err != nil || !v.Pass || len(v.Deliveries) != 1 {
				t.Fatalf("the same evidence once the database accepts it: %+v %v", v, err)
			}
		})
	}
}

// rawDB opens the store's database directly, as an operator (or a test's
// fault) would.
func rawDB(t *testing.T, url string) *sql.DB {
	var db *sql.DB
	var err error
	if path, ok := strings.CutPrefix(url, "sqlite://"); ok {
		db, err = sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	} else {
		db, err = sql.Open("pgx", url)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// refuseAppraisals is the SQL that makes the store's database refuse
// every appraisal's insert, and the SQL that lets it accept them again.
func refuseAppraisals(store string) (refuse []string, allow string) {
	if store == "sqlite" {
		return []string{`CREATE TRIGGER refuse BEFORE INSERT ON appraisals BEGIN SELECT RAISE(ABORT, 'refused'); END`}, `DROP TRIGGER refuse`
	}
	return []string{`CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$`,
		`CREATE TRIGGER refuse BEFORE INSERT ON appraisals FOR EACH ROW EXECUTE FUNCTION refuse()`}, `DROP TRIGGER refuse ON appraisals`
}

// revokeAt is when a revoking store revokes the device, once: an
// operator's revocation committing at that moment of an appraisal.
type revokeAt int

const (
	revokeBeforeRecord revokeAt = iota // while the appraisal runs
	revokeAfterRecord                  // right after the record commits, before Attest reads the secrets to deliver
	revokeAtBaseline                   // just before its quote would be its class's baseline
)

// revoking is a store whose device is revoked at one moment of its
// appraisal (at); revoked says it happened.
type revoking struct {
	fleet.Store
	at      revokeAt
	once    sync.Once
	revoked bool
}

func (s *revoking) revoke(ctx context.Context, id string) {
	s.once.Do(func() {
		if err := s.Store.Revoke(ctx, id, time.Now()); err != nil {
			panic(err)
		}
		s.revoked = true
	})
}

func (s *revoking) RecordAppraisal(ctx context.Context, a fleet.Appraisal) error {
	if s.at == revokeBeforeRecord {
		s.revoke(ctx, a.DeviceID)
	}
	if err := s.Store.RecordAppraisal(ctx, a); err != nil {
		return err
	}
	if s.at == revokeAfterRecord {
		s.revoke(ctx, a.DeviceID)
	}
	return nil
}

func (s *revoking) Baseline(ctx context.Context, deviceID string, p fleet.Policy) (fleet.Policy, bool, error) {
	if s.at == revokeAtBaseline {
		s.revoke(ctx, deviceID)
	}
	return s.Store.Baseline(ctx, deviceID, p)
}
