package agent

import (
	"context"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// Attack: the daemon's real sequence behind /dev/tpmrm0 (swtpmtest's
// resource-manager channel under SessionLimit): two keys made resident by
// signs, the daemon rests when idle (Agent.Rest: kept sessions flushed,
// the resident keys stay), then each of provd's operations runs. Rest
// changes which sessions exist when an operation starts, and behind the
// resource manager the kept session is flushed by number (no sweep):
// an operation meeting a rested daemon with two keys resident must still
// not run out of object or session slots (cf63e47 fixed dup export for
// the unrested case only), nor leave a session behind.
// Secure: every operation works, no refusal for want of a slot, and after
// a final Rest the TPM holds no session.
func TestReview13EveryOperationAfterRestWithTwoKeysResidentBehindRM(t *testing.T) {
	t.Parallel()
	everyOperationWithTwoKeysResident(t, true)
}

// Attack: cf63e47's fix evicts resident keys only where a peer's parent is
// loaded. Under a signed platform policy the PK's every load is
// PolicyAuthorize (the signer's key loaded beside it), so a key use whose
// key is not cached (a third key: load the PK under the SRK, the key under
// the PK, a session salted to the SRK, the signer's key) meets the daemon
// with two keys resident; and the daemon, behind the resource manager,
// rests between them. Secure: every operation below works with no refusal
// for want of a slot (a use that has to evict and retry counts one), and a
// rest leaves no session.
func TestReview13SignedPolicyKeyUsesWithTwoKeysResidentBehindRM(t *testing.T) {
	t.Parallel()
	lA, lB := &swtpmtest.SessionLimit{}, &swtpmtest.SessionLimit{}
	envA := swtpmtest.Start(t, swtpmtest.WithWrap(lA.Wrap), swtpmtest.WithResourceManager())
	envB := swtpmtest.Start(t, swtpmtest.WithWrap(lB.Wrap), swtpmtest.WithResourceManager())
	ctx := context.Background()
	a, err := New(Config{TPM: envA.TPM, StateDir: t.TempDir() + "/state", KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	res, signed := provisionSigned(t, a)
	if _, err := a.InstallPolicy(ctx, signed(*res.Counter+1)); err != nil {
		t.Fatal(err)
	}
	b := keptAgent(t, envB)
	for _, k := range []string{"k", "k2", "k3", "k4"} {
		if _, err := a.CreateKey(ctx, api.CreateRequest{Name: k, Type: "ecc-p256"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.CreateKey(ctx, api.CreateRequest{Name: "k2", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	sealed, err := a.Seal(ctx, api.SealRequest{Data: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
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
		if n++; n%2 == 0 {
			if err := x.Rest(); err != nil {
				t.Fatalf("before %s: rest: %v", name, err)
			}
		}
		l.Take()
		if err := fn(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if refused, cmds := l.Take(); refused > 0 {
			t.Errorf("%s: %d refusals for want of a slot in %v", name, refused, cmds)
		}
		if err := x.Rest(); err != nil {
			t.Errorf("rest after %s: %v", name, err)
		}
		if got := sessionsLeft(t, env.TPM); len(got) != 0 {
			t.Errorf("after %s and a rest: sessions %x left", name, got)
		}
	}
	for _, k := range []string{"k3", "k4", "k3"} {
		step(false, "sign "+k+" (not resident)", func() error { _, err := a.Sign(ctx, k, make([]byte, 32), api.SignOptions{}); return err })
	}
	step(false, "unseal", func() error { _, err := a.Unseal(ctx, sealed); return err })
	step(false, "seal", func() error { _, err := a.Seal(ctx, api.SealRequest{Data: []byte("y")}); return err })
	step(false, "key create", func() error {
		_, err := a.CreateKey(ctx, api.CreateRequest{Name: "k5", Type: "ecc-p256"})
		return err
	})
	step(false, "sign k5", func() error { _, err := a.Sign(ctx, "k5", make([]byte, 32), api.SignOptions{}); return err })
	step(false, "policy install", func() error { _, err := a.InstallPolicy(ctx, signed(*res.Counter+2)); return err })
	step(false, "sign k4 after install", func() error { _, err := a.Sign(ctx, "k4", make([]byte, 32), api.SignOptions{}); return err })
}
