package agent_test

import (
	"context"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// upTo is the codes before the first cc.
func upTo(cmds []tpm2.TPMCC, cc tpm2.TPMCC) []tpm2.TPMCC {
	if i := slices.Index(cmds, cc); i >= 0 {
		return cmds[:i]
	}
	return cmds
}

// A one-shot seal reads the audit anchor, loads the PK and reads the PCRs
// it seals to in one audit session (tpm.TPM.Share; issue 14: 18 commands,
// was 27; 22 before the gate was persistent, 20 before the spare), which
// stays started beside the creation's policy session (two sessions of the
// three: tpm.liveSessions) and authorizes the record's gate proof, made in
// the creation's policy session (tpm.PolicySession.Spare): two
// StartAuthSessions in all. The blob unseals.
func TestOneShotSealSharesOneAuditSession(t *testing.T) {
	b := &swtpmtest.Bus{}
	env, ag, _ := oneShot(t, b)
	log := &swtpmtest.CommandLog{}
	b.Set(log.Hook)
	log.Start()
	ctx := context.Background()
	blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("the disk key"), PCRs: []int{7, 16}, AllowResettable: true})
	cmds := log.Stop()
	b.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []tpm2.TPMCC{tpm2.TPMCCStartAuthSession, tpm2.TPMCCNVRead, tpm2.TPMCCLoad, tpm2.TPMCCPCRRead,
		tpm2.TPMCCStartAuthSession}
	if before := upTo(cmds, tpm2.TPMCCPolicyPCR); !slices.Equal(before, want) {
		t.Errorf("before the creation's policy: %v, want %v (one session for the reads and the load)", before, want)
	}
	// 18 in a new process, with the open's four (GetTestResult, two
	// GetCapability, the SRK's ReadPublic); the TPM is open here.
	if n, starts := len(cmds), swtpmtest.Count(cmds, tpm2.TPMCCStartAuthSession); n != 14 || starts != 2 {
		t.Errorf("a one-shot seal sent %d commands, %d StartAuthSessions, want 14 and 2: %v", n, starts, cmds)
	}
	got, err := ag.Unseal(ctx, blob)
	if err != nil || string(got) != "the disk key" {
		t.Fatalf("unseal: %q, %v", got, err)
	}
	if left, err := env.TPM.Leftovers(); err != nil || len(left) != 0 {
		t.Fatalf("left in the TPM: %v (%v)", left, err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatal(err)
	}
}

// between is the codes after the i-th cc (0: the first) up to the next cc.
func between(cmds []tpm2.TPMCC, cc tpm2.TPMCC, i int) []tpm2.TPMCC {
	for n := 0; ; n++ {
		j := slices.Index(cmds, cc)
		if j < 0 {
			return nil
		}
		cmds = cmds[j+1:]
		if n == i {
			return upTo(cmds, cc)
		}
	}
}

// Provision's record reads the trail's new anchor once (the trail's open
// after its first record, which reads it no more: issue 14), in the one
// audit session the operation shares (tpm.TPM.Share spans the record: a
// session fewer), started before the first extend and kept beside its
// policy session; the record proves the gate, still loaded, again in the
// first extend's policy session, authorized in the shared one (gateKeep:
// no load, no session started or flushed between the two extends). The
// trail verifies and nothing is left.
func TestProvisionRecordSharesTheAuditSession(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ag := newAgent(t, env, stateDir(t))
	log := &swtpmtest.CommandLog{}
	b.Set(log.Hook)
	log.Start()
	provision(t, ag, 7)
	cmds := log.Stop()
	b.Set(nil)
	// The anchor's first extend (the trail's first record, in the
	// operation) and the provision's record (after it).
	if n := swtpmtest.Count(cmds, tpm2.TPMCCNVExtend); n != 2 {
		t.Fatalf("%d NV_Extends, want 2: %v", n, cmds)
	}
	record := upTo(between(cmds, tpm2.TPMCCNVExtend, 0), tpm2.TPMCCPolicySecret)
	// In the shared session (still started) the read; the gate is still
	// loaded, and the first extend's policy session goes on to this one
	// (gateKeep: no load, no session started or flushed between).
	want := []tpm2.TPMCC{tpm2.TPMCCNVRead}
	if !slices.Equal(record, want) {
		t.Errorf("the record's commands before its PolicySecret: %v, want %v (one read, in the shared session)", record, want)
	}
	if left, err := env.TPM.Leftovers(); err != nil || len(left) != 0 {
		t.Fatalf("left in the TPM: %v (%v)", left, err)
	}
	if _, err := ag.AuditVerify(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// Provision in a fresh state directory over another state's anchor (the
// benchmark's "provision again", --force) sends each read once (issue 14):
// the persistent SRK's public once (first contact saw it there: no second
// read when it is pinned), the old anchor's public once (its value read
// and the index removed by that read's name), the new anchor's not at all
// (defined by its name, which the first extend's proof binds: the TPM
// refuses an extend of any other index), and the anchor's value once after
// the trail's first record. Every secret of the PK's and the gate's
// creation is encrypted by the shared session: three StartAuthSessions (the
// EK-salted one of first contact, the shared one, the policy session the
// two records' extends go through one after the other: gateKeep). The
// trail verifies and nothing is left.
func TestProvisionForceReadsOnce(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	first := newAgent(t, env, stateDir(t))
	ctx := context.Background()
	req := api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}
	if _, err := first.Provision(ctx, req); err != nil {
		t.Fatal(err)
	}
	first.Close()
	ag := newAgent(t, env, stateDir(t))
	log := &swtpmtest.CommandLog{}
	b.Set(log.Hook)
	log.Start()
	req.Force = true
	_, err := ag.Provision(ctx, req)
	cmds := log.Stop()
	b.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	for cc, want := range map[tpm2.TPMCC]int{
		// The EK, the SRK, what is at the gate's persistent handle, and
		// the SRK again as the state commits (tpm.PersistSRKAgain: found
		// by review 40, another process's eviction while it ran).
		tpm2.TPMCCReadPublic:       4,
		tpm2.TPMCCNVReadPublic:     2, // the EK certificate's index, the old anchor
		tpm2.TPMCCNVRead:           3, // the certificate, the old anchor, the new one
		tpm2.TPMCCStartAuthSession: 3,
		tpm2.TPMCCLoad:             1, // the gate, once, to make it persistent for both records
		tpm2.TPMCCEvictControl:     2, // the old trail's gate out, the new one in
		tpm2.TPMCCNVExtend:         2,
	} {
		if n := swtpmtest.Count(cmds, cc); n != want {
			t.Errorf("%d of command 0x%x, want %d: %v", n, uint32(cc), want, cmds)
		}
	}
	if left, err := env.TPM.Leftovers(); err != nil || len(left) != 0 {
		t.Fatalf("left in the TPM: %v (%v)", left, err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatal(err)
	}
}
