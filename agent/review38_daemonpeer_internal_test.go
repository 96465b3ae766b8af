package agent

// Review 38: the SRK evicted by another program under a running daemon
// (KeepSession), for the loads under the SRK that no PersistSRK follows:
// the transfer key T's (withTransfer) beside the PK from its saved
// context.
//
// FLAW (failed before the mend): TestReview38DaemonPeerProveWithTheSRKEvictedMidLife.
// A warm daemon keeps the PK's saved context; another program evicts the
// SRK; peer prove then takes the PK from its context (loadSavedPK, no load
// under the SRK, so no post-load PersistSRK), and withTransfer's a.t.SRK()
// answers the cached persistent SRK; T's TPM2_Load meets TPM_RC_HANDLE and
// srkAgain, under TransientSRKOnly, makes a transient copy that stays
// loaded beside the PK, T and the EK activation loads: four objects.
//
// HELD: nothing is left loaded that the agent does not hold after the
// request (checked in the same test).
import (
	"context"
	"testing"
	"time"
)

func TestReview38DaemonPeerProveWithTheSRKEvictedMidLife(t *testing.T) {
	ctx := context.Background()
	env, b, a := review35Daemon(t, false)
	if _, err := a.Provision(ctx, review8Req()); err != nil {
		t.Fatal(err)
	}
	peer, err := a.PeerIdentity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	prove := func() error {
		c, err := NewPeerChallenge(peer, caBundle(t, env), time.Now)
		if err != nil {
			return err
		}
		_, err = a.PeerProve(ctx, c)
		return err
	}
	// Warm: the PK's context is kept.
	if err := prove(); err != nil {
		t.Fatalf("peer prove before the eviction: %v", err)
	}
	if a.pk == nil {
		t.Fatal("not mounted: the daemon kept no PK context")
	}
	review31EvictSRK(t, env, b)
	err = prove()
	t.Logf("peer prove with the SRK evicted under the daemon: %v (SRK persisted again: %v)", err, review26SRKThere(env))
	review32Unheld(t, env, a, "peer prove")
	if err != nil {
		t.Fatalf("FLAW: peer prove to the running daemon after another program evicted the SRK: %v "+
			"(T's load under the cached SRK went to a transient copy, held beside the PK, T and the EK)", err)
	}
}
