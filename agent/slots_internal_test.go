package agent

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/provd/provd/api"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// everyOperation runs each of provd's operations once, in an order that
// gives each its inputs, on a and b (provisioned, on two TPMs: b is envB's,
// the duplicate's receiver); each runs through step, told whether it is
// b's.
func everyOperation(t *testing.T, a, b *Agent, envB *swtpmtest.Env, step func(onB bool, name string, fn func() error)) {
	t.Helper()
	ctx := context.Background()
	step(false, "key create ecc", func() error {
		_, err := a.CreateKey(ctx, api.CreateRequest{Name: "p256", Type: "ecc-p256", Extractable: true})
		return err
	})
	step(false, "key create rsa", func() error {
		_, err := a.CreateKey(ctx, api.CreateRequest{Name: "rsa", Type: "rsa-2048"})
		return err
	})
	step(false, "seal", func() error {
		_, err := a.Seal(ctx, api.SealRequest{Data: []byte("x"), PCRs: []int{7}})
		return err
	})
	step(false, "sign", func() error {
		_, err := a.Sign(ctx, "p256", make([]byte, 32), api.SignOptions{})
		return err
	})
	var peerB api.PeerIdentity
	step(true, "peer identity (B)", func() (err error) {
		peerB, err = b.PeerIdentity(ctx)
		return err
	})
	var dup api.DupFile
	step(false, "dup export (A)", func() (err error) {
		dup, err = a.DupExport(ctx, api.DupExportRequest{Name: "p256", Peer: peerB, Approval: approveDup(t, a, "p256", peerB), EKCA: caBundle(t, envB)})
		return err
	})
	step(true, "dup import (B)", func() error {
		_, err := b.DupImport(ctx, api.DupImportRequest{Name: "p256", Dup: dup})
		return err
	})
	step(true, "sign imported (B)", func() error {
		_, err := b.Sign(ctx, "p256", make([]byte, 32), api.SignOptions{})
		return err
	})
	step(false, "key delete", func() error { return a.DeleteKey(ctx, "rsa") })
	req, _ := kekRequest(t, "kek", "", 32)
	step(false, "kek import", func() error { _, err := a.ImportKEK(ctx, req); return err })
	var wrapped []byte
	step(false, "key export", func() (err error) {
		wrapped, err = a.ExportKey(ctx, api.KeyExportRequest{Name: "p256", KEK: "kek", Approval: officertest.ApproveExport(t, ctx, a, "p256", "kek")})
		return err
	})
	req.Name, req.Usage = "kek-u", "unwrap"
	step(false, "kek import (unwrap)", func() error { _, err := a.ImportKEK(ctx, req); return err })
	step(false, "key import", func() error {
		_, err := a.ImportKey(ctx, api.KeyImportRequest{Name: "imp", KEK: "kek-u", Wrapped: wrapped})
		return err
	})
	step(false, "key derive", func() error {
		_, err := a.DeriveKey(ctx, api.DeriveRequest{Name: "h", Label: "mac", Type: "hmac-sha256",
			Approval: approveRecipe(t, a, officer.Recipe{Type: "hmac-sha256", Label: "mac"})})
		return err
	})
	step(false, "hmac", func() error { _, err := a.HMAC(ctx, "h", []byte("x")); return err })
	step(false, "status", func() error { _, err := a.Status(ctx); return err })
	step(false, "provision --force", func() error {
		_, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}, Force: true})
		return err
	})
}

