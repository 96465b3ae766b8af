package systemd

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// A socket path under another user's directory is refused before Listen
// makes the directories it lacks: nothing is left behind.
func TestListenRefusedMakesNoDirectory(t *testing.T) {
	other := filepath.Join(t.TempDir(), "other")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(other, 60002, 60002); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(other, "run", "provd", "provd.sock")
	if _, err := Listen(path, 0o660, ""); !errors.Is(err, ErrUnsafeDir) {
		t.Fatalf("Listen %s: %v, want ErrUnsafeDir", path, err)
	}
	if _, err := os.Lstat(filepath.Join(other, "run")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused socket path left %s behind: %v", filepath.Join(other, "run"), err)
	}
	// Under the test's own directory the directories are made.
	ok := filepath.Join(t.TempDir(), "run", "provd", "provd.sock")
	l, err := Listen(ok, 0o660, "")
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
}
