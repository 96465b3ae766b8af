package store

// Review 63: the state directory and its files after review 62's mend
// (store.Open walks the path with internal/trustedpath; manifest and
// blobs are opened O_NOFOLLOW|O_NONBLOCK, regular only, bounded).

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/provd/provd/internal/trustedpath"
)

// FLAW (failed before the mend): Wipe, the zeroization path ("it also clears corrupt state"),
// still opens what it shreds without O_NONBLOCK: a FIFO at manifest.json
// (review 62's planted FIFO, which every read now refuses as ErrCorrupt)
// is renamed to a temp name and then opened O_WRONLY by shred, which
// blocks until some reader comes, for good, holding the state's lock and
// the store's semaphore: `provd zeroize` through the daemon never returns,
// nothing is zeroized, and every later request of the daemon waits on the
// lock (ErrLocked). The same holds for audit.log with WipeOptions.Audit.
// Attacker: whoever review 62's row has planting a FIFO in the state (a
// state copied or restored from a tampered backup; A6); gain: zeroization
// denied, the daemon wedged. Suggested fix: shred opens with
// O_NONBLOCK (and O_NOFOLLOW) and zeroes only a regular file (fstat after
// open), unlinking anything else; collectGarbage already skips
// non-regular entries, removeThenShred does not.
func TestReview63WipeOfAPlantedFIFOManifestHangs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, ManifestFile), 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Wipe(context.Background(), WipeOptions{}) }()
	select {
	case err := <-done:
		if err != nil {
			t.Logf("Wipe with a FIFO manifest: %v", err)
		}
		return
	case <-time.After(10 * time.Second):
		t.Errorf("Wipe has blocked for 10s on a FIFO at %s (holding the state's lock)", ManifestFile)
	}
	// Release it: a reader on the renamed FIFO lets shred's open return.
	var readers []*os.File
	defer func() {
		for _, r := range readers {
			r.Close()
		}
	}()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Type()&fs.ModeNamedPipe != 0 {
			if r, err := os.OpenFile(filepath.Join(dir, e.Name()), os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
				readers = append(readers, r)
			}
		}
	}
	select {
	case err := <-done:
		t.Logf("Wipe, once a reader came: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("Wipe still blocked after a reader opened the FIFO")
	}
}

// FLAW (failed before the mend): the manifest's read bound (16 MiB, review 62) is not a write
// bound: an Update whose manifest encodes to more than maxManifest
// commits, after which every View and Update and every Open of the state
// fails ErrCorrupt ("manifest.json is N bytes, over 16777216"), the
// daemon's every request exits 8, and the only way back, Wipe, needs an
// open Store (store.Open refuses the state). The state provd wrote itself
// is lost until hand-edited. Attacker: none needed (a large fleet's
// records, many keys or attestation verdicts over time; the comment
// reckons a thousand keys at a megabyte); or any role that may add records
// growing the manifest past the bound. Suggested fix: refuse in commit
// (before writeFileAtomic) a manifest over maxManifest, so the Update
// fails and the committed state stays readable; or bound the records
// callers may add, and size maxManifest above what they can reach.
func TestReview63ManifestOverTheReadBoundIsCommitted(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Update(ctx, func(tx *Tx) error { return tx.Put("small", "kept") }); err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("a", maxManifest+1)
	uerr := s.Update(ctx, func(tx *Tx) error { return tx.Put("big", big) })
	verr := s.View(ctx, func(tx *Tx) error {
		var v string
		return tx.Get("small", &v)
	})
	if verr != nil {
		t.Errorf("Update of a manifest over %d bytes: %v; the state then: %v", maxManifest, uerr, verr)
	}
	if _, err := Open(dir); err != nil {
		t.Errorf("Open after that Update: %v", err)
	}
}

