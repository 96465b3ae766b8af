// Package store keeps provd's device state: a directory holding a versioned
// manifest (manifest.json) and opaque blob files (blobs/), written so that a
// crash at any moment leaves either the old state or the new one.
//
// The store is deliberately generic: it knows nothing of keys, policies or TPM
// handles. The agent stores its typed records as JSON objects in the manifest and
// its binary artefacts (TPM-wrapped private areas, public areas, context blobs)
// as blobs. Secrets in plaintext do not belong here; blobs are TPM-wrapped, and
// Remove/Wipe overwrite them with zeros anyway because a wrapped key can still be
// loaded by whoever later satisfies its policy.
//
// Every read and write happens inside View or Update, under an exclusive
// advisory lock (flock on <dir>/.lock) held for the duration of the callback, so
// the daemon and a concurrent CLI invocation cannot interleave writes, and a
// reader never sees a blob that a writer is about to delete. The manifest is
// re-read under the lock on every transaction, so no process acts on a stale
// in-memory copy.
//
// Commit protocol (the manifest rename is the single commit point):
//
//  1. new or changed blobs are written to fresh files blobs/<name>~<gen>, where
//     gen is the generation being committed, each via temp file, fsync, rename;
//  2. the blobs directory is fsynced, so the new names are durable;
//  3. manifest.json is written via temp file, fsync, rename, fsync of the state
//     directory: from here on the new generation is the state;
//  4. blob files the new manifest no longer references are zeroed and unlinked.
//
// A crash before step 3 completes leaves the old manifest, which references only
// old files that were never touched; a crash after it leaves the new manifest,
// whose files were made durable in step 2. Files left behind by a crash (temp
// files, unreferenced generations) are zeroed and removed by the next Open,
// View or Update once the manifest has been read successfully.
//
// Wipe renames manifest.json to a temp name before it zeroes anything, so an
// interrupted Wipe leaves the old state or an empty one, never a manifest
// that does not parse.
package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/provd/provd/internal/safefile"
	"github.com/provd/provd/internal/trustedpath"
)

// File and directory names inside the state directory.
const (
	ManifestFile = "manifest.json"
	BlobDir      = "blobs"
	LockFile     = ".lock"
	// AuditLogFile is the audit trail's name (audit.FileName); the store only
	// needs it so that Wipe can remove it when asked. A test keeps them equal.
	AuditLogFile = "audit.log"

	tmpPrefix = ".tmp-"
)

// SchemaVersion is the manifest schema this build reads and writes. A manifest
// with a higher number was written by a newer provd; this build refuses it
// rather than rewrite it and lose what it does not understand.
const SchemaVersion = 1

// DefaultLockTimeout bounds how long Open, View and Update wait for the state
// lock. provd commands are short; waiting longer would only hide a stuck process.
const DefaultLockTimeout = 5 * time.Second

// Sentinel errors; test with errors.Is.
var (
	// ErrLocked means the state lock could not be taken within the lock timeout.
	ErrLocked = errors.New("store: another provd process holds the state lock")
	// ErrUnknownSchema means manifest.json has a schema version this build does
	// not know (normally: written by a newer provd). Nothing is modified.
	ErrUnknownSchema = errors.New("store: manifest schema version not supported by this provd")
	// ErrCorrupt means manifest.json or a blob is unreadable or fails its
	// integrity checks. Nothing is modified; the operator must restore or wipe.
	ErrCorrupt = errors.New("store: state is corrupt")
	// ErrInsecureDir means the state directory is not private to this user.
	ErrInsecureDir = errors.New("store: state directory is not private")
	// ErrInvalidName means an object or blob name failed validation.
	ErrInvalidName = errors.New("store: invalid name")
	// ErrNotFound means the named object or blob does not exist.
	ErrNotFound = errors.New("store: not found")
	// ErrReadOnly means a write was attempted inside View.
	ErrReadOnly = errors.New("store: write in a read-only transaction")
)

// Options tune a Store. The zero value is the production configuration.
type Options struct {
	// LockTimeout bounds the wait for the state lock; 0 means DefaultLockTimeout.
	LockTimeout time.Duration

	// hook, when set (tests only), is called at each durability step of a
	// commit or a Wipe so a test can stop the process exactly there.
	hook func(step string)
}

