package store

import (
	"fmt"
	"path/filepath"
	"testing"
)

// TestCacheNeverServesAnotherCommit (found by review): on a filesystem with
// coarse timestamps a commit reused the inode, size and times of the one
// before, and a cache keyed by the file's identity served the daemon a
// manifest that was no longer the state: its next Update reverted another
// process's commit, and shredded a rotated key's new blob as garbage. The
// cache is keyed by the manifest's bytes: whatever the filesystem, two
// same-size commits by another process between two reads are both seen,
// and a rotated blob survives the daemon's next write.
func TestCacheNeverServesAnotherCommit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	d := mustOpen(t, dir) // the daemon
	c := mustOpen(t, dir) // the CLI (another process: its own cache)
	put := func(s *Store, k, v string) {
		t.Helper()
		must(t, s.Update(bg, func(tx *Tx) error { return tx.Put(k, v) }))
	}
	get := func(s *Store, k string) string {
		t.Helper()
		var v string
		must(t, s.View(bg, func(tx *Tx) error { return tx.Get(k, &v) }))
		return v
	}
	for i := range 20 { // generations of two digits: commits of one size
		put(c, "k", fmt.Sprintf("v%03d", i))
	}
	for i := range 300 {
		put(c, "k", "AAAA")
		if v := get(d, "k"); v != "AAAA" {
			t.Fatalf("round %d: %q", i, v)
		}
		put(c, "k", "BBBB")
		put(c, "k", "CCCC")
		if v := get(d, "k"); v != "CCCC" {
			t.Fatalf("round %d: the daemon read %q after the CLI's two commits", i, v)
		}
		put(d, "other", fmt.Sprintf("%04d", i))
		if v := get(c, "k"); v != "CCCC" {
			t.Fatalf("round %d: the daemon's write reverted the CLI's commit: %q", i, v)
		}
	}

	must(t, c.Update(bg, func(tx *Tx) error { return tx.WriteBlob("key", []byte("old-wrapped-key")) }))
	must(t, d.View(bg, func(tx *Tx) error { _, err := tx.ReadBlob("key"); return err }))
	must(t, c.Update(bg, func(tx *Tx) error { return tx.WriteBlob("key", []byte("new-wrapped-key")) }))
	put(c, "n", "z000")
	put(d, "other", "after")
	var b []byte
	must(t, mustOpen(t, dir).View(bg, func(tx *Tx) error {
		var err error
		b, err = tx.ReadBlob("key")
		return err
	}))
	if string(b) != "new-wrapped-key" {
		t.Fatalf("the rotated key after the daemon's write: %q", b)
	}
}
