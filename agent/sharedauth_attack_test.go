package agent_test

// Attacks on the shared session's authorization roles (issue
// 14): the AK's quote and the audit record's gate proof authorized in the
// operation's shared session, seen from the agent.

import (
	"context"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// `attest now`: A1 passes the quote (authorized in the shared session by
// the AK's value) on and answers TPM_RC_RETRY; the resend is refused by
// the TPM (the session's nonce moved). No quote is returned, nothing is
// left, and the next attest works. The failure is A1's: it must not be
// reported as a wrong authorization value (exit 11, "counts against
// lockout"), which the state's AK value is not.
func TestAttestQuoteForgedRetry(t *testing.T) {
	q := startQuoteEnv(t)
	ctx := context.Background()
	nonce := sha256.Sum256([]byte("n"))
	req := api.AttestQuoteRequest{Nonce: nonce[:], PCRs: map[string][]int{"sha256": {0, 7}}}
	n := 0
	q.bus.Set(swtpmtest.RanThenAnswered(tpm2.TPMCCQuote, tpm2.TPMRCRetry, &n))
	_, err := q.ag.AttestQuote(ctx, req)
	q.bus.Set(nil)
	t.Logf("attest after a forged RETRY of the quote (sent %d): %v; exit %d", n, err, api.ExitCode(err))
	if err == nil {
		t.Fatal("a quote returned after a forged RETRY")
	}
	if errors.Is(err, tpm.ErrBadAuth) || api.ExitCode(err) == api.ExitBadAuth {
		t.Errorf("A1's forged RETRY reported as a wrong authorization value (exit %d): %v", api.ExitCode(err), err)
	}
	q.noLeftovers(t)
	res, err := q.ag.AttestQuote(ctx, req)
	if err != nil {
		t.Fatalf("the next attest: %v", err)
	}
	q.quoted(t, nonce[:], res)
}

// A one-shot operation's audit record proves its gate in the shared
// session; A1 passes the PolicySecret on and answers TPM_RC_RETRY. The
// record's proof fails; the trail's Append is tried once more
// (agent.record), in a session of its own (ReadPrepare), and succeeds: the
// seal succeeds, the trail verifies (the anchor extended once for the
// line), nothing is left, and the next operation records. Had it failed,
// the failure must not be a wrong authorization value.
func TestRecordProofForgedRetry(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	ctx := context.Background()
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	provision(t, ag, 7)
	ag.Close()
	ag = newAgent(t, env, dir) // one-shot: the trail opened afresh
	n := 0
	bus.Set(swtpmtest.RanThenAnswered(tpm2.TPMCCPolicySecret, tpm2.TPMRCRetry, &n))
	_, err := ag.Seal(ctx, api.SealRequest{Data: []byte("x"), PCRs: []int{7}})
	bus.Set(nil)
	t.Logf("seal, its record's PolicySecret answered a forged RETRY (sent %d): %v; exit %d", n, err, api.ExitCode(err))
	if n == 0 {
		t.Fatal("attack not mounted")
	}
	if err != nil && errors.Is(err, tpm.ErrBadAuth) || api.ExitCode(err) == api.ExitBadAuth {
		t.Errorf("A1's forged RETRY reported as a wrong authorization value (exit %d): %v", api.ExitCode(err), err)
	}
	if left, lerr := env.TPM.Leftovers(); lerr != nil || len(left) > 0 {
		t.Errorf("left in the TPM: %x %v", left, lerr)
	}
	ag.Close()
	ag = newAgent(t, env, dir)
	if _, err := ag.Seal(ctx, api.SealRequest{Data: []byte("y"), PCRs: []int{7}}); err != nil {
		t.Fatalf("the next seal: %v", err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Errorf("audit verify: %v", err)
	}
}
