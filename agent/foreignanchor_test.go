package agent_test

// Another state directory's audit anchor in the TPM (issue 14's review of
// provision over it, and the review of that fix): each way a state
// directory without a trail of its own could begin one over it, tried.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// A state directory that was zeroized completely (its anchor index removed,
// its trail archived as audit-<time>.log) is as unprovisioned as a new one.
// Another state directory then provisions on the TPM and holds the anchor.
// The zeroized directory's archive names the index it last anchored in,
// not the other state's: a provision without --force there is refused
// (found by the review: any archive made the index "its own leftover", and
// the provision silently ended the other trail).
func TestZeroizedStateLeavesAnotherStatesAnchor(t *testing.T) {
	env, dir1, _, ag2 := zeroizedBesideAnother(t)
	ctx := context.Background()
	// The zeroized first directory is provisioned again, without --force.
	ag1b := newAgent(t, env, dir1)
	_, perr := ag1b.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}})
	_, verr := ag2.AuditVerify(ctx)
	if perr == nil || verr != nil {
		t.Fatalf("provision without --force in a zeroized state directory over another state's live anchor: provision err=%v; "+
			"the other state's trail now: %v (want the provision refused and the other trail intact)", perr, verr)
	}
}

// The same through a daemon left running on the zeroized directory: a
// refusal of any local caller (A3, who cannot write the state directory)
// waits rather than begin a trail there over the other state's anchor.
func TestRefusalInZeroizedStateLeavesAnotherStatesAnchor(t *testing.T) {
	_, _, ag1, ag2 := zeroizedBesideAnother(t)
	ctx := context.Background()
	// The daemon still serving dir1 records a refused caller.
	_ = ag1.RecordRefusal(ctx, "key sign", "not permitted")
	if _, err := ag2.AuditVerify(ctx); err != nil {
		t.Fatalf("the other state's trail after a refusal recorded by a daemon on a zeroized state directory: %v", err)
	}
}

// A refusal recorded by a daemon on a fresh state directory waits in
// audit.pending; provision --force there then writes it into its new trail
// (found by the review: the pending record, written before provision ran,
// refused provision --force for ever with the error that advises it).
func TestPendingRefusalThenProvisionForce(t *testing.T) {
	env, _ := anotherStatesTrail(t)
	ctx := context.Background()
	ag2 := pendingRefusal(t, env)
	if _, err := ag2.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}, Force: true}); err != nil {
		t.Fatalf("provision --force in a fresh state directory whose daemon recorded a refusal: %v", err)
	}
	recs, err := ag2.AuditRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	late := false
	for _, r := range recs {
		if r.Op == "key sign" && r.Objects["recorded_late"] == "true" {
			late = true
		}
	}
	if !late {
		t.Errorf("the waiting refusal is not in the new trail: %+v", recs)
	}
}

// zeroize in a fresh state directory over another state's anchor is
// refused with nothing destroyed, and leaves no "zeroize-start" record
// waiting for a zeroize that never started (found by the review: it
// entered the next trail, late).
func TestZeroizeInFreshStateLeavesNothingPending(t *testing.T) {
	env, ag1 := anotherStatesTrail(t)
	ctx := context.Background()
	dir2 := stateDir(t)
	ag2 := newAgent(t, env, dir2)
	if _, err := ag2.Zeroize(ctx, api.ZeroizeOptions{}); err == nil {
		t.Fatal("zeroize in a fresh state directory over another's anchor acted")
	}
	if _, err := ag1.AuditVerify(ctx); err != nil {
		t.Fatalf("first trail: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir2, "audit.pending")); err == nil {
		t.Errorf("the refused zeroize left a pending record of a zeroize that never started:\n%s", b)
	}
	if _, err := ag2.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}, Force: true}); err != nil {
		t.Errorf("provision --force after the refused zeroize: %v", err)
	}
}

