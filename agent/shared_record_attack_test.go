package agent_test

// Attacks on issue 14's shared audit session (from its adversarial
// review): attest quote's read-then-quote in it, and the session spanning
// the audit record.

import (
	"bytes"
	"context"
	"crypto/sha256"
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

// TestAttestQuoteRetriesUnderSessionLimit: the read-quote loop's
// three rounds (a PCR moving between each read and its quote), each round
// starting the shared session again after the quote's session gave it up,
// behind the resource manager's three sessions per connection: no
// refusal for want of a slot, evidence the endpoint accepts, nothing left.
func TestAttestQuoteRetriesUnderSessionLimit(t *testing.T) {
	l := &swtpmtest.SessionLimit{}
	q := startQuoteEnv(t, swtpmtest.WithWrap(l.Wrap))
	ctx := context.Background()
	nonce := sha256.Sum256([]byte("the endpoint's nonce"))
	req := api.AttestQuoteRequest{Nonce: nonce[:], PCRs: map[string][]int{"sha256": {0, 1, 2, 3, 4, 5, 6, 16, 23}}}
	m := &pcrMover{afterRead: 2}
	q.bus.Set(m.hook)
	l.Take()
	res, err := q.ag.AttestQuote(ctx, req)
	refused, cmds := l.Take()
	q.bus.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	if quotes, _, _ := m.counts(); quotes != 3 {
		t.Fatalf("%d quotes, want 3", quotes)
	}
	if refused > 0 {
		t.Errorf("%d refusals for want of a slot: %v", refused, cmds)
	}
	q.quoted(t, nonce[:], res)
	q.noLeftovers(t)
}

// TestAttestQuoteForgedSharedFlushes: A1 answers every flush of an
// HMAC session (the shared audit session given up before each quote's
// session, and at the end) with an error, passing it on or not, through
// a quote that retries twice. provd either sends evidence the endpoint
// accepts or fails; nothing is left after the operation (its sweep); the
// next quote on an honest bus works.
func TestAttestQuoteForgedSharedFlushes(t *testing.T) {
	q := startQuoteEnv(t)
	ctx := context.Background()
	nonce := sha256.Sum256([]byte("the endpoint's nonce"))
	req := api.AttestQuoteRequest{Nonce: nonce[:], PCRs: map[string][]int{"sha256": {0, 1, 2, 3, 4, 5, 6, 16, 23}}}
	for _, pass := range []bool{true, false} {
		for _, rc := range []tpm2.TPMRC{0x18b /* TPM_RC_HANDLE: "already flushed" */, 0x9a2 /* TPM_RC_BAD_AUTH, session 1 */} {
			m := &pcrMover{afterRead: 2}
			var mu sync.Mutex
			forged := 0
			q.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if swtpmtest.CommandCode(cmd) == tpm2.TPMCCFlushContext && len(cmd) >= 14 && cmd[10] == 0x02 {
					mu.Lock()
					forged++
					mu.Unlock()
					if pass {
						_, _ = next.Send(cmd)
					}
					return swtpmtest.ErrorAnswer(rc), nil, true
				}
				return m.hook(next, cmd)
			})
			res, err := q.ag.AttestQuote(ctx, req)
			q.bus.Set(nil)
			t.Logf("passed on %v, rc %#x: %d flushes forged: %v", pass, rc, forged, err)
			if err == nil {
				q.quoted(t, nonce[:], res)
			}
			// A1 that drops every flush drops the sweep's too (a flush
			// has no session, and TPM_RC_HANDLE reads as "already
			// flushed"): what it left is swept after the next operation
			// that fails for it, once A1 is gone.
			for i := 0; ; i++ {
				res, err := q.ag.AttestQuote(ctx, req)
				if err == nil {
					q.quoted(t, nonce[:], res)
					break
				}
				t.Logf("honest quote %d after A1: %v", i+1, err)
				if i == 1 {
					t.Fatalf("still failing after A1 left")
				}
			}
			q.noLeftovers(t)
		}
	}
}