// Store is an open state directory. It holds no file descriptors between
// transactions, so it needs no Close; it is safe for concurrent use.
type Store struct {
	dir  string
	opts Options
	// sem serialises transactions of this process before they compete for the
	// flock, so goroutines queue instead of polling.
	sem chan struct{}
	// cached is the last manifest read and parsed, and the bytes it was
	// parsed from (read under the flock, so only one run at a time touches
	// them): a transaction that reads the same bytes again does not parse
	// them again, and a read-only one does not copy the result (issue 14:
	// the daemon spent most of its CPU parsing manifest.json on every
	// request, and more with more keys). The bytes, not the file's
	// identity, decide: on a filesystem with coarse timestamps a commit
	// reused the inode, size and times of the one before (found by review:
	// a daemon then acted on a stale manifest, and shredded a new blob as
	// garbage).
	cached    *manifest
	cachedRaw []byte
	// scratch is the buffer the next read of manifest.json goes into: a
	// read that finds the bytes parsed last leaves it for the next one.
	scratch []byte
}

// Open opens (creating with mode 0700 if absent) the state directory dir,
// checks that it is private to the current user and that only root and
// this user can change the directories and links on the way to it
// (internal/trustedpath), takes the lock once to check the manifest, and
// removes leftovers of an interrupted commit.
func Open(dir string) (*Store, error) { return OpenOptions(dir, Options{}) }

// OpenOptions is Open with options.
func OpenOptions(dir string, opts Options) (*Store, error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = DefaultLockTimeout
	}
	dir, err := makeStateDir(dir)
	if err != nil {
		return nil, err
	}
	s := &Store{dir: dir, opts: opts, sem: make(chan struct{}, 1)}
	// A View runs the same checks and garbage collection as every transaction.
	if err := s.View(context.Background(), func(*Tx) error { return nil }); err != nil {
		return nil, err
	}
	return s, nil
}

// Dir returns the state directory.
func (s *Store) Dir() string { return s.dir }

// MakeStateDir is makeStateDir, for the files of the state directory the
// store does not keep (the firmware hook's, the fleet endpoint's): the
// directory made and checked as Open makes it, resolved.
func MakeStateDir(dir string) (string, error) { return makeStateDir(dir) }

// makeStateDir makes the state directory dir (0700) if it is missing, and
// refuses it unless every directory and link on the way is root's or
// ours (found by review 62: the owner of the state directory's parent
// renamed it away after Open and put a directory of theirs, with their
// manifest, in its place, which every later transaction read) and dir is
// private (checkPrivate).
//
// It returns dir resolved, every link and ".." as the kernel reads them,
// which the store then uses (review 64: the text given, "x/../state",
// went to the kernel again at each commit, through a link x another user
// could repoint after the check).
func makeStateDir(dir string) (string, error) {
	resolved, err := trustedpath.Mkdir(dir, 0o700)
	if err != nil {
		if errors.Is(err, trustedpath.ErrUntrusted) {
			return "", fmt.Errorf("%w: %w", ErrInsecureDir, err)
		}
		return "", fmt.Errorf("store: create state directory: %w", err)
	}
	return resolved, checkPrivate(resolved)
}

// checkPrivate refuses a directory another user could read or plant files in:
// the store holds wrapped keys and the files that decide what provd loads.
func checkPrivate(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: %s is not a directory", ErrInsecureDir, dir)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %#o; want no group/other access (chmod 700)", ErrInsecureDir, dir, perm)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%w: cannot read owner of %s", ErrInsecureDir, dir)
	}
	if uid := os.Getuid(); int(st.Uid) != uid {
		return fmt.Errorf("%w: %s is owned by uid %d, provd runs as uid %d", ErrInsecureDir, dir, st.Uid, uid)
	}
	return nil
}

// ServeLockFile is the lock a server of this state holds for as long as it
// serves: provd serve (the daemon) and provd fleet serve --authority-key
// take it, so the two never serve one state at once (found by review: a
// daemon beside the fleet endpoint signed with its authority key for every
// member of the provd group).
const ServeLockFile = ".serve.lock"

