package agent

// Review 32: the SRK's transient copy (tpm.TransientSRKOnly, 94f2f93,
// 83622cb, ab759d5).
//
// FLAW (failed before the mend): none in this file.
//
// HELD: TestReview32KeyOperationsWithTheSRKEvicted: key create, sign,
// derive, HMAC, ECDH, decrypt, KEK import, export and import, seal and
// unseal, each in a new process (one-shot, and a daemon started again with
// KeepSession) after another program evicted the SRK of a provisioned
// state: each works, and nothing is left loaded that the agent does not
// hold.
import (
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review32Unheld fails t when a transient object is loaded that the agent
// does not hold (its cache's resident keys, its kept gate) after an
// operation.
func review32Unheld(t *testing.T, env *swtpmtest.Env, a *Agent, after string) {
	t.Helper()
	hs, err := env.TPM.Handles(tpm.TransientHandles)
	if err != nil {
		t.Fatal(err)
	}
	held := map[tpm2.TPMHandle]bool{}
	for _, h := range a.heldHandles() {
		held[h] = true
	}
	if c := a.t.TransientSRK(); c != 0 {
		t.Errorf("after %s: the agent still holds the SRK's transient copy 0x%08x", after, uint32(c))
	}
	for _, h := range hs {
		if !held[h] || h == a.t.TransientSRK() {
			t.Errorf("after %s: transient object 0x%08x left loaded, held by nobody (loaded: %x)", after, uint32(h), hs)
		}
	}
}

// review32Steps runs each op in a new process started after another
// program evicted the SRK (daemon: a daemon started again, KeepSession).
type review32Steps struct {
	t      *testing.T
	env    *swtpmtest.Env
	b      *swtpmtest.Bus
	dir    string
	daemon bool
	a      *Agent
}

func (s *review32Steps) open() {
	s.t.Helper()
	a, err := New(Config{TPM: s.env.TPM, StateDir: s.dir, KeepSession: s.daemon})
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { a.Close() })
	s.a = a
}

func (s *review32Steps) step(name string, fn func(a *Agent) error) error {
	t := s.t
	t.Helper()
	review31EvictSRK(t, s.env, s.b)
	if err := s.a.Close(); err != nil {
		t.Fatal(err)
	}
	s.env.Reopen()
	s.open()
	err := fn(s.a)
	t.Logf("%s with the SRK evicted: %v (SRK persisted again: %v)", name, err, review26SRKThere(s.env))
	if err != nil {
		t.Errorf("%s in a provisioned state whose SRK another program evicted: %v", name, err)
	}
	review32Unheld(t, s.env, s.a, name)
	return err
}

func review32Mount(t *testing.T, daemon bool, opts ...swtpmtest.Option) *review32Steps {
	t.Helper()
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, append([]swtpmtest.Option{swtpmtest.WithBus(b)}, opts...)...)
	s := &review32Steps{t: t, env: env, b: b, dir: t.TempDir() + "/state", daemon: daemon}
	s.open()
	if _, err := s.a.Provision(context.Background(), review8Req()); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestReview32KeyOperationsWithTheSRKEvicted(t *testing.T) {
	t.Parallel()
	for _, daemon := range []bool{false, true} {
		t.Run(review26Mode(daemon), func(t *testing.T) {
			ctx := context.Background()
			s := review32Mount(t, daemon)
			digest := sha256.Sum256([]byte("m"))
			s.step("key create", func(a *Agent) error {
				_, err := a.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256", Extractable: true})
				return err
			})
			s.step("sign", func(a *Agent) error { _, err := a.Sign(ctx, "k", digest[:], api.SignOptions{}); return err })
			s.step("key derive", func(a *Agent) error {
				_, err := a.DeriveKey(ctx, api.DeriveRequest{Name: "h", Label: "mac", Type: "hmac-sha256",
					Approval: approveRecipe(t, a, officer.Recipe{Type: "hmac-sha256", Label: "mac"})})
				return err
			})
			s.step("hmac", func(a *Agent) error { _, err := a.HMAC(ctx, "h", []byte("x")); return err })
			s.step("key create ecdh", func(a *Agent) error {
				_, err := a.CreateKey(ctx, api.CreateRequest{Name: "e", Type: "ecc-p256", Usage: "ecdh"})
				return err
			})
			peer, _ := ecdh.P256().GenerateKey(rand.Reader)
			s.step("ecdh", func(a *Agent) error { _, err := a.ECDH(ctx, "e", peer.PublicKey()); return err })
			s.step("key create rsa", func(a *Agent) error {
				_, err := a.CreateKey(ctx, api.CreateRequest{Name: "oaep", Type: "rsa-2048", Usage: "decrypt"})
				return err
			})
			s.step("decrypt", func(a *Agent) error {
				_, err := a.Decrypt(ctx, "oaep", make([]byte, 256), crypto.SHA256)
				if err != nil && api.ExitCode(err) != api.ExitTPMResources && api.ExitCode(err) != api.ExitIdentity {
					return nil // a refused ciphertext is not the point
				}
				return err
			})
			req, _ := kekRequest(t, "kek", "", 32)
			s.step("kek import", func(a *Agent) error { _, err := a.ImportKEK(ctx, req); return err })
			var wrapped []byte
			s.step("key export", func(a *Agent) error {
				var err error
				wrapped, err = a.ExportKey(ctx, api.KeyExportRequest{Name: "k", KEK: "kek", Approval: officertest.ApproveExport(t, ctx, a, "k", "kek")})
				return err
			})
			req.Name, req.Usage = "kek-u", "unwrap"
			s.step("kek import unwrap", func(a *Agent) error { _, err := a.ImportKEK(ctx, req); return err })
			s.step("key import", func(a *Agent) error {
				_, err := a.ImportKey(ctx, api.KeyImportRequest{Name: "fixed", KEK: "kek-u", Wrapped: wrapped})
				return err
			})
		})
	}
}
