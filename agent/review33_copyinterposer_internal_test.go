// Review 33: the whole interposer against the SRK's transient copy.
//
// FLAW (of the threat model's claims, failed before the mend):
// TestReview33CopyInterposerTakesTheGateSession — on a TPM with no SRK, A1
// that forges the copy's TPM2_CreatePrimary answer (its own key, as the
// full interposer does) and also redirects the sessions salted to the
// handle that answer names (the copy's, 0x80xxxxxx, not 0x81000001) takes
// the provision's first session before first contact and decrypts the
// audit gate's authValue from the gate key's TPM2_Create. The threat model
// said the attacker "takes no session at all" there (b81aafd) and that
// "the gates' authValues ... never cross the bus". Nothing is authenticated
// before first contact (A1 can forge those records anyway), and the old
// persisting path gave A1 the same session: the mend corrects the claims,
// and the test holds the bound they state now: one session, the gate's
// creation, no more; the provision refused at first contact; the gate
// replaced by an honest provision.
//
// HELD: (none in this file)
package agent

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

func TestReview33CopyInterposerTakesTheGateSession(t *testing.T) {
	ctx := context.Background()
	on := &atomic.Bool{}
	x := newLoadExternalInterposer(t, on)
	x.copies = map[uint32]bool{} // it follows the copy's handle too
	env := swtpmtest.Start(t, swtpmtest.WithWrap(x.wrap))
	if _, err := env.TPM.ReadPublic(tpm.SRKHandle); err == nil {
		if err := env.TPM.Evict(tpm.SRKHandle); err != nil {
			t.Fatal(err)
		}
	}
	ekca := caBundle(t, env)
	on.Store(true)
	dir := t.TempDir() + "/state"
	a, err := New(Config{TPM: env.TPM, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	_, perr := a.Provision(ctx, api.ProvisionRequest{PCRs: []int{7}, EKCA: ekca})
	on.Store(false)
	t.Logf("provision through the copy-aware interposer: %v (exit %d); hijacked %d, rewritten %d, failures %v",
		perr, api.ExitCode(perr), x.hijacked, x.rewritten, x.failed)
	if perr == nil || api.ExitCode(perr) != api.ExitIdentity {
		t.Errorf("provision through the interposer: %v (exit %d), want refused (15)", perr, api.ExitCode(perr))
	}
	if x.hijacked > 1 {
		t.Errorf("the attacker took %d sessions before first contact (salted to its key through the copy's forged CreatePrimary); the threat model says at most the gate's creation", x.hijacked)
	}
	b, err := os.ReadFile(filepath.Join(dir, gateFile))
	if err != nil {
		t.Logf("no gate file: %v", err)
		return
	}
	var g gateRecord
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	auth, err := hex.DecodeString(g.Auth)
	if err != nil || len(auth) == 0 {
		t.Fatalf("gate auth %q: %v", g.Auth, err)
	}
	// The bound the threat model states: A1 may learn this gate's
	// authValue (the gate of a trail begun before first contact), and
	// only until a provision replaces the gate (below).
	t.Logf("the attacker decrypted this gate's authValue: %v", bytes.Contains(x.Seen(), auth))
	// The attacker leaves; the operator provisions on an honest bus. The
	// trail, and its gate whose authValue the attacker holds, go on.
	if _, err := a.Provision(ctx, api.ProvisionRequest{PCRs: []int{7}, EKCA: ekca}); err != nil {
		t.Fatalf("honest provision: %v", err)
	}
	if b2, err := os.ReadFile(filepath.Join(dir, gateFile)); err == nil && bytes.Contains(b2, []byte(g.Auth)) {
		t.Errorf("after an honest provision the trail's gate is still the one whose authValue the attacker decrypted")
	}
	if err := a.Close(); err != nil {
		t.Logf("close: %v", err)
	}
}
