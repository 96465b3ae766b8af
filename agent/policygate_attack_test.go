package agent_test

// Attacks on the policy counter's gate, proven in the operation's
// shared session (tpm.TPM.Share, keepShared, withSharedAuth) when a
// signed policy install moves the counter.

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// A1 renames the answer of the counter gate's load (TPM2_Load under the
// SRK's password: no HMAC on its handle) to an object of its own, noDA,
// in a policy install that moves the counter. The increment's gate proof
// is refused by the TPM and then told apart by the probe: forged (exit
// 15), not a wrong value; the counter unmoved. provd flushes the handle
// it was given (A1's), so the real counter gate, loaded by the TPM, is
// nobody's: the operation must ask for the sweep, or it stays loaded.
// The officer's retry on an honest bus installs the policy.
func TestCounterGateLoadRenamed(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ctx := context.Background()
	ag, signer, res := signedPolicyAgent(t, env)
	signed := signedPCR7(t, env, signer)
	before, err := env.TPM.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	decoy := swtpmtest.Decoy(t, b.Next)
	var mu sync.Mutex
	var realGate tpm2.TPMHandle
	increments := 0
	rename := swtpmtest.RenamedLoad(func(cmd []byte) bool { return swtpmtest.LastSession(cmd, 1) == tpm2.TPMRSPW }, decoy, &realGate)
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		cc := swtpmtest.CommandCode(cmd)
		if cc == tpm2.TPMCCNVIncrement {
			increments++
		}
		// The counter gate's load: under the SRK's password, the first
		// such load of the install (the audit gate's comes with the
		// record, after the increment).
		return rename(next, cmd)
	})
	v := *res.Counter + 1
	_, err = ag.InstallPolicy(ctx, signed(v))
	b.Set(nil)
	t.Logf("install with the counter gate's load renamed to A1's 0x%08x (the gate 0x%08x; increments sent %d): %v; exit %d",
		uint32(decoy), uint32(realGate), increments, err, api.ExitCode(err))
	if realGate == 0 {
		t.Fatal("not mounted")
	}
	if err == nil {
		t.Fatal("installed through a renamed gate")
	}
	if errors.Is(err, tpm.ErrBadAuth) || api.ExitCode(err) == api.ExitBadAuth {
		t.Errorf("a renamed gate reported as a wrong value (exit %d)", api.ExitCode(err))
	}
	if n, err := env.TPM.ReadCounter(agent.PolicyCounterHandle); err != nil || n != *res.Counter {
		t.Errorf("the counter at %d (%v), was %d", n, err, *res.Counter)
	}
	_, _ = (tpm2.FlushContext{FlushHandle: decoy}).Execute(b.Next)
	after, err := env.TPM.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	var added []tpm2.TPMHandle
	for _, h := range after {
		if !slices.Contains(before, h) {
			added = append(added, h)
		}
	}
	if slices.Contains(added, realGate) {
		t.Errorf("after the operation (and its sweep, if asked for) the real counter gate 0x%08x is still loaded, held by nobody (all new: %x)", uint32(realGate), added)
		_ = env.TPM.Flush(realGate)
	}
	if r, err := ag.InstallPolicy(ctx, signed(v)); err != nil || r.Counter != v {
		t.Fatalf("the officer's retry: %+v, %v", r, err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Errorf("audit verify: %v", err)
	}
}
