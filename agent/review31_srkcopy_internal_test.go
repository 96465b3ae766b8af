package agent

// Review 31: the SRK's transient copy (tpm.TransientSRKOnly, 94f2f93 and
// 83622cb).
//
// FLAW (failed before the mend): TestReview31MigrationLeavesTheSRKCopyLoaded.
// After a complete zeroize --srk, the daemon's agent serves a role-less
// caller's refused request (review 30's attack), which makes a transient
// copy of the SRK; the VM's TPM is migrated right after the copy's
// CreatePrimary (swtpm's volatile state moved: the connection breaks, the
// TPM keeps its loaded objects). provd sees the lost connection and moves
// the generation; tpm.TPM.cachedSRK then forgets the copy on any
// generation change, never flushes it, and asks for no sweep. The copy
// stays loaded, held by nobody, after the operation behind a resource
// manager (swtpmtest.WithResourceManager: no sweep there) for the
// connection's life; each such event costs one of the connection's three
// object slots. tpm.TPM.ForgetsStale says such a handle is flushed by its
// number there (the gate keep and the spare sessions do so); the copy's
// forgetting ignores it. The exclusive subtest holds: the broken send
// asked for the sweep, which flushed the copy.
//
// FLAW (failed before the mend): TestReview31AttestSecretWithTheSRKEvicted.
// A provisioned, enrolled and activated device whose SRK another program
// evicted (the threat model's row names this attacker); `provd attest
// secret` in a new process: the operation loads no PK, so SRK gives a
// transient copy held for the whole operation: copy + AK + EK + the
// delivered object are four objects, and swtpm's three slots answer
// TPM2_Load TPM_RC_OBJECT_MEMORY. Before 83622cb SRK persisted the SRK
// again and the operation held three. Attest identity, activate, quote and
// install still work (held, in the same test).
//
// HELD: TestReview31PeerOperationsWithTheSRKEvicted: peer identity, peer
// prove, dup import and a transferred key's signature, each in a new
// process after another program evicted the SRK: all work, nothing is left
// loaded but the key cache's resident key.
import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/attest"
	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review31Evicted is review27Evicted's complete case behind bus b (and a
// resource manager when rm): the daemon's agent after a complete zeroize
// --srk.
func review31Evicted(t *testing.T, b *swtpmtest.Bus, rm bool) (*swtpmtest.Env, *Agent) {
	t.Helper()
	opts := []swtpmtest.Option{swtpmtest.WithBus(b)}
	if rm {
		opts = append(opts, swtpmtest.WithResourceManager())
	}
	env := swtpmtest.Start(t, opts...)
	a, err := New(Config{TPM: env.TPM, StateDir: t.TempDir() + "/state", KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ctx := context.Background()
	if _, err := a.Provision(ctx, review8Req()); err != nil {
		t.Fatal(err)
	}
	res, err := a.Zeroize(ctx, api.ZeroizeOptions{SRK: true})
	if err != nil || !res.SRKEvicted || review26SRKThere(env) {
		t.Fatalf("not mounted: zeroize --srk: %v (srk_evicted %v)", err, res.SRKEvicted)
	}
	return env, a
}

func TestReview31MigrationLeavesTheSRKCopyLoaded(t *testing.T) {
	t.Parallel()
	for _, rm := range []bool{false, true} {
		t.Run(map[bool]string{false: "exclusive", true: "resource manager"}[rm], func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env, a := review31Evicted(t, b, rm)
			var mu sync.Mutex
			var copyHandle uint32
			migrated := false
			b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				mu.Lock()
				defer mu.Unlock()
				if copyHandle != 0 && !migrated {
					migrated = true
					env.Migrate()
					return nil, nil, false
				}
				if copyHandle != 0 || swtpmtest.CommandCode(cmd) != tpm2.TPMCCCreatePrimary {
					return nil, nil, false
				}
				rsp, err := next.Send(cmd)
				if err == nil && len(rsp) >= 14 && binary.BigEndian.Uint32(rsp[6:10]) == 0 {
					copyHandle = binary.BigEndian.Uint32(rsp[10:14])
				}
				return rsp, err, true
			})
			err := a.RecordRefusal(api.WithCaller(context.Background(), api.Caller{UID: 4242}), "key-delete", "no role")
			b.Set(nil)
			t.Logf("a refused request with a migration after the copy's CreatePrimary (0x%08x): %v", copyHandle, err)
			if !migrated {
				t.Fatal("not mounted: no CreatePrimary of the SRK's copy, or no command after it")
			}
			if review26SRKThere(env) {
				t.Errorf("the refusal persisted the SRK")
			}
			hs, err := env.TPM.Handles(tpm.TransientHandles)
			if err != nil {
				t.Fatal(err)
			}
			if len(hs) != 0 {
				t.Errorf("after the operation, transient objects left loaded, held by nobody: %x (the SRK's copy was 0x%08x; the agent holds copy 0x%08x)", hs, copyHandle, uint32(a.t.TransientSRK()))
				env.NoLeakCheck()
				for _, h := range hs {
					_ = env.TPM.Flush(h)
				}
			}
		})
	}
}

