package store

// Review 65: Wipe after review 64's mend (it continues past a failed step,
// and removes what was planted at manifest.json or audit.log).

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

// FLAW (failed before the mend): Wipe lists "blobs" with os.ReadDir, which follows a link there,
// and shreds every regular file it lists through the link (shred's
// O_NOFOLLOW covers the last component only), whatever its name; only
// then does os.Remove take the link away. A link planted at blobs (the
// same kind of plant review 64's mend removes at manifest.json) makes
// zeroization zero and unlink every file of the directory it names,
// /etc or /var/lib/another-service, as root. A read or commit likewise
// reads and writes blobs through it, and collectGarbage shreds the blob-
// and temp-named files it finds there. Attacker: whoever can put a name
// in the state directory (a state restored from an archive of theirs, or
// the provd user where root runs zeroize on its state); the planted
// manifest.json, audit.log and FIFOs of reviews 63-64 assume the same
// attacker. Gain: root destroys files outside the state directory, and
// zeroize reports success. Suggested fix: Wipe and collectGarbage Lstat
// blobs and remove (never list) anything there that is not a real
// directory; open blobs with O_DIRECTORY|O_NOFOLLOW and work relative to
// that descriptor (openat/unlinkat), and the same for reads and commits.
func TestReview65WipeFollowsAPlantedBlobsLink(t *testing.T) {
	dir := stateDir(t)
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(context.Background(), func(tx *Tx) error { return tx.WriteBlob("k", []byte("secret")) }); err != nil {
		t.Fatal(err)
	}
	elsewhere := filepath.Join(t.TempDir(), "elsewhere")
	if err := os.Mkdir(elsewhere, 0o755); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(elsewhere, "passwd")
	if err := os.WriteFile(victim, []byte("root:x:0:0::/root:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bdir := filepath.Join(s.Dir(), BlobDir)
	if err := os.Rename(bdir, bdir+".real"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, bdir); err != nil {
		t.Fatal(err)
	}
	werr := s.Wipe(context.Background(), WipeOptions{})
	b, err := os.ReadFile(victim)
	if err != nil || !bytes.Equal(b, []byte("root:x:0:0::/root:/bin/sh\n")) {
		t.Errorf("Wipe (error %v) zeroed or removed %s, outside the state directory, through a link at blobs: %q, %v", werr, victim, b, err)
	}
}

// Held: what removeThenShred finds planted at manifest.json or audit.log
// (a directory holding a link to elsewhere, a link to a directory, a link
// to a file) is removed with os.RemoveAll, which unlinks links and
// descends into no directory a link names: nothing outside the state
// directory is touched, the planted names are gone, and the real blob is
// zeroed and removed anyway.
func TestReview65WipeRemovesPlantsWithoutFollowingThem(t *testing.T) {
	for _, plant := range []string{"dir-with-link", "link-to-dir", "link-to-file"} {
		t.Run(plant, func(t *testing.T) {
			dir := stateDir(t)
			s, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Update(context.Background(), func(tx *Tx) error { return tx.WriteBlob("k", []byte("secret")) }); err != nil {
				t.Fatal(err)
			}
			elsewhere := filepath.Join(t.TempDir(), "elsewhere")
			if err := os.Mkdir(elsewhere, 0o755); err != nil {
				t.Fatal(err)
			}
			victim := filepath.Join(elsewhere, "keep")
			if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{ManifestFile, AuditLogFile} {
				p := filepath.Join(s.Dir(), name)
				os.Remove(p)
				var err error
				switch plant {
				case "dir-with-link":
					if err = os.Mkdir(p, 0o700); err == nil {
						err = os.Symlink(elsewhere, filepath.Join(p, "x"))
					}
				case "link-to-dir":
					err = os.Symlink(elsewhere, p)
				case "link-to-file":
					err = os.Symlink(victim, p)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			werr := s.Wipe(context.Background(), WipeOptions{Audit: true})
			if b, err := os.ReadFile(victim); err != nil || string(b) != "keep" {
				t.Errorf("Wipe (error %v) reached %s through a plant: %q, %v", werr, victim, b, err)
			}
			for _, name := range []string{ManifestFile, AuditLogFile, BlobDir} {
				if _, err := os.Lstat(filepath.Join(s.Dir(), name)); err == nil {
					t.Errorf("%s survives Wipe (error %v)", name, werr)
				}
			}
			if werr != nil {
				t.Errorf("Wipe: %v", werr)
			}
		})
	}
}
