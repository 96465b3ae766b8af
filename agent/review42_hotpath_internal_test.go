package agent

// Review 42: the hot paths after 6f609ae (evictSRKUnowed's witness,
// forgetStatePK, ErrStateChanged).
//
// HELD: TestReview42HotPathCounts.
// Attack: none; a regression check. The new code runs only where an
// operation persisted the SRK again (PersistMissingSRK reports it) or a
// commit is refused; a normal operation must send the TPM no command more.
// Counted with swtpmtest.CommandLog: a warm daemon's sign (3: PolicyPCR,
// PolicyAuthValue, Sign; TestKeptSessionWarmSign), a one-shot seal in
// TestReview7CommandCountsAsClaimed's setup (15), and a warm daemon's
// seal, unseal, key create and the sign after it, each compared with the
// count measured on the parent commit 6354172 (the production files of
// agent/ checked out from it, these tests unchanged). Held: the same
// counts on both: sign 3, one-shot seal 15, warm daemon seal 12, unseal
// 12, key create 12, the sign after it 3 (review42Before).
import (
	"context"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// review42Before is each count measured on 6354172.
var review42Before = map[string]int{
	"warm daemon sign":                3,
	"one-shot seal":                   15,
	"warm daemon seal":                12,
	"warm daemon unseal":              12,
	"warm daemon key create":          12,
	"warm daemon sign after a create": 3,
}

func review42Count(t *testing.T, b *swtpmtest.Bus, fn func() error) []tpm2.TPMCC {
	t.Helper()
	cmds, err := b.Commands(fn)
	if err != nil {
		t.Fatal(err)
	}
	return cmds
}

func TestReview42HotPathCounts(t *testing.T) {
	ctx := context.Background()
	check := func(what string, cmds []tpm2.TPMCC) {
		t.Helper()
		want := review42Before[what]
		t.Logf("%s: %d commands (%d on 6354172): %v", what, len(cmds), want, cmds)
		if want >= 0 && len(cmds) != want {
			t.Errorf("%s: %d commands, want %d as on 6354172: %v", what, len(cmds), want, cmds)
		}
	}
	t.Run("daemon", func(t *testing.T) {
		env, b, a, digest := review35WarmDaemon(t, false)
		_ = env
		sign := func() error { _, err := a.Sign(ctx, "k", digest, api.SignOptions{}); return err }
		check("warm daemon sign", review42Count(t, b, sign))
		var sealed []byte
		review42Count(t, b, func() (err error) { sealed, err = a.Seal(ctx, api.SealRequest{Data: []byte("s")}); return err })
		check("warm daemon seal", review42Count(t, b, func() (err error) { sealed, err = a.Seal(ctx, api.SealRequest{Data: []byte("s")}); return err }))
		review42Count(t, b, func() error { _, err := a.Unseal(ctx, sealed); return err })
		check("warm daemon unseal", review42Count(t, b, func() error { _, err := a.Unseal(ctx, sealed); return err }))
		check("warm daemon key create", review42Count(t, b, func() error { _, err := a.CreateKey(ctx, review41KeyReq("k2")); return err }))
		review42Count(t, b, sign)
		check("warm daemon sign after a create", review42Count(t, b, sign))
	})
	t.Run("one-shot", func(t *testing.T) {
		b := &swtpmtest.Bus{}
		env := swtpmtest.Start(t, swtpmtest.WithBus(b))
		dir := t.TempDir() + "/state"
		open := func() *Agent {
			a, err := New(Config{TPM: env.TPM, StateDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { a.Close() })
			return a
		}
		if _, err := open().Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
			t.Fatal(err)
		}
		if _, err := open().CreateKey(ctx, api.CreateRequest{Name: "sig", Type: "ecc-p256"}); err != nil {
			t.Fatal(err)
		}
		check("one-shot seal", review42Count(t, b, func() error {
			_, err := open().Seal(ctx, api.SealRequest{Data: []byte("s"), PCRs: []int{7}})
			return err
		}))
	})
}
