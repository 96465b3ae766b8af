package store_test

// Review 66: links planted at the state directory's other names, as a
// restored archive of the state (tar keeps links) puts them there.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/provd/provd/store"
)

// Held: a link at the lock files (.lock, .hold.lock, .serve.lock) is not
// followed: each is opened O_NOFOLLOW, so root neither creates nor locks
// the file the link names (a link to a missing path would otherwise make
// it, root's, mode 0600); and a link restored at blobs, to a directory
// holding a copy of the state's blobs, is refused as corrupt (ErrCorrupt) before
// a blob is read through it.
func TestReview66LinksAtTheStatesOtherNames(t *testing.T) {
	for _, name := range []string{store.LockFile, store.HoldFile, store.ServeLockFile} {
		t.Run(name, func(t *testing.T) {
			base := t.TempDir()
			dir := filepath.Join(base, "state")
			target := filepath.Join(base, "elsewhere")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
			var err error
			switch name {
			case store.ServeLockFile:
				var rel func()
				if rel, err = store.HoldServeLock(dir); err == nil {
					rel()
				}
			case store.HoldFile:
				st, oerr := store.Open(dir)
				if oerr != nil {
					t.Fatal(oerr)
				}
				var rel func()
				if rel, err = st.Hold(context.Background()); err == nil {
					rel()
				}
			default:
				var st *store.Store
				if st, err = store.Open(dir); err == nil {
					err = st.View(context.Background(), func(*store.Tx) error { return nil })
				}
			}
			if err == nil {
				t.Errorf("a link at %s was taken as the lock", name)
			}
			if _, serr := os.Lstat(target); serr == nil {
				t.Errorf("a link at %s: root made %s where it led", name, target)
			}
		})
	}
	t.Run("blobs", func(t *testing.T) {
		base := t.TempDir()
		dir := filepath.Join(base, "state")
		st, err := store.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Update(context.Background(), func(tx *store.Tx) error { return tx.WriteBlob("k", []byte("wrapped")) }); err != nil {
			t.Fatal(err)
		}
		copyDir := filepath.Join(base, "copy")
		if err := os.Rename(filepath.Join(dir, store.BlobDir), copyDir); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(copyDir, filepath.Join(dir, store.BlobDir)); err != nil {
			t.Fatal(err)
		}
		st2, err := store.Open(dir)
		if err == nil {
			err = st2.View(context.Background(), func(tx *store.Tx) error {
				_, err := tx.ReadBlob("k")
				return err
			})
		}
		if !errors.Is(err, store.ErrCorrupt) {
			t.Errorf("a state restored with a link at blobs: %v, want ErrCorrupt", err)
		}
	})
}
