package store

// Review 62: manifest.json decoded by encoding/json (duplicate keys: the
// last wins; keys match fields case-insensitively). Is there a second
// reader that could see the same bytes differently?

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// Held: one decoder reads manifest.json, and its two passes agree. The
// schema probe and the strict decode both take the last of duplicate or
// case-folded keys, so a manifest cannot be read as schema 1 by one pass
// and as a newer schema by the other ({"schema":1,...,"Schema":2} is
// ErrUnknownSchema; {"Schema":2,"schema":1,...} is schema 1 for both); a
// blob or object named twice is the last one for every reader (Tx.Get and
// GetRaw, ReadBlob), and the next commit writes that one and collects the
// other's file. No other provd reader parses manifest.json: the agent's
// records come through Tx.Get/GetRaw from the one parsed manifest.
// Attacker: A4 or A6 writing the manifest; since provd never writes a
// duplicate, such a manifest can only be planted, and it is read one way.
func TestReview62ManifestDuplicatesReadOneWay(t *testing.T) {
	const blobs = `"blobs":{"k":{"file":"k~1","size":3,"sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},` +
		`"k":{"file":"k~2","size":3,"sha256":"3608bca1e44ea6c4d268eb6db02260269892c0b42b86bbf1e77a6fa16c3c9282"}}`
	for _, tc := range []struct {
		name, doc string
		schemaErr bool
	}{
		{"newer schema last", `{"schema":1,"generation":2,"objects":{},"blobs":{},"Schema":2}`, true},
		{"newer schema first", `{"Schema":2,"schema":1,"generation":2,"objects":{"o":{"v":1},"o":{"v":2}},` + blobs + `}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := stateDir(t)
			s := mustOpen(t, dir)
			must(t, os.MkdirAll(filepath.Join(dir, BlobDir), 0o700))
			must(t, os.WriteFile(filepath.Join(dir, BlobDir, "k~1"), []byte("abc"), 0o600))
			must(t, os.WriteFile(filepath.Join(dir, BlobDir, "k~2"), []byte("xyz"), 0o600))
			must(t, os.WriteFile(filepath.Join(dir, ManifestFile), []byte(tc.doc), 0o600))
			err := s.View(bg, func(tx *Tx) error {
				var o struct{ V int }
				if err := tx.Get("o", &o); err != nil {
					return err
				}
				raw, err := tx.GetRaw("o")
				if err != nil {
					return err
				}
				if o.V != 2 || string(raw) != `{"v":2}` {
					t.Errorf("object named twice: Get %d, GetRaw %s; want the last for both", o.V, raw)
				}
				b, err := tx.ReadBlob("k")
				if err != nil || string(b) != "xyz" {
					t.Errorf("blob named twice: %q %v, want the last (k~2)", b, err)
				}
				return nil
			})
			if tc.schemaErr {
				if !errors.Is(err, ErrUnknownSchema) {
					t.Fatalf("View: %v, want ErrUnknownSchema", err)
				}
				return
			}
			must(t, err)
			must(t, s.Update(bg, func(tx *Tx) error { return tx.Put("p", 1) }))
			if _, err := os.Stat(filepath.Join(dir, BlobDir, "k~1")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the first k's file (k~1) survived a commit: %v", err)
			}
			must(t, s.View(bg, func(tx *Tx) error {
				b, err := tx.ReadBlob("k")
				if err != nil || string(b) != "xyz" {
					t.Errorf("after a commit, k is %q %v", b, err)
				}
				return nil
			}))
		})
	}
}
