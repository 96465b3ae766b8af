package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// Zeroize ends a trail in steps ordered so that a crash after any of them
// leaves a state the next record repairs by itself (found by the kill test:
// with the anchor removed first, a crash left a trail whose anchor was gone,
// refused until an officer's reanchor). Each window is built here and the
// state after it is used: status clean, a record written, verify passes.
func TestZeroizeCrashWindowsRepairThemselves(t *testing.T) {
	for _, window := range []string{"gate removed", "gate removed and log archived"} {
		t.Run(window, func(t *testing.T) {
			env := swtpmtest.Start(t)
			ctx := context.Background()
			dir := t.TempDir() + "/state"
			a, err := New(Config{TPM: env.TPM, StateDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
				t.Fatal(err)
			}
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			// The crash: what zeroize's last steps did before it.
			if err := os.Remove(filepath.Join(dir, gateFile)); err != nil {
				t.Fatal(err)
			}
			if window == "gate removed and log archived" {
				if err := os.Rename(filepath.Join(dir, audit.FileName), filepath.Join(dir, "audit-archived.log")); err != nil {
					t.Fatal(err)
				}
			}
			a, err = New(Config{TPM: env.TPM, StateDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			if st, err := a.Status(ctx); err != nil || st.AuditError != "" {
				t.Fatalf("status after the crash: %+v %v", st, err)
			}
			if _, err := a.Seal(ctx, api.SealRequest{Data: []byte("after the crash")}); err != nil {
				t.Fatalf("seal (an audited operation) after the crash: %v", err)
			}
			if _, err := a.AuditVerify(ctx); err != nil {
				t.Fatalf("verify after the crash: %v", err)
			}
		})
	}
}