// HoldServeLock takes the exclusive serve lock of dir without waiting,
// making dir (0700) if needed: ErrLocked when another process serves this
// state. The returned function releases it.
func HoldServeLock(dir string) (func(), error) {
	// The state directory's path is checked as Open checks it (found by
	// review 63: root followed another user's link and made the directory
	// and the lock where it led, before Open refused the path).
	resolved, err := makeStateDir(dir)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(resolved, ServeLockFile), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: open serve lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if err == syscall.EWOULDBLOCK {
			return nil, fmt.Errorf("%w: another process serves %s (provd serve, or provd fleet serve --authority-key)", ErrLocked, dir)
		}
		return nil, fmt.Errorf("store: flock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}

// lock takes the in-process semaphore and then the exclusive flock, polling
// with LOCK_NB until the deadline so a stuck peer produces ErrLocked rather
// than a hang. The returned function releases both.
func (s *Store) lock(ctx context.Context) (unlock func(), err error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.LockTimeout)
	defer cancel()
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("%w (busy in this process for %s)", ErrLocked, s.opts.LockTimeout)
		}
		return nil, ctx.Err()
	}
	release := func() { <-s.sem }
	unflock, err := s.flock(ctx, LockFile)
	if err != nil {
		release()
		return nil, err
	}
	return func() {
		unflock()
		release()
	}, nil
}

// HoldFile is the lock file of Hold: a sequence of steps, each its own
// transaction, that must not interleave with another process's.
const HoldFile = ".hold.lock"

// Hold takes the exclusive lock HoldFile of the state directory, waiting as
// Update does (ErrLocked after the lock timeout), for a sequence of steps
// that must not interleave with another process's same sequence while each
// step takes the store's own lock: a signed policy's install (the counter's
// read, the policy's write, the counter's move to its version: two
// processes interleaving them moved the counter past the policy both
// installed, found by review 46). Take it before, never inside, Update or
// View; the returned function releases it.
func (s *Store) Hold(ctx context.Context) (unlock func(), err error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.LockTimeout)
	defer cancel()
	unlock, err = s.flock(ctx, HoldFile)
	if errors.Is(err, ErrLocked) {
		// Not the store's lock: say which, and what holds it (review 48).
		return nil, fmt.Errorf("%w (%s: another process's signed policy install)", err, HoldFile)
	}
	return unlock, err
}

// flock takes the exclusive flock of the state directory's file name,
// polling with LOCK_NB until ctx ends. Closing the descriptor (the returned
// function) releases it.
func (s *Store) flock(ctx context.Context, name string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(s.dir, name), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: open lock file: %w", err)
	}
	delay := time.Millisecond
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if err != syscall.EWOULDBLOCK && err != syscall.EINTR {
			f.Close()
			return nil, fmt.Errorf("store: flock %s: %w", f.Name(), err)
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			f.Close()
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, fmt.Errorf("%w: %s (waited %s)", ErrLocked, s.dir, s.opts.LockTimeout)
			}
			return nil, ctx.Err()
		}
		// Short polls: flock has no queue, so a long sleep here would let
		// a busier peer win the lock over and over.
		if delay < 8*time.Millisecond {
			delay *= 2
		}
	}
	return func() { f.Close() }, nil
}

// View runs fn with a read-only snapshot of the committed state, under the lock.
func (s *Store) View(ctx context.Context, fn func(*Tx) error) error {
	return s.run(ctx, false, fn)
}

// Update runs fn under the lock with the freshly re-read committed state. If fn
// returns nil and changed anything, the changes are committed as generation+1;
// if fn returns an error, nothing is committed and the files fn wrote are
// removed. Callers must not retain the Tx after fn returns.
func (s *Store) Update(ctx context.Context, fn func(*Tx) error) error {
	return s.run(ctx, true, fn)
}

func (s *Store) run(ctx context.Context, write bool, fn func(*Tx) error) (err error) {
	unlock, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()

	m, changed, err := s.readManifest()
	if err != nil {
		return err
	}
	// Only once the manifest parsed may unreferenced files be removed: with an
	// unreadable or newer manifest we cannot tell what is garbage. Before a
	// write, or when the manifest changed: garbage (an interrupted commit's)
	// is harmless to a reader.
	if write || changed {
		if err := s.collectGarbage(m); err != nil {
			return err
		}
	}
	next := m // a read-only Tx never changes it
	if write {
		next = m.clone()
		next.Generation = m.Generation + 1
	}
	tx := &Tx{s: s, write: write, base: m, next: next}
	defer func() {
		if err != nil {
			tx.discard()
		}
	}()
	if err := fn(tx); err != nil {
		return err
	}
	if !write || !tx.dirty {
		return nil
	}
	return tx.commit()
}