// provision --force in a fresh state directory whose first contact refuses
// the TPM (no --ek-ca, no trust on first use) replaces nothing: its failure
// record waits (found by the review: it began a trail over the other
// state's anchor, for a provision that did not happen).
func TestFailedForceProvisionLeavesTheOtherTrail(t *testing.T) {
	env, ag1 := anotherStatesTrail(t)
	ctx := context.Background()
	dir2 := stateDir(t)
	ag2 := newAgent(t, env, dir2)
	_, perr := ag2.Provision(ctx, api.ProvisionRequest{PCRs: []int{7}, Force: true}) // no EK trust
	if perr == nil {
		t.Fatal("provision without EK trust succeeded")
	}
	t.Logf("the failed provision: %v", perr)
	_, gerr := os.Stat(filepath.Join(dir2, "audit.gate"))
	if _, err := ag1.AuditVerify(ctx); err != nil {
		t.Errorf("a provision --force that failed (%v) ended the other state's trail: %v (a gate in the fresh directory: %v)", perr, err, gerr == nil)
	}
}

// audit reanchor in a state directory that has no trail at all (a new or
// mistaken --state-dir) is refused over another state's anchor (found by
// the review: it replaced it, through the command every tampered-trail
// message names).
func TestReanchorInFreshStateLeavesTheOtherTrail(t *testing.T) {
	env, ag1 := anotherStatesTrail(t)
	ctx := context.Background()
	dir2 := stateDir(t)
	ag2 := newAgent(t, env, dir2)
	res, rerr := ag2.AuditReanchor(ctx)
	if _, err := ag1.AuditVerify(ctx); err != nil {
		t.Errorf("audit reanchor in a state directory with no trail (result %+v, %v) ended another state's trail: %v", res.Record.Objects, rerr, err)
	}
}

