package agent_test

import (
	"context"
	"testing"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// Found by review of issue 14: the first Append after the log is opened
// compares with the open's anchor read instead of reading again. In the
// daemon the log is also opened by AuditReanchor (anchorTrail ends in
// openAudit) and stays open with no line until the next audited operation,
// hours later; A2 (owner hierarchy open) recreating the anchor with the same
// attributes in that window was not refused, and the trail then read as the
// log having been changed, so the officer's reanchor archived the genuine
// trail as tampered. Now the open's read stands for the anchor only within
// the operation that opened the log: the next audited operation reads the
// anchor, refuses, and keeps its record pending.
func TestAppendAfterReanchorReadsTheAnchor(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "a", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.AuditReanchor(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatalf("verify after reanchor: %v", err)
	}
	x := intruder{t, env.TPM}
	h := agent.AuditAnchorHandle
	x.redefine(h, x.sameAttributes(h))
	_, err := ag.CreateKey(ctx, api.CreateRequest{Name: "b", Type: "ecc-p256"})
	if err == nil || api.ExitCode(err) != api.ExitTampered {
		t.Fatalf("the audited operation after a recreated anchor: %v (exit %d), want it refused as tampered (exit %d)", err, api.ExitCode(err), api.ExitTampered)
	}
}