// readManifest reads manifest.json, and parses it unless its bytes are
// those parsed last (changed says whether they differ); a missing file is
// the empty generation 0. The caller holds the flock and must not change
// what it returns.
func (s *Store) readManifest() (m *manifest, changed bool, err error) {
	b, err := s.readFile(filepath.Join(s.dir, ManifestFile))
	if errors.Is(err, fs.ErrNotExist) {
		s.cached, s.cachedRaw = nil, nil
		return newManifest(), true, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("store: read manifest: %w", err)
	}
	if s.cached != nil && bytes.Equal(b, s.cachedRaw) {
		s.scratch = b[:0] // not kept: the next read may use it
		return s.cached, false, nil
	}
	// b is kept (cachedRaw) or dropped: never read into again.
	s.scratch = nil
	if m, err = parseManifest(b); err != nil {
		s.cached, s.cachedRaw = nil, nil
		return nil, false, err
	}
	s.cached, s.cachedRaw = m, b
	return m, true, nil
}

// readFile reads the file at path into s.scratch (grown as needed) in as
// few reads as it takes: os.ReadFile asks the file's size, then reads
// until a read returns nothing; a regular file's read that returns less
// than asked for has reached its end (issue 14: every transaction reads
// the manifest, the daemon's on every request). The caller holds the
// flock; the result is s.scratch's until the next call.
func (s *Store) readFile(path string) ([]byte, error) {
	f, _, err := openRegular(path, maxManifest)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := s.scratch[:0]
	if cap(b) < 4096 {
		// Room for the bytes parsed last and some: one read still.
		b = make([]byte, 0, max(4096, len(s.cachedRaw)+1024))
	}
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)] // grow
		}
		n, err := f.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if len(b) > maxManifest { // grown since it was opened
			return nil, fmt.Errorf("%w: %s is over %d bytes", ErrCorrupt, filepath.Base(path), maxManifest)
		}
		if err == io.EOF || (err == nil && len(b) < cap(b) && n > 0) {
			return b, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// maxManifest bounds manifest.json: a manifest of a thousand keys is
// about a megabyte. A commit of a larger one is refused (found by review
// 63: committed, it made every later read refuse the state).
const maxManifest = 16 << 20

// maxBlob bounds a blob: provd's are TPM blobs and signed policies of a
// few kilobytes. A manifest that records a larger one is refused, as is a
// write of one (review 63: a size edited into the manifest, with a sparse
// file, had every read allocate it).
const maxBlob = 1 << 20

// openRegular opens the state's file at path for reading, refusing
// (ErrCorrupt) what is not a regular file of at most limit bytes: a FIFO
// planted there would block the open, under the state's lock, for good,
// and a huge file would be read whole before any check (found by review
// 62). It returns the file's size.
func openRegular(path string, limit int64) (*os.File, int64, error) {
	f, size, err := safefile.Open(path, os.O_RDONLY, 0, limit)
	if errors.Is(err, safefile.ErrUnsafe) {
		return nil, 0, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return f, size, err
}

// collectGarbage zeroes and removes files an interrupted commit left behind:
// temp files, and blob files m does not reference. Only names this package
// creates are touched.
func (s *Store) collectGarbage(m *manifest) error {
	live := make(map[string]bool, len(m.Blobs))
	for _, b := range m.Blobs {
		live[b.File] = true
	}
	if err := checkBlobDir(s.dir); err != nil {
		return err
	}
	ents, err := os.ReadDir(filepath.Join(s.dir, BlobDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("store: list blobs: %w", err)
	}
	for _, e := range ents {
		n := e.Name()
		if live[n] || !(strings.HasPrefix(n, tmpPrefix) || isBlobFile(n)) || !e.Type().IsRegular() {
			continue
		}
		if err := shred(filepath.Join(s.dir, BlobDir, n)); err != nil {
			return err
		}
	}
	ents, err = os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("store: list state directory: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tmpPrefix) && e.Type().IsRegular() {
			if err := shred(filepath.Join(s.dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkBlobDir refuses a blobs directory that is not one (ErrCorrupt): a
// link planted there would take every blob's read, write and zeroing
// elsewhere (found by review 65: Wipe zeroed and removed the files of the
// directory a link there led to).
func checkBlobDir(dir string) error {
	fi, err := os.Lstat(filepath.Join(dir, BlobDir))
	if err == nil && !fi.IsDir() {
		return fmt.Errorf("%w: %s is not a directory (%v)", ErrCorrupt, BlobDir, fi.Mode().Type())
	}
	return nil
}

// WipeOptions select what Wipe removes beyond the store's own files.
type WipeOptions struct {
	// Audit also removes the audit trail. Zeroization normally keeps it, so
	// that the zeroization itself remains on record.
	Audit bool
}

// Wipe zeroes and removes everything the store wrote: every blob, the blobs
// directory, the manifest and leftover temp files, and the audit log if asked.
// The directory itself and the (empty) lock file remain: removing a lock file
// while others may be waiting on it would let two processes hold "the" lock.
// Wipe does not require a readable manifest, so it also clears corrupt state.
func (s *Store) Wipe(ctx context.Context, opts WipeOptions) error {
	unlock, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	s.cached, s.cachedRaw = nil, nil

	// The manifest goes first: a crash after it leaves an empty, valid store
	// (the next Open collects the blob files no manifest names), whereas a
	// manifest naming blobs already shredded would be corrupt (exit 8). It is
	// renamed away before it is zeroed, so that no crash can leave a zeroed
	// manifest.json behind (ErrCorrupt as well).
	// Each step's failure is reported, and the next steps still run: a
	// state that zeroization finds damaged is when it matters most that
	// every blob is zeroed (review 64).
	var errs []error
	fail := func(err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("store: wipe: %w", err))
		}
	}
	fail(s.removeThenShred(ManifestFile))
	bdir := filepath.Join(s.dir, BlobDir)
	var ents []fs.DirEntry
	if err := checkBlobDir(s.dir); err != nil {
		// Planted: removed, never followed (review 65).
		fail(os.RemoveAll(bdir))
	} else if ents, err = os.ReadDir(bdir); !errors.Is(err, fs.ErrNotExist) {
		fail(err)
	}
	for _, e := range ents {
		p := filepath.Join(bdir, e.Name())
		if e.Type().IsRegular() {
			fail(shred(p))
		} else {
			fail(os.RemoveAll(p))
		}
		s.step("wipe-blob-removed")
	}
	if err := os.Remove(bdir); !errors.Is(err, fs.ErrNotExist) {
		fail(err)
	}
	ents, err = os.ReadDir(s.dir)
	fail(err)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tmpPrefix) && e.Type().IsRegular() {
			fail(shred(filepath.Join(s.dir, e.Name())))
		}
	}
	if opts.Audit {
		// Renamed away first too: a zeroed audit.log would read as a
		// tampered trail.
		fail(s.removeThenShred(AuditLogFile))
	}
	fail(syncDir(s.dir))
	return errors.Join(errs...)
}

// removeThenShred takes the file name out of the state directory by renaming
// it to a fresh temp name, makes the rename durable, and only then zeroes and
// unlinks the temp file. A crash at any point leaves name either intact or
// absent, never zeroed or torn; a temp file left behind is collected by the
// next transaction (collectGarbage). A missing name is not an error.
func (s *Store) removeThenShred(name string) error {
	p := filepath.Join(s.dir, name)
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err == nil && !fi.Mode().IsRegular() {
		// Planted (a directory, a FIFO, a link): nothing of provd's to
		// zero, and no rename onto the temp file (review 64: a directory
		// there stopped Wipe before the blobs).
		return os.RemoveAll(p)
	}
	// CreateTemp reserves a name no other file has (O_EXCL); the rename then
	// replaces that empty file atomically.
	f, err := os.CreateTemp(s.dir, tmpPrefix+"*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	if err := f.Close(); err != nil {
		return err
	}
	s.step("wipe-temp-created")
	if err := os.Rename(p, tmp); err != nil {
		os.Remove(tmp)
		return err
	}
	s.step("wipe-renamed")
	if err := syncDir(s.dir); err != nil {
		return err
	}
	s.step("wipe-renamed-synced")
	if err := shred(tmp); err != nil {
		return err
	}
	s.step("wipe-shredded")
	return nil
}

// shred overwrites a regular file with zeros, fsyncs it and unlinks it. On
// flash and copy-on-write filesystems the old blocks may survive; this is a
// best effort on top of the fact that blobs are TPM-wrapped.
func shred(path string) error {
	// Only a regular file is zeroed, opened as every state file is
	// (safefile: a FIFO planted at the path would block the open, under
	// the state's lock, for good: review 63); anything else is removed.
	f, size, err := safefile.Open(path, os.O_WRONLY, 0, safefile.NoLimit)
	if errors.Is(err, safefile.ErrUnsafe) {
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("store: shred: %w", err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: shred: %w", err)
	}
	err = writeZeros(f, size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("store: shred %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("store: shred: %w", err)
	}
	return nil
}

func writeZeros(w io.WriterAt, n int64) error {
	zero := make([]byte, 32*1024)
	for off := int64(0); off < n; {
		chunk := zero
		if rem := n - off; rem < int64(len(chunk)) {
			chunk = chunk[:rem]
		}
		k, err := w.WriteAt(chunk, off)
		if err != nil {
			return err
		}
		off += int64(k)
	}
	return nil
}

// writeFileAtomic writes data to dir/name through a temp file in dir, fsyncs
// it and renames it into place. It does not fsync dir; callers batch that.
func writeFileAtomic(dir, name string, data []byte) error {
	return writeFileMode(dir, name, data, 0o600, true)
}

// WriteFile writes data to path atomically and durably: a temp file created
// in path's directory (O_EXCL, so no symlink or stale file is followed), mode
// set before any byte is written, fsync, rename, fsync of the directory. A
// crash leaves the old file or the new. The CLI's output files are written
// as it writes (WriteOutput), without its syncs for a Remakeable one.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	return writeFile(path, data, mode, Durable)
}

func writeFile(path string, data []byte, mode os.FileMode, d Durability) error {
	dir, name := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	if err := writeFileMode(dir, name, data, mode, d == Durable); err != nil {
		return err
	}
	if d != Durable {
		return nil
	}
	return syncDir(dir)
}

// writeFileMode writes dir/name through a temp file with mode, synced
// before its rename when sync is set.
func writeFileMode(dir, name string, data []byte, mode os.FileMode, sync bool) error {
	// Errors name the file being written, not the temporary file beside it
	// (found by review: "write .../.tmp-23830812: no space left on device").
	if err := writeFileTemp(dir, name, data, mode, sync); err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return fmt.Errorf("write %s: %w", filepath.Join(dir, name), pe.Err)
		}
		return err
	}
	return nil
}

func writeFileTemp(dir, name string, data []byte, mode os.FileMode, sync bool) error {
	f, err := os.CreateTemp(dir, tmpPrefix+"*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// CreateTemp uses 0600 already; say so explicitly since it matters.
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if sync {
		if err := syncFile(f); err != nil {
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	ok = true
	return nil
}

// SyncDir makes renames and unlinks in dir durable, for callers that order
// several (zeroize: the audit gate, then the log).
func SyncDir(dir string) error { return syncDir(dir) }

// syncFile is f.Sync; a test counts the syncs through it.
var syncFile = (*os.File).Sync

// syncDir makes renames and unlinks in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("store: fsync dir: %w", err)
	}
	err = syncFile(d)
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("store: fsync dir %s: %w", dir, err)
	}
	return nil
}

// ValidName reports whether name is acceptable as an object or blob name:
// 1 to 128 characters from [A-Za-z0-9._-], not starting with '.' or '-'. The
// rule is strict because blob names become file names: no separators, no
// "..", no hidden files, nothing a shell or a later format could misread.
func ValidName(name string) bool {
	if len(name) == 0 || len(name) > 128 || name[0] == '.' || name[0] == '-' {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

func checkName(name string) error {
	if !ValidName(name) {
		return fmt.Errorf("%w: %q (want 1-128 of [A-Za-z0-9._-], not starting with '.' or '-')", ErrInvalidName, name)
	}
	return nil
}

// blobFileName is the on-disk name of generation gen of blob name. The '~'
// cannot occur in a valid name, so the split is unambiguous.
func blobFileName(name string, gen uint64) string {
	return name + "~" + strconv.FormatUint(gen, 10)
}

// splitBlobFile is the inverse of blobFileName.
func splitBlobFile(file string) (name string, gen uint64, ok bool) {
	i := strings.LastIndexByte(file, '~')
	if i < 0 {
		return "", 0, false
	}
	name, g := file[:i], file[i+1:]
	if !ValidName(name) || g == "" || (len(g) > 1 && g[0] == '0') {
		return "", 0, false
	}
	gen, err := strconv.ParseUint(g, 10, 64)
	if err != nil || gen == 0 {
		return "", 0, false
	}
	return name, gen, true
}

func isBlobFile(file string) bool {
	_, _, ok := splitBlobFile(file)
	return ok
}

func sum(data []byte) string {
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}

// sortedKeys returns m's keys in order, for deterministic listings.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
