package safefile

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// A state file is read or opened only as a regular file of its bound: a
// FIFO neither blocks nor is read, a link is not followed, a sparse file
// over the bound is not read.
func TestOnlyRegularFilesOfTheirBound(t *testing.T) {
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	if err := os.WriteFile(p("ok"), []byte("provd"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := ReadFile(p("ok"), 5); err != nil || string(b) != "provd" {
		t.Fatalf("a regular file: %q, %v", b, err)
	}
	if err := syscall.Mkfifo(p("fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(p("ok"), p("link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(p("dir"), 0o700); err != nil {
		t.Fatal(err)
	}
	big, err := os.Create(p("big"))
	if err != nil {
		t.Fatal(err)
	}
	if err := big.Truncate(1 << 30); err != nil { // sparse
		t.Fatal(err)
	}
	big.Close()
	for _, n := range []string{"fifo", "link", "dir", "big"} {
		if _, err := ReadFile(p(n), 1<<20); !errors.Is(err, ErrUnsafe) {
			t.Errorf("ReadFile(%s): %v, want ErrUnsafe", n, err)
		}
	}
	for _, n := range []string{"fifo", "link", "dir"} {
		if f, _, err := Open(p(n), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600, NoLimit); !errors.Is(err, ErrUnsafe) && !errors.Is(err, syscall.EISDIR) {
			if f != nil {
				f.Close()
			}
			t.Errorf("Open(%s) to append: %v, want ErrUnsafe", n, err)
		}
	}
	if _, err := ReadFile(p("missing"), 1); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing file: %v, want ErrNotExist", err)
	}
}