// An archive planted in a fresh state directory (A4) names no anchor: a
// refusal recorded there still waits (found by the review: any file named
// audit-*.log disabled the guard).
func TestPlantedArchiveDoesNotDisableTheGuard(t *testing.T) {
	env, ag1 := anotherStatesTrail(t)
	ctx := context.Background()
	dir2 := stateDir(t)
	ag2 := newAgent(t, env, dir2)
	if err := os.WriteFile(filepath.Join(dir2, "audit-x.log"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A FIFO and a link to a device under the archives' names are not read
	// (neither would end).
	if err := syscall.Mkfifo(filepath.Join(dir2, "audit-fifo.log"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/zero", filepath.Join(dir2, "audit-zero.log")); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = ag2.RecordRefusal(ctx, "key sign", "not permitted")
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("a refusal in a directory with a FIFO planted as an archive did not return")
	}
	if _, err := ag1.AuditVerify(ctx); err != nil {
		t.Errorf("an empty planted audit-x.log let a refusal in a fresh directory end another state's trail: %v", err)
	}
}

// A pending record reaches a fresh state directory without anyone writing
// to it: a refusal a daemon on that directory records for any local caller
// (A3), or the failure record of a provision --force whose first contact
// refused the TPM. An officer's audit reanchor in that (new or mistaken)
// --state-dir is still refused over another state's anchor (found by the
// second review: the refusal was skipped when audit.pending existed).
func TestReanchorAfterPendingRefusalLeavesTheOtherTrail(t *testing.T) {
	env, ag1 := anotherStatesTrail(t)
	ctx := context.Background()
	ag2 := pendingRefusal(t, env)
	res, rerr := ag2.AuditReanchor(ctx)
	if _, err := ag1.AuditVerify(ctx); err != nil {
		t.Errorf("audit reanchor in a state directory with no trail but a pending refusal (result %v, err %v) ended another state's trail: %v",
			res.Record.Objects, rerr, err)
	}
}

// The same with the pending record of a provision --force that first
// contact refused (TestFailedForceProvisionLeavesTheOtherTrail's setup).
func TestReanchorAfterFailedForceProvisionLeavesTheOtherTrail(t *testing.T) {
	env, ag1 := anotherStatesTrail(t)
	ctx := context.Background()
	dir2 := stateDir(t)
	ag2 := newAgent(t, env, dir2)
	if _, err := ag2.Provision(ctx, api.ProvisionRequest{PCRs: []int{7}, Force: true}); err == nil { // no EK trust
		t.Fatal("provision without EK trust succeeded")
	}
	if _, err := ag1.AuditVerify(ctx); err != nil {
		t.Fatalf("setup: %v", err)
	}
	res, rerr := ag2.AuditReanchor(ctx)
	if _, err := ag1.AuditVerify(ctx); err != nil {
		t.Errorf("audit reanchor after a failed provision --force (result %v, err %v) ended another state's trail: %v",
			res.Record.Objects, rerr, err)
	}
}

// A provisioned state whose audit.log and audit.gate are gone (restored
// from a backup without them, or removed) while the TPM still holds its
// own anchor: the officer's audit reanchor moves the trail to a new anchor
// and records it (found by the second review: refused as "another state
// directory's" anchor, the way out left was provision --force, which
// destroys the PK and everything under it).
func TestReanchorOfProvisionedStateWithoutTrailFiles(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	provision(t, ag, 7)
	if err := ag.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"audit.log", "audit.gate"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	ag = newAgent(t, env, dir)
	res, err := ag.AuditReanchor(ctx)
	if err != nil {
		t.Errorf("audit reanchor of a provisioned state whose log and gate were removed is refused: %v", err)
	} else {
		t.Logf("reanchored: %v", res.Record.Objects)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Errorf("verify after the reanchor: %v", err)
	}
}

// With only audit.log deleted (audit.gate kept), the officer's reanchor
// records the missing log and moves the trail on.
func TestReanchorOfDeletedLog(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	provision(t, ag, 7)
	if err := ag.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "audit.log")); err != nil {
		t.Fatal(err)
	}
	ag = newAgent(t, env, dir)
	if _, err := ag.AuditVerify(ctx); err == nil {
		t.Error("verify of a deleted log passed")
	}
	res, err := ag.AuditReanchor(ctx)
	if err != nil || res.Record.Objects["log_missing"] != "true" {
		t.Fatalf("reanchor of a deleted log: %v %v", res.Record.Objects, err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Errorf("verify after the reanchor: %v", err)
	}
}

// A provision --force refused on its own request after first contact
// trusted the TPM (here a movable PK asked without a signed policy, refused
// before anything is made) leaves another state's anchor: only a provision
// that happened takes it over (found by the second review: its failure
// record began a trail over it).
func TestFailedForceProvisionAfterFirstContactLeavesTheOtherTrail(t *testing.T) {
	env, ag1 := anotherStatesTrail(t)
	ctx := context.Background()
	ag2 := newAgent(t, env, stateDir(t))
	_, perr := ag2.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}, Force: true,
		DuplicableBy: "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n"})
	if perr == nil {
		t.Fatal("setup: a movable PK without a signed policy was provisioned")
	}
	t.Logf("the failed provision: %v", perr)
	if _, err := ag1.AuditVerify(ctx); err != nil {
		t.Errorf("a provision --force refused on its request (%v) ended the other state's trail: %v", perr, err)
	}
}