// review31EvictSRK evicts the SRK at 0x81000001 around provd, as another
// program would, if it is there.
func review31EvictSRK(t *testing.T, env *swtpmtest.Env, b *swtpmtest.Bus) {
	t.Helper()
	srk, err := env.TPM.ReadPublic(tpm.SRKHandle)
	if err != nil {
		return
	}
	if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: srk.Named(), PersistentHandle: tpm.SRKHandle}).Execute(b.Next); err != nil {
		t.Fatal(err)
	}
}

func TestReview31AttestSecretWithTheSRKEvicted(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	dir := t.TempDir() + "/state"
	a := review8Agent(t, env.TPM, dir)
	if _, err := a.Provision(ctx, review8Req()); err != nil {
		t.Fatal(err)
	}
	// Each step is a one-shot command: a new process, started after
	// another program evicted the SRK.
	step := func(name string, fn func(*Agent) error) error {
		t.Helper()
		review31EvictSRK(t, env, b)
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		env.Reopen()
		a = review8Agent(t, env.TPM, dir)
		err := fn(a)
		t.Logf("%s with the SRK evicted: %v (SRK persisted again: %v)", name, err, review26SRKThere(env))
		srkCopyLeft(t, env, name)
		return err
	}
	review31Delivered(t, env, step)
	var got api.AttestSecretResult
	if err := step("attest secret", func(a *Agent) (err error) {
		got, err = a.AttestSecret(ctx, api.AttestSecretRequest{Name: "wifi"})
		return err
	}); err != nil {
		t.Fatalf("attest secret in a provisioned state whose SRK another program evicted: %v (before 83622cb SRK persisted it again and the operation held one object fewer)", err)
	}
	if string(got.Secret) != "psk" {
		t.Fatalf("attest secret: %q", got.Secret)
	}
}