// TestAttestQuoteReplayedRead: A1 answers a round's PCR_Read with
// the answer the TPM gave the first round's (the values before the move),
// so that the values sent are the old ones while the quote is of the new:
// the shared session's nonces moved, so the HMAC fails; the quote is never
// sent with values it does not vouch for.
func TestAttestQuoteReplayedRead(t *testing.T) {
	q := startQuoteEnv(t)
	ctx := context.Background()
	nonce := sha256.Sum256([]byte("the endpoint's nonce"))
	req := api.AttestQuoteRequest{Nonce: nonce[:], PCRs: map[string][]int{"sha256": {7, 23}}}
	m := &pcrMover{afterRead: 1}
	var mu sync.Mutex
	var first []byte
	reads := 0
	q.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCPCRRead {
			return m.hook(next, cmd)
		}
		rsp, err, _ := m.hook(next, cmd)
		mu.Lock()
		defer mu.Unlock()
		reads++
		if reads == 1 {
			first = bytes.Clone(rsp)
		} else if first != nil && err == nil {
			return first, nil, true
		}
		return rsp, err, true
	})
	res, err := q.ag.AttestQuote(ctx, req)
	q.bus.Set(nil)
	if err == nil {
		q.quoted(t, nonce[:], res)
		t.Errorf("evidence sent with a replayed read")
	} else if !errors.Is(err, tpm.ErrResponseForged) {
		t.Errorf("refused, not as forged: %v", err)
	}
	q.noLeftovers(t)
}

// sealAfterCreate is what ag's seal sends after its TPM2_Create, logged
// behind b.
func sealAfterCreate(t *testing.T, b *swtpmtest.Bus, ag *agent.Agent) []tpm2.TPMCC {
	t.Helper()
	log := &swtpmtest.CommandLog{}
	b.Set(log.Hook)
	log.Start()
	_, err := ag.Seal(context.Background(), api.SealRequest{Data: []byte("count")})
	cmds := log.Stop()
	b.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	created := slices.Index(cmds, tpm2.TPMCCCreate)
	if created < 0 {
		t.Fatalf("no TPM2_Create in %v", cmds)
	}
	return cmds[created+1:]
}

// sealAcrossReset seals with ag while a silent TPM reset (swtpm's
// TPM_Init; the connection survives) comes before the k-th command (from
// 0) after the seal's TPM2_Create, and checks what a done seal must leave:
// a success, a blob that unseals, nothing in the TPM, a trail that
// verifies.
func sealAcrossReset(t *testing.T, env *swtpmtest.Env, b *swtpmtest.Bus, ag *agent.Agent, k int, before tpm2.TPMCC) {
	t.Helper()
	ctx := context.Background()
	var mu sync.Mutex
	seen, fired := -1, false // below 0: nothing counts before the Create
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		if seen < 0 {
			if swtpmtest.CommandCode(cmd) == tpm2.TPMCCCreate {
				seen = 0
			}
			return nil, nil, false
		}
		if !fired && seen == k {
			fired = true
			env.Reset()
		}
		seen++
		return nil, nil, false
	})
	blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("across a reset")})
	b.Set(nil)
	if !fired {
		t.Fatalf("k=%d: no reset", k)
	}
	if err != nil {
		t.Errorf("k=%d (reset before %v): the seal, done, reported: exit %d: %v", k, before, api.ExitCode(err), err)
	} else if got, err := ag.Unseal(ctx, blob); err != nil || string(got) != "across a reset" {
		t.Errorf("k=%d: unseal: %q %v", k, got, err)
	}
	if left, err := env.TPM.Leftovers(); err != nil || len(left) > 0 {
		t.Errorf("k=%d: left %v %v", k, left, err)
		for _, h := range left {
			_ = env.TPM.Flush(h)
		}
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Errorf("k=%d: audit verify: %v", k, err)
	}
}

// A silent TPM reset before each command a daemon's seal sends after its
// TPM2_Create (the operation's work is done: what follows is its policy
// session's flush and its record, which since issue 14 runs in the
// operation's shared audit session): the seal is a success, recorded once
// or pending, the blob unseals, the trail verifies, nothing is left.
func TestResetBetweenOpAndRecord(t *testing.T) {
	b := &swtpmtest.Bus{}
	env, ag, _ := provisionedBehind(t, b)
	if _, err := ag.Seal(context.Background(), api.SealRequest{Data: []byte("warm")}); err != nil {
		t.Fatal(err)
	}
	after := sealAfterCreate(t, b, ag)
	for k, cc := range after {
		sealAcrossReset(t, env, b, ag, k, cc)
	}
}

// TestResetBetweenOpAndRecordOneShot is TestResetBetweenOpAndRecord for a
// new process's first operation (its trail's open read in the shared
// session before the operation, its record's extend reusing that read):
// a fresh one for each reset point.
func TestResetBetweenOpAndRecordOneShot(t *testing.T) {
	t.Parallel()
	b0 := &swtpmtest.Bus{}
	_, ag0, _ := oneShot(t, b0)
	after := sealAfterCreate(t, b0, ag0)
	for k, cc := range after {
		b := &swtpmtest.Bus{}
		env, ag, _ := oneShot(t, b)
		env.RequireSimulator()
		sealAcrossReset(t, env, b, ag, k, cc)
	}
}
