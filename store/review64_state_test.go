package store

// Review 64: the state directory's path and Wipe after review 63's mends.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const review64Other = 4242 // another local user, neither root nor the caller

// FLAW (failed before the mend): store.Open checks its path with trustedpath.Mkdir, which (like
// Walk) cleans the path as text first (filepath.Abs), so in
// "pub/x/../state" the link x is never checked; the Store then keeps the
// raw string, and while most names are made with filepath.Join (cleaned
// too, so they agree with the check), os.ReadDir(s.dir) (collectGarbage,
// Wipe), os.CreateTemp(s.dir, ...) (every manifest commit, Wipe's
// rename-away) and syncDir(s.dir) hand the raw string to the kernel,
// which follows x. Here x, uid 4242's link in a sticky directory, leads
// to pub/ at Open (the kernel's answer and the check agree); afterwards
// 4242 points it into its own tree. Then (a) a regular ".tmp-" file of
// 4242's there makes every transaction fail (collectGarbage lists 4242's
// directory and shreds the same name in the real one: ENOENT); (b)
// without it, Wipe creates its temp file in 4242's directory and renames
// root's manifest.json into it, where 4242 renames it away before it is
// zeroed (a manifest commit likewise writes its temp file there, between
// whose close and rename 4242 may swap in a manifest of its own).
// Attacker: the owner of a link met before a ".." in a state path given
// to store.Open by a Go program using package store (agent.New cleans
// the path with filepath.Abs first, so provd's CLI and daemon are not
// exposed; the library API is). Gain: denial of every
// transaction, zeroization defeated, and a window to plant the manifest.
// Suggested fix: Open keeps the cleaned absolute path it checked
// (s.dir = the Walk/Mkdir result), or refuses a path that is not
// filepath.Clean's; and trustedpath walks an unclean path's ".." after a
// link as the kernel does (trustedpath.TestReview64WalkCleansItsOwnInput).
func TestReview64OpenWithDotDotAfterALink(t *testing.T) {
	base := t.TempDir()
	pub := filepath.Join(base, "pub")
	evil := filepath.Join(base, "evil")
	for _, d := range []string{filepath.Join(pub, "dummy"), filepath.Join(evil, "sub"), filepath.Join(evil, "state")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(pub, os.ModeSticky|0o777); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{evil, filepath.Join(evil, "sub"), filepath.Join(evil, "state")} {
		if err := os.Chown(d, review64Other, review64Other); err != nil {
			t.Fatal(err)
		}
	}
	x := filepath.Join(pub, "x")
	point := func(target string) {
		t.Helper()
		os.Remove(x)
		if err := os.Symlink(target, x); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(x, review64Other, review64Other); err != nil {
			t.Fatal(err)
		}
	}
	point(filepath.Join(pub, "dummy")) // x/.. is pub: the kernel agrees with the check
	raw := x + "/../state"
	var inEvil []string
	s, err := OpenOptions(raw, Options{hook: func(step string) {
		if step == "wipe-temp-created" || step == "wipe-renamed" {
			ents, _ := os.ReadDir(filepath.Join(evil, "state"))
			for _, e := range ents {
				inEvil = append(inEvil, step+": "+e.Name())
				if step == "wipe-renamed" {
					// 4242 keeps what root renamed into its directory.
					os.Rename(filepath.Join(evil, "state", e.Name()), filepath.Join(evil, "state", "kept-"+e.Name()))
				}
			}
		}
	}})
	if errors.Is(err, ErrInsecureDir) {
		// The mend: the walk goes through x, uid 4242's link, as the
		// kernel does, and refuses the path before anything is made.
		t.Logf("Open(%s): %v", raw, err)
		return
	}
	if err != nil {
		t.Fatalf("Open(%s): %v", raw, err)
	}
	if err := s.Update(context.Background(), func(tx *Tx) error { return tx.Put("k", map[string]int{"v": 1}) }); err != nil {
		t.Fatal(err)
	}

	point(filepath.Join(evil, "sub")) // after Open: x/.. is uid 4242's directory
	planted := filepath.Join(evil, "state", tmpPrefix+"planted")
	if err := os.WriteFile(planted, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.View(context.Background(), func(*Tx) error { return nil }); err != nil {
		t.Errorf("(a) after uid %d retargeted its link x and planted %s, every transaction fails: %v", review64Other, filepath.Base(planted), err)
	}
	os.Remove(planted)
	werr := s.Wipe(context.Background(), WipeOptions{})
	if len(inEvil) > 0 {
		t.Errorf("(b) Wipe made and renamed files in uid %d's directory %s: %v (Wipe: %v)", review64Other, filepath.Join(evil, "state"), inEvil, werr)
	}
	ents, _ := os.ReadDir(filepath.Join(evil, "state"))
	for _, e := range ents {
		if b, err := os.ReadFile(filepath.Join(evil, "state", e.Name())); err == nil && strings.Contains(string(b), `"generation"`) {
			t.Errorf("(b) the state's manifest survives un-zeroed in uid %d's directory as %s", review64Other, e.Name())
		}
	}
}

// FLAW (low; failed before the mend): Wipe stops at the first file it cannot shred, before it
// has touched the blobs: a directory at manifest.json (os.Rename of a
// directory over Wipe's fresh temp file: ENOTDIR) makes zeroization
// fail with every blob file still on disk, unzeroed. shred itself
// refuses a directory too (O_WRONLY: EISDIR). Attacker: only whoever may
// write the state directory (root or provd's user: Open refuses any
// other), so no privilege is gained; the gap is that zeroization is
// all-or-nothing where it should be best effort across the whole state
// (a corrupt state is exactly when an operator zeroizes). Suggested fix:
// Wipe goes on past a file it cannot shred (removing a non-regular entry
// with os.RemoveAll, as it does in blobs/), zeroes every blob, and
// returns the joined errors.
func TestReview64WipeStopsAtAPlantedDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("review64 blob that zeroize must clear")
	if err := s.Update(context.Background(), func(tx *Tx) error { return tx.WriteBlob("k", secret) }); err != nil {
		t.Fatal(err)
	}
	man := filepath.Join(dir, ManifestFile)
	if err := os.Remove(man); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(man, 0o700); err != nil {
		t.Fatal(err)
	}
	werr := s.Wipe(context.Background(), WipeOptions{})
	var left []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if b, _ := os.ReadFile(p); strings.Contains(string(b), string(secret)) {
				left = append(left, p)
			}
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("Wipe with a directory at %s: %v; blob files left un-zeroed: %v", ManifestFile, werr, left)
	}
}