// review31Delivered takes a provisioned device on env to a delivered
// secret ("wifi" of class gateway) from an endpoint of its own: identity,
// enrollment, activation, a quote whose values become the class's golden
// ones, the appraisal, the installation. Each of the device's steps runs
// through step, which gives the agent to use (a new process, or the same
// daemon).
func review31Delivered(t *testing.T, env *swtpmtest.Env, step func(name string, fn func(*Agent) error) error) {
	t.Helper()
	ctx := context.Background()
	roots, err := attest.CertPoolFromPEM(env.CAPEM())
	if err != nil {
		t.Fatal(err)
	}
	st, err := fleet.Open(ctx, "sqlite://"+filepath.Join(t.TempDir(), "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := fleet.New(fleet.Config{Store: st, Roots: roots})
	if err := st.PutSecret(ctx, fleet.Secret{Class: "gateway", Name: "wifi", Value: []byte("psk"), UpdatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	var idReq fleetapi.EnrollRequest
	if err := step("attest identity", func(a *Agent) (err error) { idReq, err = a.AttestIdentity(ctx); return err }); err != nil {
		t.Fatal(err)
	}
	idReq.Class = "gateway"
	enr, err := e.Enroll(ctx, idReq)
	if err != nil {
		t.Fatal(err)
	}
	var act api.AttestActivateResult
	if err := step("attest activate", func(a *Agent) (err error) { act, err = a.AttestActivate(ctx, enr); return err }); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Activate(ctx, fleetapi.ActivateRequest{DeviceID: enr.DeviceID, Secret: act.Secret}); err != nil {
		t.Fatal(err)
	}
	ch, err := e.Challenge(ctx, fleetapi.ChallengeRequest{DeviceID: enr.DeviceID})
	if err != nil {
		t.Fatal(err)
	}
	var q api.AttestQuoteResult
	if err := step("attest quote", func(a *Agent) (err error) {
		q, err = a.AttestQuote(ctx, api.AttestQuoteRequest{Nonce: ch.Nonce, PCRs: ch.PCRs})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	golden := map[string]map[int]string{"sha256": {}}
	for k, h := range q.PCRs["sha256"] {
		i, _ := strconv.Atoi(k)
		golden["sha256"][i] = h
	}
	if err := st.SetPolicy(ctx, fleet.Policy{Class: "gateway", PCRs: golden, UpdatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	v, err := e.Attest(ctx, fleetapi.AttestRequest{DeviceID: enr.DeviceID, Nonce: ch.Nonce, Quote: q.Quote, Signature: q.Signature, PCRs: q.PCRs, Fetch: true})
	if err != nil || !v.Pass || len(v.Deliveries) != 1 {
		t.Fatalf("%+v %v", v, err)
	}
	if err := step("attest install", func(a *Agent) error {
		_, err := a.AttestInstall(ctx, api.AttestInstallRequest{Deliveries: v.Deliveries})
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

func TestReview31PeerOperationsWithTheSRKEvicted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	envA := swtpmtest.Start(t)
	bus := &swtpmtest.Bus{}
	envB := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	a := provisioned(t, envA)
	dirB := t.TempDir() + "/state"
	b := review8Agent(t, envB.TPM, dirB)
	if _, err := b.Provision(ctx, review8Req()); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256", Extractable: true}); err != nil {
		t.Fatal(err)
	}
	step := func(name string, fn func() error) {
		t.Helper()
		review31EvictSRK(t, envB, bus)
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		envB.Reopen()
		b = review8Agent(t, envB.TPM, dirB)
		if err := fn(); err != nil {
			t.Fatalf("%s with the SRK evicted: %v", name, err)
		}
		hs, err := envB.TPM.Handles(tpm.TransientHandles)
		if err != nil {
			t.Fatal(err)
		}
		if cached := b.keys.Handles(); len(hs) > len(cached) {
			t.Errorf("after %s: loaded %x, the key cache holds %x", name, hs, cached)
		}
	}
	var peerB api.PeerIdentity
	step("peer identity", func() (err error) { peerB, err = b.PeerIdentity(ctx); return err })
	step("peer prove", func() error {
		c, err := NewPeerChallenge(peerB, caBundle(t, envB), time.Now)
		if err != nil {
			return err
		}
		_, err = b.PeerProve(ctx, c)
		return err
	})
	dup, err := a.DupExport(ctx, api.DupExportRequest{Name: "k", Peer: peerB, Approval: approveDup(t, a, "k", peerB), EKCA: caBundle(t, envB)})
	if err != nil {
		t.Fatal(err)
	}
	step("dup import", func() error { _, err := b.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup}); return err })
	d := sha256.Sum256([]byte("x"))
	step("a transferred key's signature", func() error { _, err := b.Sign(ctx, "k", d[:], api.SignOptions{}); return err })
}
