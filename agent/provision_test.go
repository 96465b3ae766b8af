package agent_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

func currentValues(t *testing.T, tp *tpm.TPM, pcrs ...int) policy.PCRValues {
	t.Helper()
	v, err := tp.PCRRead(tpm2.TPMAlgSHA256, pcrs)
	if err != nil {
		t.Fatal(err)
	}
	return policy.PCRValues{Bank: policy.BankSHA256, Values: v}
}

// A signed policy for new PCR values restores access without re-provisioning;
// an older, revoked one is refused.
func TestSignedPolicyLifecycle(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	res, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, Signer: signer.Public(), AllowResettable: true})
	if err != nil {
		t.Fatalf("provision: %v", err)
	}
	if res.Counter == nil || res.DName != "" {
		t.Fatalf("result %+v", res)
	}
	c := *res.Counter
	// Before any policy is installed the PK is unusable.
	if _, err := ag.Seal(ctx, api.SealRequest{Data: []byte("x")}); !errors.Is(err, tpm.ErrPolicyNotSatisfied) {
		t.Fatalf("seal without a signed policy: %v", err)
	}
	install := func(version uint64, vals policy.PCRValues) (api.PolicyInstallResult, error) {
		t.Helper()
		sp, err := agent.SignPKPolicy(signer, vals, version, "", true)
		if err != nil {
			t.Fatal(err)
		}
		b, err := sp.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		return ag.InstallPolicy(ctx, b)
	}
	v1 := currentValues(t, env.TPM, 7, 16)
	if r, err := install(c, v1); err != nil || !r.Satisfied {
		t.Fatalf("install v%d: %+v %v", c, r, err)
	}
	blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("survives updates")})
	if err != nil {
		t.Fatal(err)
	}
	extend16(t, env.TPM)
	_, err = ag.Unseal(ctx, blob)
	var pe *api.PolicyError
	if !errors.As(err, &pe) || len(pe.Differ) != 1 || pe.Differ[0] != 16 {
		t.Fatalf("unseal after PCR 16 changed: %v", err)
	}
	v2 := currentValues(t, env.TPM, 7, 16)
	if r, err := install(c+1, v2); err != nil || !r.Satisfied {
		t.Fatalf("install v%d: %+v %v", c+1, r, err)
	}
	if got, err := ag.Unseal(ctx, blob); err != nil || string(got) != "survives updates" {
		t.Fatalf("unseal with the new signed policy: %q %v", got, err)
	}
	// The old policy is revoked, in the TPM: refused at install.
	if _, err := install(c, v1); !errors.As(err, &pe) || !strings.Contains(pe.Reason, "revoked") {
		t.Fatalf("install of revoked v%d: %v", c, err)
	}
	// A policy signed by someone else is refused.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sp, _ := agent.SignPKPolicy(other, v2, c+5, "", true)
	b, _ := sp.MarshalJSON()
	if _, err := ag.InstallPolicy(ctx, b); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("foreign signer: %v", err)
	}
	if _, err := ag.AuditVerify(context.Background()); err != nil {
		t.Fatalf("audit verify: %v", err)
	}
}

// swtpm restarted with its state kept (Shutdown(STATE), resume): the PK works.
// After a power cut (no Shutdown) too: the PK's blob is on disk and the SRK is
// persistent.
func TestPKSurvivesRestart(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{0, 7}}); err != nil {
		t.Fatal(err)
	}
	blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("kept")})
	if err != nil {
		t.Fatal(err)
	}
	ag.Close()
	for _, state := range []bool{true, false} {
		env.Restart(state)
		ag2 := newAgent(t, env, dir)
		got, err := ag2.Unseal(ctx, blob)
		if err != nil || string(got) != "kept" {
			t.Fatalf("unseal after restart (state=%v): %q %v", state, got, err)
		}
		ag2.Close()
	}
}

// zeroize leaves no provd object in the TPM, as tpm2-tools sees it, and no blob
// on disk.
func TestZeroizeLeavesNothing(t *testing.T) {
	env := swtpmtest.Start(t)
	env.RequireSimulator()
	ctx := context.Background()
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, Signer: signer.Public(), AllowResettable: true}); err != nil {
		t.Fatal(err)
	}
	getcap := func(what string) string {
		t.Helper()
		out, err := exec.Command("tpm2_getcap", "-T", "swtpm:host=127.0.0.1,port="+env.Spec[strings.LastIndex(env.Spec, ":")+1:], what).CombinedOutput()
		if err != nil {
			t.Fatalf("tpm2_getcap %s: %v\n%s", what, err, out)
		}
		return string(out)
	}
	env.CloseTPM()
	if nv := getcap("handles-nv-index"); !strings.Contains(nv, "0x1707600") || !strings.Contains(nv, "0x1707601") {
		t.Fatalf("before zeroize, tpm2_getcap handles-nv-index shows no provd index:\n%s", nv)
	}
	env.Reopen()
	ag = newAgent(t, env, dir)
	res, err := ag.Zeroize(ctx, api.ZeroizeOptions{SRK: true})
	if err != nil {
		t.Fatalf("zeroize: %v", err)
	}
	if !res.SRKEvicted || res.AuditLog == "" {
		t.Fatalf("result %+v", res)
	}
	ag.Close()
	env.CloseTPM()
	if nv := getcap("handles-nv-index"); strings.Contains(nv, "0x17076") {
		t.Errorf("after zeroize, provd NV indices remain:\n%s", nv)
	}
	if p := getcap("handles-persistent"); strings.Contains(p, "0x81000001") {
		t.Errorf("after zeroize --srk, the SRK remains:\n%s", p)
	}
	env.Reopen()
	blobs, _ := os.ReadDir(filepath.Join(dir, "blobs"))
	if len(blobs) != 0 {
		t.Errorf("blob files remain: %v", blobs)
	}
	if _, err := os.Stat(res.AuditLog); err != nil {
		t.Errorf("archived audit log: %v", err)
	}
	// Provisioning again works from scratch.
	ag = newAgent(t, env, dir)
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatalf("provision after zeroize: %v", err)
	}
}

// seal --policy-signer names the PK's own signer or is refused: a secret
// sealed to another signer could never be unsealed.
func TestSealSignerMustBeThePKs(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := ag.Seal(ctx, api.SealRequest{Data: []byte("x"), Signer: other.Public()}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("seal to a foreign signer under a PCR PK: %v", err)
	}
}

// An audited operation is refused, before it acts, when the audit trail
// cannot take its record (tampered): exit 14, and nothing was done.
func TestAuditedOperationRefusedOnTamperedTrail(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	ag.Close()
	logPath := filepath.Join(dir, "audit.log")
	b, _ := os.ReadFile(logPath)
	os.WriteFile(logPath, []byte(strings.Replace(string(b), `"provision"`, `"provisioN"`, 1)), 0o600)
	ag = newAgent(t, env, dir)
	_, err := ag.Seal(ctx, api.SealRequest{Data: []byte("x")})
	if !errors.Is(err, api.ErrTampered) {
		t.Fatalf("seal on a tampered trail: %v, want ErrTampered", err)
	}
	recs, err := ag.AuditRecords(context.Background())
	// The first record is the new trail's audit-anchor record.
	if !errors.Is(err, api.ErrTampered) || len(recs) != 2 || recs[0].Op != "audit-anchor" || recs[1].Op != "provisioN" {
		t.Fatalf("AuditRecords on a tampered trail: %d records, %v", len(recs), err)
	}
}
