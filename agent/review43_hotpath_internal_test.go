package agent

// Review 43: what SRKBack (c7a1802) costs on the hot paths, and whether
// it can deadlock.
//
// HELD: TestReview43HotPathCounts.
// Attack: none; a regression check, counted with swtpmtest.CommandLog. A
// warm daemon's sign stays 3 commands (PolicyPCR, PolicyAuthValue, Sign)
// and KeyPublic 0: SRKBack sends nothing without the mark. After O's own
// zeroize --srk and its own provision (PersistSRK clears the mark), a key
// create then a sign: the sign 3. After O's zeroize --srk and another
// process's provision: O's first operation (a refusal) costs one
// TPM2_ReadPublic (SRKBack clears the mark), the next none; the sign after
// a key create 3. While the mark stands (the state wiped, SRK evicted) a
// KeyPublic, which otherwise sends nothing, sends that one ReadPublic
// (logged: a wiped state has no key to serve; the mark also goes at the
// first operation that uses the SRK, whose transient copy clears it).
//
// HELD: TestReview43SRKBackNoDeadlock.
// Attack: concurrent clients of a daemon whose mark stands (O's zeroize
// --srk), with A1 slowing every TPM2_ReadPublic(0x81000001). Lock order
// read from the code: a.mu (lock, lockKeep) then srkMu (SRKBack) then the
// transport's counting.mu (Send); tpm.TPM.Send never takes srkMu for a
// ReadPublic (srkGone: only StartAuthSession, Load, Create, CreateLoaded,
// Import) and nothing under tpm/ calls back into the agent, so no path
// takes a.mu while srkMu is held. Exercised: 4 goroutines x 5 operations
// (refusal, status, KeyPublic, audit verify) finish within the timeout,
// under -race too.
import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

func TestReview43HotPathCounts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rc := api.WithCaller(ctx, api.Caller{UID: 1})
	want := func(what string, cmds []tpm2.TPMCC, n int) {
		t.Helper()
		t.Logf("%s: %d commands %v", what, len(cmds), cmds)
		if len(cmds) != n {
			t.Errorf("%s: %d commands, want %d: %v", what, len(cmds), n, cmds)
		}
	}
	count := func(b *swtpmtest.Bus, fn func() error) []tpm2.TPMCC {
		t.Helper()
		cmds, err := b.Commands(fn)
		if err != nil {
			t.Logf("(operation error: %v)", err)
		}
		return cmds
	}
	t.Run("warm", func(t *testing.T) {
		_, b, a, digest := review35WarmDaemon(t, false)
		sign := func() error { _, err := a.Sign(ctx, "k", digest, api.SignOptions{}); return err }
		want("warm daemon sign", count(b, sign), 3)
		want("warm daemon KeyPublic", count(b, func() error { _, _, err := a.KeyPublic(ctx, "k"); return err }), 0)
		want("warm daemon sign again", count(b, sign), 3)
	})
	t.Run("own-zeroize-own-provision", func(t *testing.T) {
		_, b, a, digest := review35WarmDaemon(t, false)
		if _, err := a.Zeroize(ctx, api.ZeroizeOptions{SRK: true}); err != nil {
			t.Fatal(err)
		}
		kp := count(b, func() error { _, _, err := a.KeyPublic(ctx, "k"); return err })
		t.Logf("KeyPublic while the mark stands: %d commands %v (%d ReadPublic)", len(kp), kp, swtpmtest.Count(kp, tpm2.TPMCCReadPublic))
		if _, err := a.Provision(ctx, review8Req()); err != nil {
			t.Fatal(err)
		}
		if _, err := a.CreateKey(ctx, review41KeyReq("k2")); err != nil {
			t.Fatal(err)
		}
		sign := func() error { _, err := a.Sign(ctx, "k2", digest, api.SignOptions{}); return err }
		count(b, sign)
		want("sign after own zeroize --srk and provision", count(b, sign), 3)
		want("KeyPublic after own zeroize --srk and provision", count(b, func() error { _, _, err := a.KeyPublic(ctx, "k2"); return err }), 0)
	})
	t.Run("own-zeroize-other-provision", func(t *testing.T) {
		_, bz, o, w, dir := review41Daemon(t)
		ptp, _ := review8Client(t, w)
		if _, err := o.Zeroize(ctx, api.ZeroizeOptions{SRK: true}); err != nil {
			t.Fatal(err)
		}
		review42OtherProvisions(t, o, ptp, dir)
		first := count(bz, func() error { return o.RecordRefusal(rc, "key-delete", "a") })
		second := count(bz, func() error { return o.RecordRefusal(rc, "key-delete", "b") })
		t.Logf("refusals: first %d commands (%d ReadPublic), second %d (%d ReadPublic)", len(first), swtpmtest.Count(first, tpm2.TPMCCReadPublic), len(second), swtpmtest.Count(second, tpm2.TPMCCReadPublic))
		if swtpmtest.Count(second, tpm2.TPMCCReadPublic) != 0 {
			t.Errorf("SRKBack still reads 0x81000001 after it cleared the mark: %v", second)
		}
		if _, err := o.CreateKey(ctx, review41KeyReq("k2")); err != nil {
			t.Fatal(err)
		}
		d := []byte("0123456789abcdef0123456789abcdef")
		sign := func() error { _, err := o.Sign(ctx, "k2", d, api.SignOptions{}); return err }
		count(bz, sign)
		want("sign after the other's provision", count(bz, sign), 3)
	})
}

func TestReview43SRKBackNoDeadlock(t *testing.T) {
	ctx := context.Background()
	_, bz, o, _, _ := review41Daemon(t)
	if _, err := o.Zeroize(ctx, api.ZeroizeOptions{SRK: true}); err != nil {
		t.Fatal(err)
	}
	bz.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		if review43IsSRKRead(cmd) {
			time.Sleep(10 * time.Millisecond)
		}
		return nil, nil, false
	})
	defer bz.Set(nil)
	rc := api.WithCaller(ctx, api.Caller{UID: 1})
	done := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5 {
				switch (g + i) % 4 {
				case 0:
					_ = o.RecordRefusal(rc, "key-delete", "x")
				case 1:
					_, _ = o.Status(ctx)
				case 2:
					_, _, _ = o.KeyPublic(ctx, "k")
				case 3:
					_, _ = o.AuditVerify(ctx)
				}
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(90 * time.Second):
		t.Fatal("deadlock: 20 operations under the mark did not finish in 90s")
	}
}
