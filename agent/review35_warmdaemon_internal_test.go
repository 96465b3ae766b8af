package agent

// Review 35: a warm daemon (KeepSession: the PK's saved context, a
// resident key, the kept shared session) whose SRK another program evicts
// while it runs (the threat model's row names that attacker), then
// requests in a row, with a TPM reset before the last two, exclusive and
// behind a resource manager.
//
// FLAW (failed before the mend): TestReview35WarmDaemonWithTheSRKEvictedMidLife —
// tpm.TPM caches the SRK at 0x81000001 for the connection's life
// (cachedSRK returns a persistent entry without reading the handle; a
// reset does not drop it), so after the eviction every session salted to
// it (StartAuthSession: TPM_RC_HANDLE), and every audit record, fails,
// until the daemon restarts; PersistSRK also returns the cached entry, so
// the PK's load does not heal it (the daemon loads the PK from its saved
// context anyway). Only the first sign (resident key, no salted session)
// works. Review 32 ran each operation in a new process, which reads the
// handle again.
//
// HELD: nothing is left loaded that the agent does not hold after each
// request (checked in the same test).
import (
	"context"
	"crypto/sha256"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

func TestReview35WarmDaemonWithTheSRKEvictedMidLife(t *testing.T) {
	for _, rm := range []bool{false, true} {
		t.Run(map[bool]string{false: "exclusive", true: "resource manager"}[rm], func(t *testing.T) {
			ctx := context.Background()
			env, b, a, digest := review35WarmDaemon(t, rm)
			// Another program evicts the SRK while the daemon runs (the
			// threat model's row names it); then requests in a row, with
			// a TPM reset before the last two.
			review31EvictSRK(t, env, b)
			steps := []struct {
				name string
				fn   func() error
			}{
				{"sign", func() error { _, err := a.Sign(ctx, "k", digest[:], api.SignOptions{}); return err }},
				{"seal (loads the PK)", func() error { _, err := a.Seal(ctx, api.SealRequest{Data: []byte("x")}); return err }},
				{"status", func() error { _, err := a.Status(ctx); return err }},
				{"key create", func() error {
					_, err := a.CreateKey(ctx, api.CreateRequest{Name: "k2", Type: "ecc-p256"})
					return err
				}},
				{"reset, then sign", func() error {
					env.Reset()
					_, err := a.Sign(ctx, "k", digest[:], api.SignOptions{})
					return err
				}},
				{"seal again", func() error { _, err := a.Seal(ctx, api.SealRequest{Data: []byte("y")}); return err }},
			}
			failed := 0
			for _, st := range steps {
				err := st.fn()
				t.Logf("%s: %v (SRK persisted %v)", st.name, err, review26SRKThere(env))
				if err != nil {
					failed++
				}
				review32Unheld(t, env, a, st.name)
			}
			if failed > 0 {
				t.Errorf("FLAW: %d of %d requests in a row failed in the running daemon after another program evicted the SRK "+
					"(a new process heals it: review 32); the daemon salts to the SRK it cached at 0x81000001 and never reads the handle again", failed, len(steps))
			}
		})
	}
}

// review35WarmDaemon is a warm daemon's agent (KeepSession: review32Steps)
// on a swtpm behind a bus (a resource manager's channel with rm),
// provisioned, with a signing key "k" made and used once: the PK's context
// saved, the key resident, the shared session kept. It returns the TPM,
// the bus, the agent and the digest signed.
func review35WarmDaemon(t *testing.T, rm bool) (*swtpmtest.Env, *swtpmtest.Bus, *Agent, []byte) {
	t.Helper()
	ctx := context.Background()
	env, b, a := review35Daemon(t, rm)
	if _, err := a.Provision(ctx, review8Req()); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("m"))
	if _, err := a.Sign(ctx, "k", digest[:], api.SignOptions{}); err != nil {
		t.Fatal(err)
	}
	return env, b, a, digest[:]
}

// review35Daemon is a daemon's agent (KeepSession: review32Steps) on a
// swtpm behind a bus (a resource manager's channel with rm), its state
// directory fresh: the TPM, the bus and the agent.
func review35Daemon(t *testing.T, rm bool) (*swtpmtest.Env, *swtpmtest.Bus, *Agent) {
	t.Helper()
	b := &swtpmtest.Bus{}
	opts := []swtpmtest.Option{swtpmtest.WithBus(b)}
	if rm {
		opts = append(opts, swtpmtest.WithResourceManager())
	}
	env := swtpmtest.Start(t, opts...)
	env.RequireSimulator()
	s := &review32Steps{t: t, env: env, b: b, dir: t.TempDir() + "/state", daemon: true}
	s.open()
	return env, b, s.a
}
