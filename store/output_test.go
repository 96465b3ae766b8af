package store

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Output never replaces what is not a regular file (found by review: --out
// /dev/null replaced the system's /dev/null with a regular file). The nodes
// are made in the test's own directory, never the system's.
func TestWriteOutput(t *testing.T) {
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	if err := syscall.Mknod(p("null"), syscall.S_IFCHR|0o666, int(mkdev(1, 3))); err != nil {
		t.Fatalf("mknod (the test needs root, as make test runs): %v", err)
	}
	if err := syscall.Mknod(p("full"), syscall.S_IFCHR|0o666, int(mkdev(1, 7))); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(p("fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(p("dir"), 0o700); err != nil {
		t.Fatal(err)
	}
	data := []byte("signature bytes")

	// A character device stays one, and takes the bytes.
	if err := WriteOutput(p("null"), data, 0o644, Durable); err != nil {
		t.Fatalf("/dev/null: %v", err)
	}
	if fi, _ := os.Lstat(p("null")); fi.Mode()&os.ModeCharDevice == 0 {
		t.Fatalf("the null device was replaced: %v", fi.Mode())
	}
	// A write error is reported.
	if err := WriteOutput(p("full"), data, 0o644, Durable); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("/dev/full: %v, want ENOSPC", err)
	}
	// A FIFO's reader gets the bytes and its end of file.
	got := make(chan []byte, 1)
	go func() {
		f, err := os.Open(p("fifo"))
		if err != nil {
			got <- nil
			return
		}
		b, _ := io.ReadAll(f)
		f.Close()
		got <- b
	}()
	if err := WriteOutput(p("fifo"), data, 0o644, Durable); err != nil {
		t.Fatalf("fifo: %v", err)
	}
	select {
	case b := <-got:
		if string(b) != string(data) {
			t.Fatalf("fifo reader got %q", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the FIFO's reader hangs")
	}
	if fi, _ := os.Lstat(p("fifo")); fi.Mode()&os.ModeNamedPipe == 0 {
		t.Fatal("the FIFO was replaced")
	}
	// A unix socket is connected to.
	l, err := net.Listen("unix", p("sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- nil
			return
		}
		b, _ := io.ReadAll(c)
		c.Close()
		got <- b
	}()
	if err := WriteOutput(p("sock"), data, 0o644, Durable); err != nil {
		t.Fatalf("socket: %v", err)
	}
	if b := <-got; string(b) != string(data) {
		t.Fatalf("socket reader got %q", b)
	}
	// A directory is refused, and left alone.
	if err := WriteOutput(p("dir"), data, 0o644, Durable); !errors.Is(err, ErrOutput) {
		t.Fatalf("directory: %v, want ErrOutput", err)
	}
	// A regular file is replaced atomically, with the mode asked for.
	if err := os.WriteFile(p("file"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteOutput(p("file"), data, 0o600, Durable); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p("file")); string(b) != string(data) {
		t.Fatalf("file: %q", b)
	}
	if fi, _ := os.Stat(p("file")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("file mode %v", fi.Mode().Perm())
	}
	// A symlink of the caller's is followed: the file it points to is
	// written, the link stays a link.
	if err := os.Symlink("file", p("link")); err != nil {
		t.Fatal(err)
	}
	if err := WriteOutput(p("link"), []byte("via link"), 0o600, Durable); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(p("link")); fi.Mode()&os.ModeSymlink == 0 {
		t.Fatal("the symlink was replaced")
	}
	if b, _ := os.ReadFile(p("file")); string(b) != "via link" {
		t.Fatalf("through the link: %q", b)
	}
	// ...to a device too.
	if err := os.Symlink("full", p("link-full")); err != nil {
		t.Fatal(err)
	}
	if err := WriteOutput(p("link-full"), data, 0o644, Durable); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("link to /dev/full: %v", err)
	}
	// Another user's symlink is refused.
	if err := os.Symlink("file", p("theirs")); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(p("theirs"), 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := WriteOutput(p("theirs"), data, 0o600, Durable); !errors.Is(err, ErrOutput) {
		t.Fatalf("another user's symlink: %v, want ErrOutput", err)
	}
	if b, _ := os.ReadFile(p("file")); string(b) != "via link" {
		t.Fatalf("the refused write changed the file: %q", b)
	}
}

func mkdev(major, minor uint32) uint64 {
	return uint64(major)<<8 | uint64(minor)
}

// An output file in a directory that does not exist is reported with the
// path the user gave, not the temporary file beside it.
func TestWriteOutputNamesTheUsersPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "out.sig")
	err := WriteOutput(path, []byte("x"), 0o600, Durable)
	if !errors.Is(err, os.ErrNotExist) || err.Error() != "write "+path+": no such file or directory" {
		t.Fatalf("got %v", err)
	}
}

// A durable output is synced, file and directory, before WriteOutput
// returns; a remakeable one is written as atomically and with the same
// rules, and not synced (issue 14: a one-shot sign's two syncs).
func TestOnlyDurableOutputsAreSynced(t *testing.T) {
	syncs := 0
	orig := syncFile
	syncFile = func(f *os.File) error { syncs++; return orig(f) }
	t.Cleanup(func() { syncFile = orig })

	for _, c := range []struct {
		d     Durability
		syncs int // for each file written
	}{{Durable, 2}, {Remakeable, 0}} {
		dir := t.TempDir()
		p := func(n string) string { return filepath.Join(dir, n) }
		syncs = 0
		// A new file, a file replaced, a file through the caller's symlink:
		// each the bytes asked for, with the mode asked for.
		if err := WriteOutput(p("new"), []byte("one"), 0o640, c.d); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p("old"), []byte("old contents"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := WriteOutput(p("old"), []byte("two"), 0o600, c.d); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("old", p("link")); err != nil {
			t.Fatal(err)
		}
		if err := WriteOutput(p("link"), []byte("three"), 0o600, c.d); err != nil {
			t.Fatal(err)
		}
		for name, want := range map[string]string{"new": "one", "old": "three"} {
			b, err := os.ReadFile(p(name))
			if err != nil || string(b) != want {
				t.Fatalf("durability %d: %s = %q, %v; want %q", c.d, name, b, err, want)
			}
		}
		if fi, _ := os.Stat(p("new")); fi.Mode().Perm() != 0o640 {
			t.Fatalf("durability %d: mode %v", c.d, fi.Mode().Perm())
		}
		if fi, _ := os.Lstat(p("link")); fi.Mode()&os.ModeSymlink == 0 {
			t.Fatalf("durability %d: the symlink was replaced", c.d)
		}
		if syncs != 3*c.syncs {
			t.Fatalf("durability %d: %d syncs for 3 files, want %d", c.d, syncs, 3*c.syncs)
		}
		// No temporary file left beside them.
		ents, _ := os.ReadDir(dir)
		if len(ents) != 3 {
			t.Fatalf("durability %d: %d entries in the directory, want 3: %v", c.d, len(ents), ents)
		}
		// The refusals do not depend on it: a directory, another user's
		// symlink; the file behind the symlink unchanged.
		if err := os.Mkdir(p("dir"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := WriteOutput(p("dir"), []byte("x"), 0o600, c.d); !errors.Is(err, ErrOutput) {
			t.Fatalf("durability %d: directory: %v", c.d, err)
		}
		if err := os.Symlink("old", p("theirs")); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p("theirs"), 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if err := WriteOutput(p("theirs"), []byte("x"), 0o600, c.d); !errors.Is(err, ErrOutput) {
			t.Fatalf("durability %d: another user's symlink: %v", c.d, err)
		}
		if b, _ := os.ReadFile(p("old")); string(b) != "three" {
			t.Fatalf("durability %d: a refused write changed the file: %q", c.d, b)
		}
	}
}
