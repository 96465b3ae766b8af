package trustedpath

import (
	"os"
	"path/filepath"
	"testing"
)

// Held: Resolve names the directory Mkdir then makes, for the spellings an
// operator or a unit writes: a trailing "/", "/." and "//", doubled
// slashes inside, "." components, a root link before the missing part, a
// link's ".." resolved before it, an existing state and a missing one
// several levels deep. Each is resolved before anything is made, then
// made, and the two must be the same path, and the directory made must be
// the one the kernel reaches by the path as written.
func TestReview68ResolveIsWhereMkdirMakes(t *testing.T) {
	for _, tail := range []string{
		"state", "state/", "state/.", "state//", "./state", "state/./", "a//b/state", "a/./b/state/.",
		"lnk/state", "lnk/../state2", "lnk//new/./s/", "exists", "exists/.", "exists//",
	} {
		t.Run(tail, func(t *testing.T) {
			base := t.TempDir()
			if err := os.MkdirAll(filepath.Join(base, "real", "inner"), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(filepath.Join(base, "exists"), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("real/inner", filepath.Join(base, "lnk")); err != nil {
				t.Fatal(err)
			}
			p := base + "/" + tail
			r, err := Resolve(p)
			if err != nil {
				t.Fatalf("Resolve(%q): %v", p, err)
			}
			m, err := Mkdir(p, 0o700)
			if err != nil {
				t.Fatalf("Mkdir(%q): %v", p, err)
			}
			if r != m {
				t.Errorf("Resolve(%q) = %q, Mkdir made %q", p, r, m)
			}
			a, err := os.Stat(p)
			if err != nil {
				t.Fatalf("the path as written after Mkdir: %v", err)
			}
			b, err := os.Stat(m)
			if err != nil || !os.SameFile(a, b) {
				t.Errorf("Mkdir(%q) returned %q, not the directory the kernel reaches (%v)", p, m, err)
			}
			if r2, err := Resolve(p); err != nil || r2 != m {
				t.Errorf("Resolve(%q) once made: %q, %v; want %q", p, r2, err, m)
			}
		})
	}
}
