package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// legacyGate creates a gate as provd did before gates had an authorization
// value: its blob is all it takes to use it.
func legacyGate(t *testing.T, tp *tpm.TPM) (tpm.Blob, []byte) {
	t.Helper()
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := tp.Create(srk, nil, tpm.GateTemplate(), tpm.Sensitive{})
	if err != nil {
		t.Fatal(err)
	}
	name, err := blob.Name()
	if err != nil {
		t.Fatal(err)
	}
	return blob, name.Buffer
}

// v1Anchor anchors a trail in a gated index through a gate without an
// authorization value, as provd did before.
type v1Anchor struct {
	t    *testing.T
	tp   *tpm.TPM
	blob tpm.Blob
}

func (an v1Anchor) Read() ([]byte, error) {
	v, err := an.tp.Anchor(AuditAnchorHandle).Read()
	if errors.Is(err, tpm.ErrNVUninitialized) {
		return nil, audit.ErrAnchorEmpty
	}
	return v, err
}

func (an v1Anchor) Extend(head []byte) error {
	srk, err := an.tp.SRK()
	if err != nil {
		return err
	}
	g, err := an.tp.LoadGate(srk, an.blob, nil)
	if err != nil {
		return err
	}
	defer an.tp.Flush(g.Handle)
	return an.tp.NVExtendGated(AuditAnchorHandle, head, g)
}

// A trail anchored through a version 1 gate (no authorization value) is
// verified against it, then moves to a new gate with one at its next record
// (an audit-anchor record says why); the old gate's blob extends nothing
// after that.
func TestV1AuditGateMovesToAnAuthorizedGate(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, &api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}})
	tp := env.TPM
	// Replace the trail with one of a provd from before authorization values.
	if a.audit != nil {
		if err := a.audit.Close(); err != nil {
			t.Fatal(err)
		}
		a.audit = nil
	}
	for _, f := range []string{a.auditPath(), filepath.Join(a.dir, gateFile)} {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	if err := tp.UndefineNV(AuditAnchorHandle); err != nil {
		t.Fatal(err)
	}
	blob, name := legacyGate(t, tp)
	pub, err := tpm.GatedExtendPublic(AuditAnchorHandle, name, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tp.DefineNV(pub); err != nil {
		t.Fatal(err)
	}
	v1, _ := json.Marshal(gateRecord{Version: 1, Handle: uint32(AuditAnchorHandle), Blob: hex.EncodeToString(blob.Marshal()),
		Name: hex.EncodeToString(name), SRK: hex.EncodeToString(tp.PinnedSRKName())})
	if err := store.WriteFile(filepath.Join(a.dir, gateFile), v1, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := audit.Open(a.auditPath(), audit.Options{Anchor: v1Anchor{t: t, tp: tp, blob: blob}})
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range []string{"provision", "seal"} {
		if err := l.Append(audit.Record{Op: op, Result: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AuditVerify(ctx); err != nil {
		t.Fatalf("the version 1 trail does not verify: %v", err)
	}

	if _, err := a.Seal(ctx, api.SealRequest{Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	g, err := a.trailAnchor().gate()
	if err != nil || g == nil || g.Version != gateVersion || len(g.Auth) != 2*tpm.GateAuthSize || g.Name == hex.EncodeToString(name) {
		t.Fatalf("audit.gate after the next record: %+v, %v", g, err)
	}
	if _, err := a.AuditVerify(ctx); err != nil {
		t.Fatal(err)
	}
	recs, err := audit.ReadRecords(a.auditPath())
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 4 || recs[2].Op != audit.OpAnchor || recs[2].Objects["reason"] != "moved from a gate without an authorization value" || recs[3].Op != "seal" {
		t.Fatalf("records after the move: %+v", recs)
	}
	if err := (v1Anchor{t: t, tp: tp, blob: blob}).Extend(make([]byte, 32)); err == nil {
		t.Fatal("the old gate's blob extends the new anchor")
	}
	if _, err := a.AuditVerify(ctx); err != nil {
		t.Fatal(err)
	}
}

// A PK record whose counter gate has no authorization value (the blob alone
// increments the counter) gets a new gate at the next install that moves the
// counter: the counter and its authorizer are defined again (same names, so
// signed policies still hold), the install goes through, and the old gate's
// blob increments nothing after that.
func TestCounterGateWithoutAuthValueIsReplaced(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	a := testAgent(t, env, &api.ProvisionRequest{TrustOnFirstUse: true, Signer: signer.Public()})
	tp := env.TPM
	cur, err := tp.PCRRead(tpm2.TPMAlgSHA256, []int{7})
	if err != nil {
		t.Fatal(err)
	}
	signed := func(v uint64) []byte {
		sp, err := SignPKPolicy(signer, policy.PCRValues{Bank: policy.BankSHA256, Values: cur}, v, "", true)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := sp.MarshalJSON()
		return b
	}
	c, err := tp.ReadCounter(PolicyCounterHandle)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.InstallPolicy(ctx, signed(c+1)); err != nil {
		t.Fatal(err)
	}
	blob, _ := legacyGate(t, tp)
	srk, _ := tp.SRK()
	lg, err := tp.LoadGate(srk, blob, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tp.DefineGatedCounter(PolicyCounterHandle, CounterAuthorizerHandle, lg); err != nil {
		t.Fatal(err)
	}
	if err := tp.Flush(lg.Handle); err != nil {
		t.Fatal(err)
	}
	if err := a.st.Update(ctx, func(tx *store.Tx) error {
		var st pkState
		if err := tx.Get(recPK, &st); err != nil {
			return err
		}
		st.CounterGate, st.CounterGateAuth = hex.EncodeToString(blob.Marshal()), ""
		return tx.Put(recPK, st)
	}); err != nil {
		t.Fatal(err)
	}
	legacy, err := tp.ReadCounter(PolicyCounterHandle)
	if err != nil {
		t.Fatal(err)
	}

	v := legacy + 2
	res, err := a.InstallPolicy(ctx, signed(v))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := tp.ReadCounter(PolicyCounterHandle); res.Counter != v || got != v || !res.Satisfied {
		t.Fatalf("install of version %d: %+v, the TPM's counter %d", v, res, got)
	}
	var st pkState
	if err := a.st.View(ctx, func(tx *store.Tx) error { return tx.Get(recPK, &st) }); err != nil {
		t.Fatal(err)
	}
	if len(st.CounterGateAuth) != 2*tpm.GateAuthSize || st.CounterGate == hex.EncodeToString(blob.Marshal()) {
		t.Fatalf("the PK record still has the old counter gate: %+v", st)
	}
	lg, err = tp.LoadGate(srk, blob, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Flush(lg.Handle)
	if err := tp.IncrementGated(PolicyCounterHandle, CounterAuthorizerHandle, lg, 1); err == nil {
		t.Fatal("the old counter gate increments the counter")
	}
	if _, err := a.Seal(ctx, api.SealRequest{Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
}
