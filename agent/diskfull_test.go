package agent_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// A full disk under the state directory: every operation either completes or
// fails with a clear error, nothing is half-written (the keys that were there
// still work, no key appears half-made, the audit trail verifies), and once
// space is back everything works. The state directory is a 1 MiB tmpfs
// mounted in the test's own directory.
func TestDiskFullLosesNothing(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs for the state (the test needs root, as make test runs): %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", dir).Run() })
	ag := newAgent(t, env, dir)
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "before", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	// Fill the disk.
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	f.Close()

	d := sha256.Sum256([]byte("m"))
	failed := 0
	for name, op := range map[string]func() error{
		"create": func() error {
			_, err := ag.CreateKey(ctx, api.CreateRequest{Name: "during", Type: "ecc-p256"})
			return err
		},
		"derive": func() error {
			_, err := officertest.Derive(t, ctx, ag, api.DeriveRequest{Name: "derived", Label: "d", Type: "ecc-p256"})
			return err
		},
		"seal":   func() error { _, err := ag.Seal(ctx, api.SealRequest{Data: []byte("s")}); return err },
		"delete": func() error { return ag.DeleteKey(ctx, "before") },
		"sign":   func() error { _, err := ag.Sign(ctx, "before", d[:], api.SignOptions{}); return err },
	} {
		err := op()
		t.Logf("%s with the disk full: %v", name, err)
		if err != nil {
			failed++
			if !errors.Is(err, syscall.ENOSPC) {
				t.Errorf("%s with the disk full: %v, want an error that says no space is left", name, err)
			}
		}
	}
	if failed == 0 {
		t.Fatal("nothing failed: the disk was not full")
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if st, err := ag.Status(ctx); err != nil || st.AuditError != "" {
		t.Fatalf("status once space is back: %+v %v", st, err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatalf("audit verify once space is back: %v", err)
	}
	keys, err := ag.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if _, _, err := ag.KeyPublic(ctx, k.Name); err != nil {
			t.Errorf("key %s listed but not whole: %v", k.Name, err)
		}
	}
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "after", Type: "ecc-p256"}); err != nil {
		t.Fatalf("create once space is back: %v", err)
	}
	if _, err := ag.Sign(ctx, "after", d[:], api.SignOptions{}); err != nil {
		t.Fatalf("sign once space is back: %v", err)
	}
}
