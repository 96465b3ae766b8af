package agent_test

import (
	"context"
	"testing"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// provision --force in a process of its own (a one-shot agent on a
// provisioned state: the kill test's last step, which failed at e018d8a
// with this): its zeroize record is written in the operation's shared
// audit session, which e018d8a keeps started beside the zeroize's witness
// session; the zeroize then flushes every transient object and session it
// does not hold (zeroizeTPMAndState: the gate's alone is spared), the
// shared session with them; the provision's PCR read in the shared session
// meets TPM_RC_REFERENCE_S0, after the old PK is destroyed. What must
// hold: provision --force succeeds, and seal and unseal work after it.
func TestForceProvisionInAFreshProcess(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	dir := stateDir(t)
	req := api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}
	ag := newAgent(t, env, dir)
	if _, err := ag.Provision(ctx, req); err != nil {
		t.Fatal(err)
	}
	if err := ag.Close(); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		req.Force = true
		if _, err := ag.Provision(ctx, req); err != nil {
			st, serr := ag.Status(ctx)
			t.Errorf("provision --force %d in a fresh process: %v (exit %d); after it, provisioned: %v (%v)", i+1, err, api.ExitCode(err), st.Provisioned, serr)
		} else if blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("after")}); err != nil {
			t.Errorf("seal after provision --force %d: %v", i+1, err)
		} else if got, err := ag.Unseal(ctx, blob); err != nil || string(got) != "after" {
			t.Errorf("unseal after provision --force %d: %q %v", i+1, got, err)
		}
		if err := ag.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// provd zeroize in a process of its own, on a provisioned state with a
// trail: it reports success and leaves nothing loaded (the same flush of
// every handle it does not hold, inside the operation's Share).
func TestZeroizeInAFreshProcess(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	provision(t, ag, 7)
	if _, err := ag.Seal(ctx, api.SealRequest{Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if err := ag.Close(); err != nil {
		t.Fatal(err)
	}
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Close()
	res, err := ag.Zeroize(ctx, api.ZeroizeOptions{})
	t.Logf("zeroize: %+v", res)
	if err != nil {
		t.Errorf("zeroize in a fresh process: %v (exit %d)", err, api.ExitCode(err))
	}
}