// FLAW (failed before the mend): trustedpath.Walk joins a link's target to its directory with
// filepath.Join, which cleans "x/../s" as text: the component x is never
// looked at, though the kernel follows x (a link) and then "..". A link
// of root's whose target climbs out through a name in a sticky directory
// (pub/x/../s, pub 1777) passes the walk whatever x is; the user who owns
// x there points it elsewhere after Open, and the state the store reads
// and writes (every path is s.dir joined, resolved by the kernel through
// the link) is in that user's directory: the manifest with its objects
// and wrapped blobs written there, and that user's manifest read. Review
// 56 found the same for ".." in the socket path, read as text; the mend
// refused Clean-changed paths only as written, not in a link's target.
// Attacker: a local user who can create a name in a sticky directory that
// a root link's target passes through with "..". Gain: the state (every
// later transaction's reads and writes). Suggested fix: walk a link's
// target component by component as the kernel does (push its components
// in front of the rest, resolve ".." against the directory reached, never
// filepath.Join/Clean), or refuse a target holding ".." after a
// component.
func TestReview63WalkCleansALinkTargetsDotDot(t *testing.T) {
	base := t.TempDir()
	pub := filepath.Join(base, "pub")
	mustDir := func(p string, mode os.FileMode, uid int) {
		t.Helper()
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	mustDir(pub, os.ModeSticky|0o777, 0)
	mustDir(filepath.Join(pub, "y"), 0o755, 0) // root's
	mustDir(filepath.Join(pub, "s"), 0o700, 0) // the state, root's
	home := filepath.Join(base, "home")        // another user's
	mustDir(home, 0o755, review63Other)        //
	mustDir(filepath.Join(home, "sub"), 0o755, review63Other)
	mustDir(filepath.Join(home, "s"), 0o777, review63Other)
	x := filepath.Join(pub, "x")
	plant := func(target string) {
		t.Helper()
		os.Remove(x)
		if err := os.Symlink(target, x); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(x, review63Other, review63Other); err != nil {
			t.Fatal(err)
		}
	}
	plant("y") // pub/x/.. is pub, for now
	state := filepath.Join(base, "state")
	if err := os.Symlink("pub/x/../s", state); err != nil { // root's link
		t.Fatal(err)
	}

	if resolved, err := trustedpath.Walk(state); err == nil {
		t.Logf("Walk(%s) = %s: uid %d's link pub/x not checked", state, resolved, review63Other)
	}
	s, err := Open(state)
	if err != nil {
		t.Logf("Open refuses the path: %v", err)
		return
	}
	plant(filepath.Join(home, "sub")) // after Open: pub/x/.. is home
	uerr := s.Update(context.Background(), func(tx *Tx) error { return tx.Put("key", "wrapped key record") })
	if _, err := os.Stat(filepath.Join(home, "s", ManifestFile)); err == nil {
		t.Errorf("the store's manifest went to uid %d's directory %s (Update: %v)", review63Other, filepath.Join(home, "s"), uerr)
	} else if !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
}

// Held: the layouts provd's state lives in are still opened, and a root
// one-shot's --state under another user's directory is refused, leaving
// nothing: systemd's StateDirectory= (/var/lib/provd, 0700, under root's
// 0755 directories), DynamicUser='s link /var/lib/provd ->
// private/provd (a link of root's, in 0700 /var/lib/private), a root link
// to a state elsewhere, a state made under a sticky /tmp (as the tests
// do) through missing directories, a trailing slash. Refused
// (ErrInsecureDir), nothing made: a state under a user's home when root
// runs provd (that user may rename it away and put theirs in its place:
// what review 62 mended; run provd as that user, or put the state in
// root's directories).
func TestReview63StateDirLayouts(t *testing.T) {
	base := t.TempDir()
	mk := func(p string, mode os.FileMode, uid int) {
		t.Helper()
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	mk(filepath.Join(base, "var", "lib", "private"), 0o700, 0)
	os.Chmod(filepath.Join(base, "var"), 0o755)
	os.Chmod(filepath.Join(base, "var", "lib"), 0o755)
	mk(filepath.Join(base, "var", "lib", "private", "provd"), 0o700, 0)
	if err := os.Symlink("private/provd", filepath.Join(base, "var", "lib", "provd-dyn")); err != nil {
		t.Fatal(err)
	}
	mk(filepath.Join(base, "srv", "provd"), 0o700, 0)
	if err := os.Symlink(filepath.Join(base, "srv", "provd"), filepath.Join(base, "linked")); err != nil {
		t.Fatal(err)
	}
	mk(filepath.Join(base, "tmp"), os.ModeSticky|0o777, 0)
	for _, dir := range []string{
		filepath.Join(base, "var", "lib", "provd"),
		filepath.Join(base, "var", "lib", "provd-dyn"),
		filepath.Join(base, "linked"),
		filepath.Join(base, "tmp", "a", "b", "state"),
		filepath.Join(base, "var", "lib", "trailing") + "/",
	} {
		s, err := Open(dir)
		if err != nil {
			t.Errorf("Open(%s): %v", dir, err)
			continue
		}
		if err := s.Update(context.Background(), func(tx *Tx) error { return tx.Put("k", 1) }); err != nil {
			t.Errorf("Update in %s: %v", dir, err)
		}
	}

	mk(filepath.Join(base, "home", "alice"), 0o700, review63Other)
	os.Chmod(filepath.Join(base, "home"), 0o755)
	alice := filepath.Join(base, "home", "alice", "provd-state")
	if _, err := Open(alice); !errors.Is(err, ErrInsecureDir) {
		t.Errorf("Open(%s) as root, under uid %d's home: %v, want ErrInsecureDir", alice, review63Other, err)
	}
	if _, err := os.Lstat(alice); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the refused Open left %s: %v", alice, err)
	}
}

// FLAW (failed before the mend): a blob is read "at the size the manifest records" (review 62), but
// nothing bounds that size: the manifest that names a sparse blob file
// records its size too. A manifest and blob edited together (A6's copy of
// the state, a restored backup; the attacker review 62's row names for the
// 64 MiB sparse manifest) recording a blob of 256 MiB make every ReadBlob
// of it allocate and read 256 MiB before the hash refuses it; the daemon
// reads the PK's blob on most requests, so a few concurrent ones, or a
// recorded size of many GiB, and it is OOM-killed (the blob's make()
// panics past the address space). Every blob provd writes is a TPM object,
// a transfer record or a signed policy: KiB. Suggested fix: a bound for
// blobs (maxBlob, 1 MiB say), refused in WriteBlob and in
// manifest.validate (ErrCorrupt) before any read.
func TestReview63BlobSizeIsTheManifestsWord(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Update(ctx, func(tx *Tx) error { return tx.WriteBlob("pk", []byte("a TPM blob")) }); err != nil {
		t.Fatal(err)
	}
	mp := filepath.Join(dir, ManifestFile)
	raw, err := os.ReadFile(mp)
	if err != nil {
		t.Fatal(err)
	}
	var m manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	const size = 256 << 20
	ref := m.Blobs["pk"]
	ref.Size = size
	m.Blobs["pk"] = ref
	if raw, err = json.Marshal(&m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(mp, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(dir, BlobDir, ref.File), size); err != nil { // sparse
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	verr := s.View(ctx, func(tx *Tx) error {
		_, err := tx.ReadBlob("pk")
		return err
	})
	runtime.ReadMemStats(&after)
	if !errors.Is(verr, ErrCorrupt) {
		t.Errorf("a blob recorded at %d bytes: %v, want ErrCorrupt", size, verr)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n >= size {
		t.Errorf("reading it allocated %d bytes: the recorded size is not bounded", n)
	}
}

// FLAW (failed before the mend): HoldServeLock, which `provd serve` and `provd fleet serve` call
// before anything opens the state, still makes the state directory with
// os.MkdirAll and no walk: root follows another user's link and makes the
// directory, and the lock file in it, wherever that link points; store.Open
// refuses the same path a moment later (ErrInsecureDir), but the directory
// and .serve.lock are made already, and "a refused path leaves nothing
// behind" (trustedpath.Mkdir) does not hold. Attacker: a local user who
// can put a link where the state path passes (--state or state_dir under
// /tmp or a shared directory); gain: root makes a directory of the
// attacker's naming anywhere (a directory at /root/.ssh/authorized_keys,
// at a path a service expects a file at: that service's denial), and a
// root-owned .serve.lock file there; the link's owner may also repoint the
// link between HoldServeLock and Open so the lock held is not the state's.
// Suggested fix: HoldServeLock makes dir with trustedpath.Mkdir and checks
// it with checkPrivate, as OpenOptions does, before creating the lock.
func TestReview63ServeLockFollowsAnotherUsersLink(t *testing.T) {
	base := t.TempDir()
	pub := filepath.Join(base, "pub")
	if err := os.Mkdir(pub, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(pub, os.ModeSticky|0o777); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(base, "etc") // a directory of root's
	if err := os.Mkdir(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	x := filepath.Join(pub, "x")
	if err := os.Symlink(victim, x); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(x, review63Other, review63Other); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(x, "authorized_keys")
	if _, err := Open(dir); !errors.Is(err, ErrInsecureDir) {
		t.Fatalf("Open(%s) through uid %d's link: %v, want ErrInsecureDir", dir, review63Other, err)
	}
	release, err := HoldServeLock(dir)
	if err == nil {
		release()
	}
	if _, serr := os.Lstat(filepath.Join(victim, "authorized_keys")); serr == nil {
		t.Errorf("HoldServeLock(%s) through uid %d's link: %v; it made %s", dir, review63Other, err, filepath.Join(victim, "authorized_keys"))
	}
	if !errors.Is(err, ErrInsecureDir) {
		t.Errorf("HoldServeLock(%s) through uid %d's link: %v, want ErrInsecureDir", dir, review63Other, err)
	}
}
