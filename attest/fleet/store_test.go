package fleet_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleet/fleettest"
	"github.com/provd/provd/test/pgtest"
)

func TestStoreSQLite(t *testing.T) {
	fleettest.Run(t, func(t *testing.T) string {
		return "sqlite://" + filepath.Join(t.TempDir(), "fleet.db")
	})
}

// TestStorePostgres runs the suite on a real PostgreSQL that the test
// starts (test/pgtest), a fresh database per subtest.
func TestStorePostgres(t *testing.T) {
	srv := pgtest.Start(t)
	admin, err := sql.Open("pgx", srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	var n atomic.Int32
	fleettest.Run(t, func(t *testing.T) string {
		name := fmt.Sprintf("fleet_%d", n.Add(1))
		if _, err := admin.ExecContext(context.Background(), "CREATE DATABASE "+name); err != nil {
			t.Fatal(err)
		}
		return strings.Replace(srv.URL, "/postgres?", "/"+name+"?", 1)
	})
}

// TestStoreKeepsItsConnections: the appraisal's read from 8 clients at once
// is served by connections kept between uses (before, SQLite's pool kept 2
// and every other read opened the file again, ran its pragmas and compiled
// the read: 120 us of each appraisal's 300).
func TestStoreKeepsItsConnections(t *testing.T) {
	for name, url := range storeURLs(t) {
		t.Run(name, func(t *testing.T) {
			st := openStore(t, url)
			d := enrollSim(t, st, 1)
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range 50 {
						if _, _, err := st.DeviceWithPolicy(context.Background(), d.id); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if s := fleet.DBStats(st); s.MaxIdleClosed != 0 {
				t.Errorf("%d connections closed on release (%d open, %d idle): want every one kept", s.MaxIdleClosed, s.OpenConnections, s.Idle)
			}
		})
	}
}
