package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/store"
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

// Zeroize wipes the state before it removes the TPM's indices: a crash in
// between leaves no PK and a policy counter nothing refers to, and the next
// provision (with a signed policy, which needs the counter) replaces it
// (found by the kill test once signed PKs were among its operations: in the
// other order a crash left a PK whose counter was gone, and status failed).
func TestZeroizeCrashBetweenStateAndIndices(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	dir := t.TempDir() + "/state"
	a, err := New(Config{TPM: env.TPM, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	req := api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}, Signer: officertest.Public()}
	if _, err := a.Provision(ctx, req); err != nil {
		t.Fatal(err)
	}
	// The crash: the state wiped, the indices still defined.
	if err := a.st.Wipe(ctx, store.WipeOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.TPM.ReadNVPublic(PolicyCounterHandle); err != nil {
		t.Fatalf("the counter should outlive the wiped state here: %v", err)
	}
	if st, err := a.Status(ctx); err != nil || st.Provisioned {
		t.Fatalf("status after the crash: %+v %v", st, err)
	}
	res, err := a.Provision(ctx, req)
	if err != nil || res.Counter == nil {
		t.Fatalf("provision over the leftover counter: %+v %v", res, err)
	}
	if st, err := a.Status(ctx); err != nil || !st.Provisioned || st.AuditError != "" {
		t.Fatalf("status after provisioning again: %+v %v", st, err)
	}
}

// A policy counter removed under provd (another process, where the owner
// hierarchy has no password) is reported by status, which does not fail;
// seal is refused; provision --force makes a new one.
func TestPolicyCounterRemovedUnderProvd(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a, err := New(Config{TPM: env.TPM, StateDir: t.TempDir() + "/state"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	req := api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}, Signer: officertest.Public()}
	if _, err := a.Provision(ctx, req); err != nil {
		t.Fatal(err)
	}
	if err := env.TPM.UndefineNV(PolicyCounterHandle); err != nil {
		t.Fatal(err)
	}
	st, err := a.Status(ctx)
	if err != nil || st.Policy == nil || st.Policy.Satisfied || !strings.Contains(st.Policy.Reason, "policy counter") {
		t.Fatalf("status with the counter gone: %+v %v", st.Policy, err)
	}
	if _, err := a.Seal(ctx, api.SealRequest{Data: []byte("x")}); err == nil {
		t.Fatal("seal with the counter gone succeeded")
	}
	req.Force = true
	if _, err := a.Provision(ctx, req); err != nil {
		t.Fatalf("provision --force: %v", err)
	}
	if st, err := a.Status(ctx); err != nil || st.AuditError != "" {
		t.Fatalf("status after provision --force: %+v %v", st, err)
	}
}
