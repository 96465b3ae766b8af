package fleet_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest/fleet"
)

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// A burst of enrollments (PutPending: BEGIN IMMEDIATE, so each waits for
// SQLite's write lock, up to busy_timeout, holding a connection) opens at
// most 64 connections (found by review: one per request in flight, three
// file descriptors each), and every enrollment goes through.
func TestSQLiteConnectionsAreBounded(t *testing.T) {
	st := openStore(t, "sqlite://"+filepath.Join(t.TempDir(), "fleet.db"))
	base := openFDs(t)
	const burst = 300
	var wg sync.WaitGroup
	var mu sync.Mutex
	maxOpen, errs := 0, 0
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				if s := fleet.DBStats(st); s.OpenConnections > 0 {
					mu.Lock()
					maxOpen = max(maxOpen, s.OpenConnections)
					mu.Unlock()
				}
			}
		}
	}()
	for i := range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			secret := sha256.Sum256([]byte("x"))
			err := st.PutPending(context.Background(), fleet.Device{ID: fmt.Sprintf("%064x", 1000+i), Class: "bench", EKPublic: tpm2.Marshal(softEK(t)),
				EKCert: []byte{1}, AKPublic: []byte{1}, SecretHash: secret[:], EnrolledAt: time.Now()})
			if err != nil {
				mu.Lock()
				errs++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(stop)
	time.Sleep(100 * time.Millisecond)
	s := fleet.DBStats(st)
	after := openFDs(t)
	t.Logf("burst of %d enrollments: at most %d connections open at once, %d errors; after: %d open, %d idle; fds %d -> %d", burst, maxOpen, errs, s.OpenConnections, s.Idle, base, after)
	if maxOpen > 64 || errs != 0 {
		t.Errorf("SQLite opened %d connections at once for %d requests, %d failed: want at most 64, none failed", maxOpen, burst, errs)
	}
}

// The connections kept idle (each with the appraisal's read prepared) hold
// no read snapshot, so SQLite's automatic checkpoints still reset the WAL:
// after thousands of writes it stays near the 1000-page threshold (checked
// by review).
func TestKeptConnectionsDoNotPinTheWAL(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, "sqlite://"+filepath.Join(dir, "fleet.db"))
	d := enrollSim(t, st, 1)
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				if _, _, err := st.DeviceWithPolicy(context.Background(), d.id); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("idle connections kept: %d", fleet.DBStats(st).Idle)
	secret := sha256.Sum256([]byte("x"))
	big := make([]byte, 2048)
	for i := range 4000 {
		if err := st.PutPending(context.Background(), fleet.Device{ID: fmt.Sprintf("%064x", 5000+i), Class: "bench", EKPublic: big,
			EKCert: big, AKPublic: []byte{1}, SecretHash: secret[:], EnrolledAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "fleet.db-wal"))
	if err != nil {
		t.Fatal(err)
	}
	db, _ := os.Stat(filepath.Join(dir, "fleet.db"))
	t.Logf("after 4000 writes: WAL %d bytes, database %d bytes", fi.Size(), db.Size())
	if fi.Size() > 16<<20 {
		t.Errorf("the WAL grew to %d bytes: a kept connection pins a snapshot", fi.Size())
	}
}
