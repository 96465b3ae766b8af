package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Tx is one transaction, valid only inside the View or Update callback that
// received it. Reads inside an Update see the transaction's own writes.
type Tx struct {
	s     *Store
	write bool
	base  *manifest // the committed state, re-read under the lock
	next  *manifest // base plus this transaction's changes
	dirty bool
	// written lists blob files created by this transaction: the commit keeps
	// the referenced ones, an abort zeroes them all.
	written   map[string]bool
	madeDir   bool
	committed bool
}

// Version names the committed state a transaction read, for callers that
// keep what they derive from it: two transactions of one Store have equal
// Versions only when both read the same manifest bytes and the Store parsed
// no other manifest in between (a state that changed and changed back is a
// new Version). Every transaction reads manifest.json under the lock and
// compares its bytes, so a commit by any process, this one or another, is a
// new Version. The zero Version equals no transaction's.
type Version struct{ m *manifest }

// Version is the committed state this transaction read (see Version).
func (tx *Tx) Version() Version { return Version{tx.base} }

// Generation is the committed generation this transaction started from (0 for
// an empty store). A successful Update that changed something commits
// Generation()+1.
func (tx *Tx) Generation() uint64 { return tx.base.Generation }

// Objects lists object names in order.
func (tx *Tx) Objects() []string { return sortedKeys(tx.next.Objects) }

// GetRaw returns the JSON of object name, or ErrNotFound.
func (tx *Tx) GetRaw(name string) (json.RawMessage, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	raw, ok := tx.next.Objects[name]
	if !ok {
		return nil, fmt.Errorf("%w: object %q", ErrNotFound, name)
	}
	return append(json.RawMessage(nil), raw...), nil
}

// Get decodes object name into v, or returns ErrNotFound.
func (tx *Tx) Get(name string, v any) error {
	raw, err := tx.GetRaw(name)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("store: decode object %q: %w", name, err)
	}
	return nil
}

// Put stores v, encoded as JSON, as object name.
func (tx *Tx) Put(name string, v any) error {
	if !tx.write {
		return ErrReadOnly
	}
	if err := checkName(name); err != nil {
		return err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("store: encode object %q: %w", name, err)
	}
	if old, ok := tx.next.Objects[name]; ok && bytes.Equal(old, b) {
		return nil
	}
	tx.next.Objects[name] = b
	tx.dirty = true
	return nil
}

// Delete removes object name; deleting an absent object is not an error, so
// that retried clean-ups converge.
func (tx *Tx) Delete(name string) error {
	if !tx.write {
		return ErrReadOnly
	}
	if err := checkName(name); err != nil {
		return err
	}
	if _, ok := tx.next.Objects[name]; ok {
		delete(tx.next.Objects, name)
		tx.dirty = true
	}
	return nil
}

// Blobs lists blob names in order.
func (tx *Tx) Blobs() []string { return sortedKeys(tx.next.Blobs) }

// ReadBlob returns the content of blob name, checked against the size and
// SHA-256 recorded in the manifest (ErrCorrupt on mismatch).
func (tx *Tx) ReadBlob(name string) ([]byte, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	ref, ok := tx.next.Blobs[name]
	if !ok {
		return nil, fmt.Errorf("%w: blob %q", ErrNotFound, name)
	}
	b, err := readBlobFile(filepath.Join(tx.s.dir, BlobDir, ref.File), ref.Size)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: blob %q: file %s missing", ErrCorrupt, name, ref.File)
	}
	if err != nil {
		return nil, fmt.Errorf("store: read blob %q: %w", name, err)
	}
	if sum(b) != ref.SHA256 {
		clear(b)
		return nil, fmt.Errorf("%w: blob %q: content does not match manifest", ErrCorrupt, name)
	}
	return b, nil
}

