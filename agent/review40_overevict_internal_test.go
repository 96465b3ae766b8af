package agent

// Review 40: evictSRKUnowed beside another process's provision.
//
// FLAW (failed before the mend): TestReview40EvictionDuringAnotherProcessProvision (over-eviction).
// Attack (other local processes, no bus attacker): a provisioned state
// whose SRK another program evicted. Process O (a one-shot key create, or
// the daemon) reads the state, and its PK's load persists the SRK again
// (tpm.PersistMissingSRK: reported at unlock). Meanwhile another
// program's zeroize wipes the state, and an operator's provision P
// starts at once in a third process (the wiped state needs no --force):
// P pins the TPM and creates its PK under the SRK at 0x81000001. O's
// unlock reads the state under the store's lock: P has not committed
// yet (it commits only at its end, and holds no store lock while it
// works in the TPM), so the state is neither provisioned nor pinned, and
// evictSRKUnowed evicts the SRK, the one P is provisioning under. P then
// commits a provisioned state with 0x81000001 empty. The doc comment's
// "a provision committed meanwhile keeps the SRK" holds only for a
// provision that committed; one in flight loses the SRK.
// Expected: P's provisioned state has its SRK at 0x81000001 (provision
// is what persists it: docs/threat-model.md). Observed: evicted.
// Mend: evict only the SRK this operation persisted when nothing else
// claims it, e.g. let provision (and every PersistSRK in another
// process) mark its claim in the state before it persists (a
// "provisioning" record written under the lock before PersistSRK, which
// evictSRKUnowed honours), or have provision check 0x81000001 again
// under the store's lock at its commit and persist it there.
// Mended: the latter (tpm.PersistSRKAgain in provision's commit: one
// TPM2_ReadPublic more per provision).
import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

func TestReview40EvictionDuringAnotherProcessProvision(t *testing.T) {
	ctx := context.Background()
	w := &review8Wire{}
	bz := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(w.wrap), swtpmtest.WithBus(bz), swtpmtest.WithResourceManager())
	dir := t.TempDir() + "/state"
	o := review8Agent(t, env.TPM, dir)
	if _, err := o.Provision(ctx, review8Req()); err != nil {
		t.Fatal(err)
	}
	// Another program evicted the SRK of the provisioned state.
	review31EvictSRK(t, env, bz)
	ptp, pb := review8Client(t, w) // the third process's connection
	var p *Agent
	t.Cleanup(func() {
		if p != nil {
			p.Close()
		}
	})
	reached, release := make(chan struct{}), make(chan struct{})
	perr := make(chan error, 1)
	pfired := false
	pb.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		cc := swtpmtest.CommandCode(cmd)
		if pfired || (cc != tpm2.TPMCCCreateLoaded && cc != tpm2.TPMCCCreate) {
			return nil, nil, false
		}
		pfired = true
		close(reached) // P's PK is on its way, under the SRK
		<-release
		return nil, nil, false
	})
	fired := false
	bz.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if fired || swtpmtest.CommandCode(cmd) != tpm2.TPMCCCreate {
			return nil, nil, false
		}
		fired = true
		// O's PK is loaded (the SRK persisted again for it); the
		// other program's zeroize wipes the state; P provisions it.
		review40Wipe(t, dir, next, false)
		go func() {
			var err error
			p, err = New(Config{TPM: ptp, StateDir: dir})
			if err == nil {
				_, err = p.Provision(ctx, review8Req())
			}
			perr <- err
		}()
		select {
		case <-reached:
		case err := <-perr:
			t.Errorf("the third process's provision ended before its PK's creation: %v", err)
			perr <- err
		case <-time.After(20 * time.Second):
			t.Errorf("the third process's provision did not reach its PK's creation")
		}
		return nil, nil, false
	})
	_, err := o.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"})
	bz.Set(nil)
	if !fired {
		t.Fatalf("not mounted: no TPM2_Create in O (%v)", err)
	}
	t.Logf("O's key create across the zeroize: %v (SRK at 0x81000001 after O: %v)", err, review26SRKThere(env))
	if !errors.Is(err, api.ErrNotProvisioned) {
		t.Errorf("O's key create: %v, want ErrNotProvisioned", err)
	}
	close(release)
	var pe error
	select {
	case pe = <-perr:
	case <-time.After(60 * time.Second):
		t.Fatal("the third process's provision did not end")
	}
	pb.Set(nil)
	t.Logf("the third process's provision: %v", pe)
	if pe != nil {
		t.Errorf("another process's provision failed after O's unlock evicted the SRK it was provisioning under: %v", pe)
	}
	if review40Provisioned(t, dir) && !review26SRKThere(env) {
		t.Errorf("over-eviction: the state is provisioned (by the third process) and 0x81000001 is empty: O's evictSRKUnowed evicted the SRK a provision in flight relied on")
	}
}