// No operation holds a fourth session (found by the review of the shared
// audit session, issue 14: behind /dev/tpmrm0 a fourth fails the device's
// write, and the kernel flushes the connection's every session), nor
// meets the TPM's refusal for want of an object or session slot: every
// operation runs on two TPMs behind swtpmtest.SessionLimit.
func TestNoOperationNeedsAFourthSession(t *testing.T) {
	t.Parallel()
	lA, lB := &swtpmtest.SessionLimit{}, &swtpmtest.SessionLimit{}
	envA := swtpmtest.Start(t, swtpmtest.WithWrap(lA.Wrap))
	envB := swtpmtest.Start(t, swtpmtest.WithWrap(lB.Wrap))
	a, b := provisioned(t, envA), provisioned(t, envB)
	lA.Take()
	lB.Take()
	everyOperation(t, a, b, envB, func(onB bool, name string, fn func() error) {
		t.Helper()
		l := lA
		if onB {
			l = lB
		}
		if err := fn(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if refused, cmds := l.Take(); refused > 0 {
			t.Errorf("%s: %d refusals for want of a slot in %v", name, refused, cmds)
		}
	})
}

// migrateAfterShared arms b: the first PCR_Read, NV_Read or Load whose
// last session is an HMAC session (the shared one, inside Share) is passed
// on, then env is migrated (the connection breaks, the TPM keeps its
// loaded sessions). It returns whether that happened.
func migrateAfterShared(b *swtpmtest.Bus, env *swtpmtest.Env) *bool {
	done := new(bool)
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		nh, ok := map[tpm2.TPMCC]int{tpm2.TPMCCPCRRead: 0, tpm2.TPMCCLoad: 1, tpm2.TPMCCNVRead: 2}[swtpmtest.CommandCode(cmd)]
		if *done || !ok || swtpmtest.LastSession(cmd, nh)>>24 != 0x02 {
			return nil, nil, false
		}
		rsp, err := next.Send(cmd)
		*done = true
		env.Migrate()
		return rsp, err, true
	})
	return done
}

// Every operation works with the TPM migrated right after its first
// command in the shared audit session: the session, still loaded, is
// flushed when it is given up, so the operation's later steps have their
// slots (found by review: forgotten, it held one, and a duplicate's import
// failed at its activation).
func TestMigrationInTheSharedSession(t *testing.T) {
	t.Parallel()
	bA, bB := &swtpmtest.Bus{}, &swtpmtest.Bus{}
	envA := swtpmtest.Start(t, swtpmtest.WithBus(bA))
	envB := swtpmtest.Start(t, swtpmtest.WithBus(bB))
	a, b := provisioned(t, envA), provisioned(t, envB)
	everyOperation(t, a, b, envB, func(onB bool, name string, fn func() error) {
		t.Helper()
		bus, env := bA, envA
		if onB {
			bus, env = bB, envB
		}
		done := migrateAfterShared(bus, env)
		err := fn()
		bus.Set(nil)
		if err != nil {
			t.Errorf("%s (migrated mid-operation: %v): %v", name, *done, err)
		}
	})
}

