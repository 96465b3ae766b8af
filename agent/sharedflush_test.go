package agent_test

// A1 forging the flush of an operation's shared audit session (issue 14)
// after the operation's work, from its adversarial review.

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
// error after passing it on (so the TPM holds nothing more).
func forgeSharedFlush(b *swtpmtest.Bus) *bool {
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
				if _, err := next.Send(cmd); err != nil {
					return nil, err, true
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
	forged := forgeSharedFlush(b)
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

// The same for a one-shot `key create`, whose shared session is flushed
// when the creation's policy session starts (TPM.Send), in the middle of
// the operation: the forged error there fails nothing either, and the key
// is created, reported and recorded so.
func TestForgedSharedFlushAfterKeyCreate(t *testing.T) {
	b := &swtpmtest.Bus{}
	_, ag, _ := oneShot(t, b)
	ctx := context.Background()
	forged := forgeSharedFlush(b)
	_, err := ag.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"})
	b.Set(nil)
	if !*forged {
		t.Fatal("the shared session's flush was not seen")
	}
	keys, lerr := ag.ListKeys(ctx)
	if lerr != nil {
		t.Fatal(lerr)
	}
	if last := lastResult(t, ag, "key-create"); err != nil || len(keys) != 1 || last != "ok" {
		t.Errorf("CreateKey: %v; keys now %v; the trail records %q; want it created, reported and recorded so", err, keys, last)
	}
	if _, err := ag.Sign(ctx, "k", make([]byte, 32), api.SignOptions{}); err != nil {
		t.Errorf("sign with the key: %v", err)
	}
}
