package store

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// Held: store.Open and HoldServeLock agree with the kernel and with each
// other whatever the spelling: Open of "lnk/../state" (lnk root's link),
// "//", a trailing slash and "." keep the resolved directory (Dir), the
// kernel's, and the serve lock taken through one spelling refuses
// (ErrLocked) a second server through another. (agent.New cleans its
// path before Open: see agent.TestReview65ServeLockAndStateSplitByCleaning.)
func TestReview65OpenAndServeLockAgreeOnSpellings(t *testing.T) {
	base := t.TempDir()
	if err := os.MkdirAll(filepath.Join(base, "real", "inner"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real/inner", filepath.Join(base, "lnk")); err != nil {
		t.Fatal(err)
	}
	kernels := filepath.Join(base, "real", "state")
	spellings := []string{
		base + "/lnk/../state",
		base + "//real//state/",
		base + "/./real/./state/.",
		base + "/lnk/../inner/../state",
		kernels,
	}
	for _, raw := range spellings {
		s, err := Open(raw)
		if err != nil {
			t.Errorf("Open(%s): %v", raw, err)
			continue
		}
		if s.Dir() != kernels {
			t.Errorf("Open(%s).Dir() = %s; want %s", raw, s.Dir(), kernels)
		}
	}
	release, err := HoldServeLock(spellings[0])
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	for _, raw := range spellings[1:] {
		if rel, err := HoldServeLock(raw); !errors.Is(err, ErrLocked) {
			if err == nil {
				rel()
			}
			t.Errorf("HoldServeLock(%s) while %s is held: %v; want ErrLocked", raw, spellings[0], err)
		}
	}
	for _, n := range []string{"state", "inner"} {
		if _, err := os.Lstat(filepath.Join(base, n)); err == nil {
			t.Errorf("%s made, where the kernel does not go", filepath.Join(base, n))
		}
	}
}
