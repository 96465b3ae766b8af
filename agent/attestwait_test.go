package agent_test

import (
	"context"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// attest now (cli attestOnce, since 1534fd5) keeps one agent and its TPM
// open across the endpoint's round trip, between its operations. What it
// may hold across that wait: nothing loaded in the TPM, no session, and
// not the state's lock, after each attestation operation of a one-shot
// agent (the CLI's, no kept session): another process's operation on the
// same state (here a second agent) runs meanwhile.
func TestNothingHeldBetweenAttestOperations(t *testing.T) {
	env := swtpmtest.Start(t)
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	provision(t, ag, 7)
	ctx := context.Background()
	_, got := fleetFlow(t, env, ag, []byte("psk"), func(name string, fn func() error) {
		t.Helper()
		if err := fn(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if left, err := env.TPM.Leftovers(); err != nil || len(left) > 0 {
			t.Errorf("after %s, the TPM holds %x (%v) across the wait", name, left, err)
		}
		other := newAgent(t, env, dir)
		if _, err := other.Seal(ctx, api.SealRequest{Data: []byte("meanwhile"), PCRs: []int{7}}); err != nil {
			t.Errorf("another process's seal after %s, while the agent waits: %v", name, err)
		}
		other.Close()
	})
	if string(got) != "psk" {
		t.Fatalf("attest secret: %q", got)
	}
	if _, err := ag.PeerIdentity(ctx); err != nil {
		t.Fatal(err)
	}
	if left, err := env.TPM.Leftovers(); err != nil || len(left) > 0 {
		t.Errorf("after peer identity, the TPM holds %x (%v)", left, err)
	}
}