// readBlobFile reads a blob's file of the size the manifest records, and
// nothing else: a file of another size is refused before it is read
// (ErrCorrupt; review 62: a 64 MiB file recorded as 11 bytes was read
// whole).
func readBlobFile(path string, size int64) ([]byte, error) {
	f, got, err := openRegular(path, size)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if got != size {
		return nil, fmt.Errorf("%w: %s is %d bytes, the manifest says %d", ErrCorrupt, filepath.Base(path), got, size)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(f, b); err != nil {
		clear(b)
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, filepath.Base(path), err)
	}
	return b, nil
}

// WriteBlob stores data as blob name. The data reaches disk now, under a
// name of the generation being committed; it becomes the blob's content only
// when the Update commits.
func (tx *Tx) WriteBlob(name string, data []byte) error {
	if !tx.write {
		return ErrReadOnly
	}
	if err := checkName(name); err != nil {
		return err
	}
	if len(data) > maxBlob {
		return fmt.Errorf("store: blob %q: %d bytes, over %d", name, len(data), maxBlob)
	}
	dir := filepath.Join(tx.s.dir, BlobDir)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.Mkdir(dir, 0o700); err != nil {
			return fmt.Errorf("store: create blobs directory: %w", err)
		}
		tx.madeDir = true
	}
	file := blobFileName(name, tx.next.Generation)
	if tx.written == nil {
		tx.written = map[string]bool{}
	}
	tx.written[file] = true
	if err := writeFileAtomic(dir, file, data); err != nil {
		return fmt.Errorf("store: write blob %q: %w", name, err)
	}
	tx.next.Blobs[name] = blobRef{File: file, Size: int64(len(data)), SHA256: sum(data)}
	tx.dirty = true
	tx.s.step("blob-written")
	return nil
}

// RemoveBlob removes blob name. Its file is zeroed and unlinked after the
// Update commits; until then the committed state still needs it.
func (tx *Tx) RemoveBlob(name string) error {
	if !tx.write {
		return ErrReadOnly
	}
	if err := checkName(name); err != nil {
		return err
	}
	if _, ok := tx.next.Blobs[name]; ok {
		delete(tx.next.Blobs, name)
		tx.dirty = true
	}
	return nil
}

func (s *Store) step(name string) {
	if s.opts.hook != nil {
		s.opts.hook(name)
	}
}

// commit makes next the committed state; see the package comment for the
// order of writes and why it is crash-safe.
func (tx *Tx) commit() error {
	s := tx.s
	if tx.madeDir {
		if err := syncDir(s.dir); err != nil {
			return err
		}
	}
	if len(tx.written) > 0 {
		if err := syncDir(filepath.Join(s.dir, BlobDir)); err != nil {
			return err
		}
		s.step("blobs-synced")
	}
	b, err := tx.next.marshal()
	if err != nil {
		return fmt.Errorf("store: encode manifest: %w", err)
	}
	if len(b) > maxManifest {
		return fmt.Errorf("store: the manifest would be %d bytes, over %d: not committed", len(b), maxManifest)
	}
	if err := writeFileAtomic(s.dir, ManifestFile, b); err != nil {
		return fmt.Errorf("store: write manifest: %w", err)
	}
	// From here the new manifest may be the state; never discard its files.
	tx.committed = true
	s.step("manifest-renamed")
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("store: commit of generation %d may not be durable: %w", tx.next.Generation, err)
	}
	s.step("committed")

	// Old files no longer referenced, and files written then dropped within
	// this transaction. A failure here leaves garbage that the next
	// transaction collects, so it does not fail a commit that happened.
	live := map[string]bool{}
	for _, r := range tx.next.Blobs {
		live[r.File] = true
	}
	var dead []string
	for _, r := range tx.base.Blobs {
		if !live[r.File] {
			dead = append(dead, r.File)
		}
	}
	for f := range tx.written {
		if !live[f] {
			dead = append(dead, f)
		}
	}
	for _, f := range dead {
		if err := shred(filepath.Join(s.dir, BlobDir, f)); err == nil {
			s.step("old-removed")
		}
	}
	return nil
}

// discard zeroes the files an aborted transaction wrote.
func (tx *Tx) discard() {
	if tx.committed {
		return
	}
	for f := range tx.written {
		shred(filepath.Join(tx.s.dir, BlobDir, f))
	}
}
