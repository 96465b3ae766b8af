package agent

// The twenty-fifth review, item 4 (audit.beginAnew gives the new log the
// old log's owner, or refuses).
//
// HELD: TestReview25RootCannotMoveAServiceUsersTrail.

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
)

// HELD: TestReview25RootCannotMoveAServiceUsersTrail. Probed: writeArchive
// and writeGateRecord (store.WriteFile) make new files, root's when root
// writes them, mode 0600, and do not chown as beginAnew does: an
// officer's reanchor run as root in a state directory of a service user,
// killed once it began the log anew, would leave an archive and audit.gate
// the service user cannot read, and its move made again (archived(): EACCES)
// a dead end for the daemon. Not reachable: provd running as root (or any
// other uid) refuses a state directory it does not own (store.Open,
// checkPrivate) before it reads or writes any file there, so one state
// directory's files are written by one uid; beginAnew's chown only
// matters where the log alone was given to another owner.
func TestReview25RootCannotMoveAServiceUsersTrail(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the test needs root, as make test runs")
	}
	env := swtpmtest.Start(t)
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{TPM: env.TPM, StateDir: dir})
	if err == nil {
		a.Close()
		t.Fatalf("root opened a state directory owned by uid 65534")
	}
	if !errors.Is(err, store.ErrInsecureDir) {
		t.Errorf("root's agent in uid 65534's state directory: %v, want store.ErrInsecureDir", err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		t.Errorf("root's refused agent left %s in the service user's state directory", e.Name())
	}
}
