package agent

// The forty-sixth review: sealing to a signed PCR policy, the policy
// counter that revokes old signed policies, and policy install.

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
)

// FLAW (failed before the mend): two provd processes (two one-shot `provd policy install` where no
// daemon answers, or one run with --tpm beside the daemon) installing the SAME signed policy, version
// v = counter+2, at about the same time. Each reads the counter (c),
// writes the policy, then moves the counter by v-c increments: relative
// steps, taken outside any lock the processes share. Here the second
// process runs its whole install while the first is between its write and
// its first increment (at the counter gate's TPM2_Load); the first then
// adds its v-c increments on top: the counter ends at 2v-c, past v, and
// the policy both processes installed is revoked in the TPM. The second
// process reports success, the first a forged response (exit 15: blamed on
// a bus attacker), and the PK is unusable until the officer signs a new
// version. Mend (agent/policyops.go:96 reads c, :114 moveCounter(c, v);
// agent/provision.go:426 incrementGated(to-from)): move the counter TO the
// version, not BY a count: read it (authenticated) again before each
// increment and stop at the version, or hold the state directory's lock
// from the counter's read to its read-back, so that a concurrent install
// of the same or a lower version never pushes the counter past the
// installed one.
func TestReview46ConcurrentInstallsRevokeTheInstalledPolicy(t *testing.T) {
	w := &review8Wire{}
	bz := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(w.wrap), swtpmtest.WithBus(bz), swtpmtest.WithResourceManager())
	ctx := context.Background()
	dir := t.TempDir() + "/state"
	first := review8Agent(t, env.TPM, dir)
	_, c0, signed := review46Signed(t, first, "")
	if _, err := first.CreateKey(ctx, api.CreateRequest{Name: "sig", Type: "ecc-p256"}); err == nil {
		t.Fatal("a key created before any signed policy is installed")
	}
	v := c0 + 2
	pol := signed(v, "")
	otp, _ := review8Client(t, w)
	second := review8Agent(t, otp, dir)

	ferr, serr := review46Race(t, bz, first, second, pol, pol)
	t.Logf("the first install: %v; the second, after it: %v", ferr, serr)
	if ferr != nil || serr != nil {
		t.Errorf("an install of the same version failed: %v / %v", ferr, serr)
	}
	c, err := first.readCounter()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("counter %d -> %d, the installed policy's version %d", c0, c, v)
	if c > v {
		t.Errorf("two installs of version %d left the counter at %d: the policy both installed is revoked", v, c)
	}
	if _, err := first.CreateKey(ctx, api.CreateRequest{Name: "sig", Type: "ecc-p256"}); err != nil {
		t.Errorf("a key under the installed signed policy after the two installs: %v", err)
	}
}

// FLAW (failed before the mend): the same race with two different versions, both installs
// reporting success. One process installs version c0+2; while it is
// between writing it and moving the counter, another installs version c0
// (the counter's value: no increment needed) and writes it over the
// first's. The first then moves the counter to c0+2 and reads it back as
// it expects: both succeed, and the policy left installed (c0) is revoked
// by the counter the first moved. Nothing under the PK works until a new
// install, and nothing said so. Mend: as above; the write of the policy
// and the counter's move must be one step under the state's lock (or the
// install must check, after its counter's read-back and under the lock,
// that the policy installed is still its own, and never write a version
// lower than the counter read under that lock).
func TestReview46ConcurrentLowerInstallLeavesARevokedPolicy(t *testing.T) {
	w := &review8Wire{}
	bz := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(w.wrap), swtpmtest.WithBus(bz), swtpmtest.WithResourceManager())
	ctx := context.Background()
	dir := t.TempDir() + "/state"
	first := review8Agent(t, env.TPM, dir)
	_, c0, signed := review46Signed(t, first, "")
	otp, _ := review8Client(t, w)
	second := review8Agent(t, otp, dir)

	ferr, serr := review46Race(t, bz, first, second, signed(c0+2, ""), signed(c0, ""))
	t.Logf("the first install (version %d): %v; the second (version %d), after it: %v", c0+2, ferr, c0, serr)
	if ferr != nil {
		t.Fatalf("the first install: %v", ferr)
	}
	var pe *api.PolicyError
	if !errors.As(serr, &pe) {
		t.Errorf("the second install, of a version the first revoked: %v, want policy_not_satisfied (revoked)", serr)
	}
	c, err := first.readCounter()
	if err != nil {
		t.Fatal(err)
	}
	sp, err := first.signed.parse(review46InstalledPolicy(t, first), review46Record(t, first))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("counter %d, the installed policy's version %d", c, sp.Version)
	if sp.Version < c {
		t.Errorf("two installs that both succeeded left version %d installed, revoked by the counter at %d", sp.Version, c)
	}
	if _, err := first.CreateKey(ctx, api.CreateRequest{Name: "sig", Type: "ecc-p256"}); err != nil {
		t.Errorf("a key under the installed signed policy after two successful installs: %v", err)
	}
}

// review46Race runs first's install of pf and, from its first TPM2_Load (the
// counter gate's: after its policy write, before the counter's move),
// second's install of ps in another goroutine, as another process would:
// the second must not finish while the first is there (the first waits up
// to 2 s for it to), and it returns each install's error once both ended.
func review46Race(t *testing.T, bz *swtpmtest.Bus, first, second *Agent, pf, ps []byte) (ferr, serr error) {
	t.Helper()
	ctx := context.Background()
	fired, ended := false, false
	done := make(chan error, 1)
	bz.Set(swtpmtest.BeforeOnce(swtpmtest.Code(tpm2.TPMCCLoad), &fired, func(transport.TPM) {
		go func() {
			_, err := second.InstallPolicy(ctx, ps)
			done <- err
		}()
		select {
		case serr = <-done:
			ended = true
			t.Errorf("the second install ended (%v) while the first was between its policy's write and its counter's move", serr)
		case <-time.After(2 * time.Second):
		}
	}))
	_, ferr = first.InstallPolicy(ctx, pf)
	bz.Set(nil)
	if !fired {
		t.Fatal("not mounted: no TPM2_Load")
	}
	if !ended {
		serr = <-done
	}
	return ferr, serr
}

// review46Record is the PK's policy record in a's state.
func review46Record(t *testing.T, a *Agent) policyRecord {
	t.Helper()
	var st pkState
	if err := a.st.View(context.Background(), func(tx *store.Tx) (err error) {
		st, err = a.readPK(tx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return st.Policy
}
