package fleet_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

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
