package agent

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// srkCopyLeft fails t when a transient object is loaded between the
// agent's operations (the SRK's transient copy is flushed when each ends).
func srkCopyLeft(t *testing.T, env *swtpmtest.Env, after string) {
	t.Helper()
	if hs, err := env.TPM.Handles(tpm.TransientHandles); err != nil || len(hs) != 0 {
		t.Errorf("after %s: transient objects left loaded: %v (%v)", after, hs, err)
	}
}

// After zeroize --srk, no operation of the agent that zeroized (the
// daemon's: its connection still pins the SRK) puts the SRK back at
// 0x81000001, reads and refusals alike, whether zeroize finished or its
// record waits: an operation that needs the SRK uses a transient copy and
// flushes it when it ends (found by review 30: a role-less caller's
// refused request began a new trail whose gate SRK persisted the SRK
// under; review 27 noted the agent's ReadPCRs would have). Provision
// persists it again.
func TestNothingButProvisionPutsTheEvictedSRKBack(t *testing.T) {
	t.Parallel()
	bank, err := policy.ParseBank("sha256")
	if err != nil {
		t.Fatal(err)
	}
	for _, complete := range []bool{true, false} {
		t.Run(review27Case(complete), func(t *testing.T) {
			env, a := review27Evicted(t, complete)
			ctx := api.WithCaller(context.Background(), api.Caller{UID: 4242})
			for _, op := range []struct {
				name string
				run  func() error
			}{
				{"pcr read", func() error { _, _, err := a.ReadPCRs(ctx, bank, []int{7, 16}); return err }},
				{"a refused request", func() error { return a.RecordRefusal(ctx, "key-delete", "no role") }},
				{"status", func() error { _, err := a.Status(ctx); return err }},
				{"audit verify", func() error { _, err := a.AuditVerify(ctx); return err }},
				{"audit records", func() error { _, err := a.AuditRecords(ctx); return err }},
				{"policy show", func() error { _, err := a.ShowPolicy(ctx); return err }},
				{"key list", func() error { _, err := a.ListKeys(ctx); return err }},
				{"tpm info", func() error { _, err := a.TPMInfo(ctx); return err }},
				{"peer identity", func() error { _, err := a.PeerIdentity(ctx); return err }},
				{"attest identity", func() error { _, err := a.AttestIdentity(ctx); return err }},
				{"seal", func() error { _, err := a.Seal(ctx, api.SealRequest{Data: []byte("x")}); return err }},
				{"key create", func() error { _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"}); return err }},
				{"audit repair", func() error { _, err := a.AuditRepair(ctx, false); return err }},
				{"audit reanchor", func() error { _, err := a.AuditReanchor(ctx); return err }},
				{"zeroize", func() error { _, err := a.Zeroize(ctx, api.ZeroizeOptions{}); return err }},
				{"a refused request after zeroize again", func() error { return a.RecordRefusal(ctx, "key-delete", "no role") }},
			} {
				err := op.run()
				t.Logf("%s: %v", op.name, err)
				if review26SRKThere(env) {
					t.Fatalf("%s put the SRK zeroize --srk evicted back at 0x%08x", op.name, uint32(tpm.SRKHandle))
				}
				srkCopyLeft(t, env, op.name)
			}
			if _, err := a.Provision(ctx, review8Req()); err != nil {
				t.Fatalf("provision after zeroize --srk: %v", err)
			}
			if !review26SRKThere(env) {
				t.Errorf("provision did not persist the SRK")
			}
			srkCopyLeft(t, env, "provision")
		})
	}
}

// A provisioned state whose SRK another program evicted (not zeroize,
// which destroys the PK first) keeps working: the PK's load persists the
// SRK again, as provision made it (tpm.PersistSRK); a refused request
// before that, which needs no PK, persists nothing.
func TestProvisionedStateHealsAnEvictedSRK(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	a := review8Agent(t, env.TPM, t.TempDir()+"/state")
	if _, err := a.Provision(ctx, review8Req()); err != nil {
		t.Fatal(err)
	}
	srk, err := env.TPM.ReadPublic(tpm.SRKHandle)
	if err != nil {
		t.Fatal(err)
	}
	evict := func() {
		t.Helper()
		if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: srk.Named(), PersistentHandle: tpm.SRKHandle}).Execute(b.Next); err != nil {
			t.Fatal(err)
		}
	}
	dir := a.dir
	// A process started after the eviction (one holding the SRK it
	// checked at its open meets the empty handle in its next command).
	reopen := func() {
		t.Helper()
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		env.Reopen()
		a = review8Agent(t, env.TPM, dir)
	}
	evict()
	reopen()
	if err := a.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 4242}), "key-delete", "no role"); err != nil {
		t.Fatalf("a refused request's record with the SRK evicted: %v", err)
	}
	if review26SRKThere(env) {
		t.Errorf("a refused request persisted the SRK")
	}
	srkCopyLeft(t, env, "the refusal")
	blob, err := a.Seal(ctx, api.SealRequest{Data: []byte("after the eviction")})
	if err != nil {
		t.Fatalf("seal with the SRK evicted: %v", err)
	}
	if !review26SRKThere(env) {
		t.Errorf("the PK's load did not persist the SRK again")
	}
	srkCopyLeft(t, env, "the seal")
	evict()
	reopen()
	if got, err := a.Unseal(ctx, blob); err != nil || string(got) != "after the eviction" {
		t.Fatalf("unseal with the SRK evicted: %q, %v", got, err)
	}
	if !review26SRKThere(env) {
		t.Errorf("the unseal's PK load did not persist the SRK again")
	}
	srkCopyLeft(t, env, "the unseal")
}

// Attestation on a state with no PK (never provisioned, or zeroized) is
// not provisioned (exit 13, run provision), not a provisioned state that
// pins no identity (exit 15, run provision --force), as it said before.
func TestAttestIdentityOnAStateWithNoPK(t *testing.T) {
	ctx := context.Background()
	env := swtpmtest.Start(t)
	a := review8Agent(t, env.TPM, t.TempDir()+"/state")
	check := func(when string) {
		t.Helper()
		_, err := a.AttestIdentity(ctx)
		if !errors.Is(err, api.ErrNotProvisioned) || api.ExitCode(err) != api.ExitNotProvisioned {
			t.Errorf("attest identity %s: %v (exit %d), want not provisioned (exit %d)", when, err, api.ExitCode(err), api.ExitNotProvisioned)
		}
	}
	check("on a fresh state")
	if _, err := a.Provision(ctx, review8Req()); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Zeroize(ctx, api.ZeroizeOptions{}); err != nil {
		t.Fatal(err)
	}
	check("after zeroize")
}
