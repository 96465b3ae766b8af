package trustedpath

// Review 66: Mkdir's refusal of ".." among missing components (review 65's
// mend) against the layouts it must still take.

import (
	"os"
	"path/filepath"
	"testing"
)

// Held: ".." among the components that exist is the kernel's to resolve
// and is taken ("have/sub/../new/deep" makes have/new/deep, through a
// root link too: "lnk/../new" is made beside lnk's target, not beside
// lnk); "." and "//" among the missing ones are taken; only ".." after a
// missing component is refused, with nothing made.
func TestReview66MkdirDotDotLayouts(t *testing.T) {
	base := t.TempDir()
	if err := os.MkdirAll(filepath.Join(base, "have", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(base, "real", "inner"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real/inner", filepath.Join(base, "lnk")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ in, want string }{
		{base + "/have/sub/../new/deep", filepath.Join(base, "have", "new", "deep")},
		{base + "/lnk/../made", filepath.Join(base, "real", "made")},
		{base + "/have/./dot//slash/", filepath.Join(base, "have", "dot", "slash")},
	} {
		got, err := Mkdir(c.in, 0o700)
		if err != nil {
			t.Errorf("Mkdir(%s): %v", c.in, err)
			continue
		}
		if got != c.want {
			t.Errorf("Mkdir(%s) = %s, want %s", c.in, got, c.want)
		}
		if fi, err := os.Lstat(c.want); err != nil || !fi.IsDir() {
			t.Errorf("Mkdir(%s): %s not made: %v", c.in, c.want, err)
		}
	}
	if _, err := Mkdir(base+"/have/miss/x/../y", 0o700); err == nil {
		t.Errorf("\"..\" after a missing component taken")
	}
	if _, err := os.Lstat(filepath.Join(base, "have", "miss")); err == nil {
		t.Errorf("a refused path left have/miss behind")
	}
	if _, err := os.Lstat(filepath.Join(base, "made")); err == nil {
		t.Errorf("lnk/../made was made beside lnk")
	}
}