// A fresh state directory (no trail, no PK) whose state lock another
// process holds (a CLI command running beside, past the lock's timeout):
// its state cannot be read, so reanchor is refused, not taken for a
// provisioned one's (found by the third review: it replaced another
// state's live anchor).
func TestReanchorOfUnreadableStateLeavesTheOtherTrail(t *testing.T) {
	t.Parallel()
	env, ag1 := anotherStatesTrail(t)
	ctx := context.Background()
	dir2 := stateDir(t)
	ag2 := newAgent(t, env, dir2)
	// Control: without the lock held, the guard refuses.
	if _, err := ag2.AuditReanchor(ctx); err == nil {
		t.Fatal("control: reanchor in a fresh state directory was not refused")
	}
	// Another process holds the state's lock (flock on <dir>/.lock).
	f, err := os.OpenFile(filepath.Join(dir2, store.LockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	res, rerr := ag2.AuditReanchor(ctx)
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	if _, err := ag1.AuditVerify(ctx); err != nil {
		t.Errorf("audit reanchor in a fresh state directory whose lock was held (result %+v, err %v) ended another state's trail: %v", res.Record.Objects, rerr, err)
	}
}

// The same through a canceled request context (a daemon's caller that gave
// up while its request waited for the agent's lock): store.lock's select
// picks the canceled context about half the time.
func TestReanchorWithCanceledContextLeavesTheOtherTrail(t *testing.T) {
	env, ag1 := anotherStatesTrail(t)
	ctx := context.Background()
	ag2 := newAgent(t, env, stateDir(t))
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	for i := range 30 {
		res, rerr := ag2.AuditReanchor(cctx)
		if rerr == nil || !errors.Is(rerr, api.ErrAlreadyProvisioned) {
			if _, err := ag1.AuditVerify(ctx); err != nil {
				t.Fatalf("try %d: audit reanchor with a canceled context in a fresh state directory (result %+v, err %v) ended another state's trail: %v", i, res.Record.Objects, rerr, err)
			}
		}
	}
}

// anotherStatesTrail starts a TPM and provisions a first state directory
// on it: the other state, whose trail the tests' state directories must
// leave intact.
func anotherStatesTrail(t *testing.T) (*swtpmtest.Env, *agent.Agent) {
	t.Helper()
	env := swtpmtest.Start(t)
	ag := newAgent(t, env, stateDir(t))
	provision(t, ag, 7)
	return env, ag
}

// pendingRefusal is a fresh state directory on env's TPM in which a daemon
// recorded a refused request (A3): the record waits in audit.pending, as
// the TPM's anchor is another state's.
func pendingRefusal(t *testing.T, env *swtpmtest.Env) *agent.Agent {
	t.Helper()
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	if err := ag.RecordRefusal(context.Background(), "key sign", "not permitted"); !errors.Is(err, api.ErrAlreadyProvisioned) {
		t.Fatalf("a refusal on a fresh state directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "audit.pending")); err != nil {
		t.Fatalf("no pending record: %v", err)
	}
	return ag
}

// zeroizedBesideAnother provisions a state directory (dir1, ag1) on a new
// TPM and zeroizes it completely (its anchor index removed, its trail
// archived); then a second state directory (ag2) provisions there and
// holds the anchor, with no --force needed: the handle was empty.
func zeroizedBesideAnother(t *testing.T) (env *swtpmtest.Env, dir1 string, ag1, ag2 *agent.Agent) {
	t.Helper()
	ctx := context.Background()
	env = swtpmtest.Start(t)
	dir1 = stateDir(t)
	ag1 = newAgent(t, env, dir1)
	provision(t, ag1, 7)
	if _, err := ag1.Zeroize(ctx, api.ZeroizeOptions{}); err != nil {
		t.Fatalf("zeroize: %v", err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir1, "audit-*.log")); len(m) == 0 {
		t.Fatal("zeroize archived no trail")
	}
	ag2 = newAgent(t, env, stateDir(t))
	provision(t, ag2, 7)
	if _, err := ag2.AuditVerify(ctx); err != nil {
		t.Fatal(err)
	}
	return env, dir1, ag1, ag2
}

// An index at the anchor's handle that was never extended anchors no trail
// (found by make reliability: a power cut during a new trail's
// NV_DefineSpace left the index defined and its gate unwritten, and the
// state directory refused its own next trail for good): a provision in a
// fresh state directory takes it without --force, records what it
// replaced, and its trail verifies. A written index is still refused
// (TestZeroizedStateLeavesAnotherStatesAnchor).
func TestUnwrittenIndexAnchorsNoTrail(t *testing.T) {
	env := swtpmtest.Start(t)
	srk, err := env.TPM.SRK()
	if err != nil {
		t.Fatal(err)
	}
	auth, err := tpm.NewGateAuth(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := env.TPM.CreateGate(srk, auth)
	if err != nil {
		t.Fatal(err)
	}
	gn, err := blob.Name()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := tpm.GatedExtendPublic(agent.AuditAnchorHandle, gn.Buffer, false)
	if err != nil {
		t.Fatal(err)
	}
	x, err := env.TPM.DefineNV(pub)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatalf("provision over an index never extended: %v", err)
	}
	rep, err := ag.AuditVerify(ctx)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	recs, err := ag.AuditRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) == 0 || recs[0].Objects["replaced_nv_name"] != hex.EncodeToString(x.Name.Buffer) {
		t.Fatalf("the new trail's first record does not name the index it replaced (%x): %+v (%d lines)", x.Name.Buffer, recs, rep.Lines)
	}
}
