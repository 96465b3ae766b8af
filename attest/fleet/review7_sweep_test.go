package fleet_test

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/provd/provd/attest/fleet"
)

// TestReplaysDoNotStopTheSweep (found by review): the once-a-second sweep
// ran inside the appraisal's transaction, so a replay sent first in each
// second claimed the slot and its rollback undid the sweep. It now runs
// after the commit: expired nonces go whatever replays do.
func TestReplaysDoNotStopTheSweep(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "f.db")
	s, err := fleet.Open(ctx, "sqlite://"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	sec := sha256.Sum256([]byte("s"))
	if err := s.PutPending(ctx, fleet.Device{ID: "d1", Class: "c", EKPublic: []byte("ek"), EKCert: []byte("c"), AKPublic: []byte("ak"), SecretHash: sec[:], EnrolledAt: t0}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Activate(ctx, "d1", sec[:], t0); err != nil {
		t.Fatal(err)
	}
	rec := func(id string, nonce string, at, exp time.Time) error {
		n := fleet.Nonce{Nonce: []byte(nonce), DeviceID: "d1", ExpiresAt: exp}
		return s.RecordAppraisal(ctx, fleet.Appraisal{ID: id, DeviceID: "d1", Nonce: &n, At: at, Pass: true, PCRs: map[string]map[int]string{}})
	}
	// The attacker's replayable evidence: taken once, valid for 2 minutes.
	if err := rec("first", "replayed", t0, t0.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	// 400 seconds of legitimate appraisals (nonces of 1 second), the
	// replay arriving first in every step of 4 seconds. A taken nonce is
	// kept fleet.NonceKeep past its expiry.
	for i := 1; i <= 100; i++ {
		at := t0.Add(time.Duration(i) * 4 * time.Second)
		if err := rec(fmt.Sprint("replay", i), "replayed", at, t0.Add(2*time.Minute)); !errors.Is(err, fleet.ErrNonceUnknown) {
			t.Fatalf("replay: %v", err)
		}
		for j := range 5 {
			if err := rec(fmt.Sprint("ok", i, j), fmt.Sprint("n", i, j), at.Add(time.Duration(j+1)*time.Millisecond), at.Add(time.Second)); err != nil {
				t.Fatal(err)
			}
		}
	}
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var expired int
	if err := db.QueryRow(`SELECT count(*) FROM nonces WHERE expires_at < ?`, t0.Add(399*time.Second-fleet.NonceKeep).UnixMilli()).Scan(&expired); err != nil {
		t.Fatal(err)
	}
	if expired != 0 {
		t.Fatalf("%d nonces expired longer than fleet.NonceKeep ago left after 400 s of appraisals, each step's first a replay", expired)
	}
}
