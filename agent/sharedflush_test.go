package agent_test

// A1 forging the flush of an operation's shared audit session (issue 14),
// from its adversarial reviews.

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// forgeSharedFlush is A1: it notes the audit session of the anchor's
// NV_Read (the shared session: the trail's open is the Share's first
// authenticated read) and answers that session's FlushContext with an
// error, after passing it on (pass: the TPM holds nothing more) or not
// (the session stays loaded).
func forgeSharedFlush(b *swtpmtest.Bus, pass bool) *bool {
	var shared tpm2.TPMHandle
	forged := new(bool)
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		switch swtpmtest.CommandCode(cmd) {
		case tpm2.TPMCCNVRead:
			if shared == 0 {
				shared = swtpmtest.LastSession(cmd, 2)
			}
		case tpm2.TPMCCFlushContext:
			if !*forged && shared != 0 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == shared {
				*forged = true
				if pass {
					if _, err := next.Send(cmd); err != nil {
						return nil, err, true
					}
				}
				return swtpmtest.ErrorAnswer(tpm2.TPMRCValue), nil, true
			}
		}
		return nil, nil, false
	})
	return forged
}

// lastResult is the result of the trail's last record of op.
func lastResult(t *testing.T, ag *agent.Agent, op string) string {
	t.Helper()
	recs, err := ag.AuditRecords(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var last string
	for _, r := range recs {
		if r.Op == op {
			last = r.Result
		}
	}
	return last
}

// A1 cannot make a one-shot `provd key delete` that deleted the key report
// a failure, nor have the TPM-anchored trail record one, by forging the
// error of the shared session's flush after the work (found by review:
// both happened; before sharing, the same forgery hit the anchor read's
// own session and refused the operation before it ran).
func TestForgedSharedFlushAfterKeyDelete(t *testing.T) {
	b := &swtpmtest.Bus{}
	env, first, dir := oneShot(t, b)
	ctx := context.Background()
	if _, err := first.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	ag := newAgent(t, env, dir) // a new process: its trail's open reads the anchor
	forged := forgeSharedFlush(b, true)
	err := ag.DeleteKey(ctx, "k")
	b.Set(nil)
	if !*forged {
		t.Fatal("the shared session's flush was not seen")
	}
	keys, lerr := ag.ListKeys(ctx)
	if lerr != nil {
		t.Fatal(lerr)
	}
	if last := lastResult(t, ag, "key-delete"); err != nil || len(keys) != 0 || last != "ok" {
		t.Errorf("DeleteKey: %v; keys now %v; the trail records %q; want it deleted, reported and recorded so", err, keys, last)
	}
}

// A1 answers with an error the flush that gives the shared session up
// when a one-shot seal's creation starts its policy session (TPM.Send), in
// the middle of the operation, after passing it on or dropping it (the
// session stays loaded). Either way the seal is done, reported and
// recorded ok, and nothing is left after the sweep.
func TestForgedSharedFlushInTheSeal(t *testing.T) {
	for _, pass := range []bool{true, false} {
		t.Run(map[bool]string{true: "flush passed on", false: "flush dropped"}[pass], func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env, ag, _ := oneShot(t, b)
			forged := forgeSharedFlush(b, pass)
			ctx := context.Background()
			blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("k"), PCRs: []int{7}})
			b.Set(nil)
			if !*forged {
				t.Fatal("the shared session's flush was not seen")
			}
			if err != nil {
				t.Fatalf("seal: %v", err)
			}
			if got, err := ag.Unseal(ctx, blob); err != nil || string(got) != "k" {
				t.Fatalf("unseal: %q %v", got, err)
			}
			if last := lastResult(t, ag, "seal"); last != "ok" {
				t.Errorf("the trail records the seal as %q", last)
			}
			if left, err := env.TPM.Leftovers(); err != nil || len(left) != 0 {
				t.Errorf("left after the operations: %v (%v)", left, err)
			}
		})
	}
}
