package store

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// Version is what the agent keeps parsed state by (issue 14): equal only
// for the same bytes read with nothing else parsed in between. Each case
// tries to make a change look like no change.
func TestVersionChangesWithEveryChange(t *testing.T) {
	ctx := context.Background()
	dir := stateDir(t)
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	put := func(s *Store, v string) {
		t.Helper()
		if err := s.Update(ctx, func(tx *Tx) error { return tx.Put("o", v) }); err != nil {
			t.Fatal(err)
		}
	}
	version := func() Version {
		t.Helper()
		var v Version
		if err := s.View(ctx, func(tx *Tx) error { v = tx.Version(); return nil }); err != nil {
			t.Fatal(err)
		}
		return v
	}
	put(s, "a")
	v1 := version()
	if v1 == (Version{}) || version() != v1 {
		t.Fatal("two reads of one state: not one Version")
	}
	// A commit of this process.
	put(s, "b")
	v2 := version()
	if v2 == v1 {
		t.Fatal("a commit kept the Version")
	}
	// Another process (a Store of its own), same size: "b" -> "c".
	other, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	put(other, "c")
	v3 := version()
	if v3 == v2 {
		t.Fatal("another process's commit kept the Version")
	}
	// Changed and changed back, behind the Store's back, in place, with
	// the same size and modification time: the bytes are those of v3,
	// but something else was parsed in between.
	p := filepath.Join(dir, ManifestFile)
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	put(other, "d")
	v4 := version()
	if err := os.WriteFile(p, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	v5 := version()
	if v4 == v3 || v5 == v4 || v5 == v3 {
		t.Fatalf("changed and changed back: versions %v %v %v, want three", v3, v4, v5)
	}
	var got string
	if err := s.View(ctx, func(tx *Tx) error { return tx.Get("o", &got) }); err != nil || got != "c" {
		t.Fatalf("the state read back: %q %v, want c", got, err)
	}
}