// The daemon's agent (Config.KeepSession): a warm sign keeps its policy
// session; the next operations (seal, key create, key delete) start by
// flushing it, and share their reads, with a migration after their first
// command in the shared session, as above.
func TestKeptSessionThenMigrationInTheSharedSession(t *testing.T) {
	bA := &swtpmtest.Bus{}
	envA := swtpmtest.Start(t, swtpmtest.WithBus(bA))
	ctx := context.Background()
	a, err := New(Config{TPM: envA.TPM, StateDir: t.TempDir() + "/state", KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if _, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "s", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	for i, op := range []struct {
		name string
		fn   func() error
	}{
		{"seal", func() error { _, err := a.Seal(ctx, api.SealRequest{Data: []byte("x"), PCRs: []int{7}}); return err }},
		{"key create", func() error { _, err := a.CreateKey(ctx, api.CreateRequest{Name: "t", Type: "ecc-p256"}); return err }},
		{"key delete", func() error { return a.DeleteKey(ctx, "t") }},
	} {
		if _, err := a.Sign(ctx, "s", make([]byte, 32), api.SignOptions{}); err != nil {
			t.Fatalf("sign %d: %v", i, err)
		}
		if a.op == nil {
			t.Fatal("the sign kept no session")
		}
		done := migrateAfterShared(bA, envA)
		err := op.fn()
		bA.Set(nil)
		if err != nil {
			t.Errorf("%s after a warm sign (migrated: %v): %v", op.name, *done, err)
		}
	}
}

// The daemon keeps two keys loaded between requests (objcache), and swtpm,
// like most TPMs, has three object slots: with two keys resident, signs by
// two others just before each step, every operation still finds the slots
// it needs, on both TPMs, behind swtpmtest.SessionLimit with the daemon's
// kept sessions: no refusal for want of a session or object slot (found
// in issue 14's work: a dup export through the daemon after signs with two
// keys failed TPM_RC_OBJECT_MEMORY, its salted session's SRK finding no
// slot beside the keys and the peer's parent).
func TestDaemonEveryOperationWithTwoKeysResident(t *testing.T) {
	t.Parallel()
	everyOperationWithTwoKeysResident(t, false)
}

// everyOperationWithTwoKeysResident runs every daemon operation (those of
// everyOperation and unseal, ECDH, attest identity and quote, audit
// reanchor, peer prove) on two kept agents behind swtpmtest.SessionLimit,
// each step after signs with two keys (two resident) and checks that none
// meets a refusal for want of a slot. With rest, the TPMs are resource
// managers' channels and the daemon rests (Agent.Rest) before and after
// each step, which must leave no session in the TPM and the two keys
// resident.
func everyOperationWithTwoKeysResident(t *testing.T, rest bool) {
	lA, lB := &swtpmtest.SessionLimit{}, &swtpmtest.SessionLimit{}
	opts := func(l *swtpmtest.SessionLimit) []swtpmtest.Option {
		o := []swtpmtest.Option{swtpmtest.WithWrap(l.Wrap)}
		if rest {
			o = append(o, swtpmtest.WithResourceManager())
		}
		return o
	}
	envA, envB := swtpmtest.Start(t, opts(lA)...), swtpmtest.Start(t, opts(lB)...)
	a, b := keptAgent(t, envA), keptAgent(t, envB)
	ctx := context.Background()
	for _, x := range []*Agent{a, b} {
		if _, err := x.CreateKey(ctx, api.CreateRequest{Name: "k2", Type: "ecc-p256"}); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"k", "k2"} { // each saved once: a first load evicts the others
			if _, err := x.Sign(ctx, k, make([]byte, 32), api.SignOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	rested := func(x *Agent, env *swtpmtest.Env, when string) {
		t.Helper()
		if !rest {
			return
		}
		if err := x.Rest(); err != nil {
			t.Errorf("%s: rest: %v", when, err)
		}
		if got := sessionsLeft(t, env.TPM); len(got) != 0 {
			t.Errorf("%s: the rest left sessions %x", when, got)
		}
	}
	step := func(onB bool, name string, fn func() error) {
		t.Helper()
		x, l, env := a, lA, envA
		if onB {
			x, l, env = b, lB, envB
		}
		for _, k := range []string{"k", "k2"} {
			if _, err := x.Sign(ctx, k, make([]byte, 32), api.SignOptions{}); err != nil {
				t.Fatalf("before %s: sign with %s: %v", name, k, err)
			}
		}
		rested(x, env, "before "+name)
		if n := x.keys.Resident(); n != 2 {
			t.Fatalf("before %s: %d keys resident, want 2", name, n)
		}
		l.Take()
		if err := fn(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if refused, cmds := l.Take(); refused > 0 {
			t.Errorf("%s: %d refusals for want of a slot in %v", name, refused, cmds)
		}
		rested(x, env, "after "+name)
	}
	sealed, err := a.Seal(ctx, api.SealRequest{Data: []byte("x"), PCRs: []int{7}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := officertest.Derive(t, ctx, a, api.DeriveRequest{Name: "dh", Label: "dh", Type: "ecc-p256", Usage: "ecdh"}); err != nil {
		t.Fatal(err)
	}
	step(false, "unseal", func() error { _, err := a.Unseal(ctx, sealed); return err })
	step(false, "ecdh", func() error {
		k, _ := ecdh.P256().GenerateKey(rand.Reader)
		_, err := a.ECDH(ctx, "dh", k.PublicKey())
		return err
	})
	step(false, "attest identity", func() error { _, err := a.AttestIdentity(ctx); return err })
	step(false, "attest quote", func() error {
		nonce := sha256.Sum256([]byte("two keys resident"))
		_, err := a.AttestQuote(ctx, api.AttestQuoteRequest{Nonce: nonce[:], PCRs: map[string][]int{"sha256": {0, 7}}})
		return err
	})
	step(false, "audit reanchor", func() error { _, err := a.AuditReanchor(ctx); return err })
	step(true, "peer prove (B)", func() error {
		peerB, err := b.PeerIdentity(ctx)
		if err != nil {
			return err
		}
		c, err := NewPeerChallenge(peerB, caBundle(t, envB), time.Now)
		if err != nil {
			return err
		}
		_, err = b.PeerProve(ctx, c)
		return err
	})
	everyOperation(t, a, b, envB, step)
}

// sessionsLeft lists the sessions loaded or saved in the TPM.
func sessionsLeft(t *testing.T, tp *tpm.TPM) []tpm2.TPMHandle {
	t.Helper()
	var out []tpm2.TPMHandle
	for _, first := range []tpm2.TPMHandle{tpm.HMACSessions, tpm.PolicySessions} {
		hs, err := tp.Handles(first)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, hs...)
	}
	return out
}
