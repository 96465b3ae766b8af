package agent

// Review 40: what held.
//
// HELD: TestReview40ForgedEmptySRKDoesNotEvictInAProvisionedState.
// Attack (bus interposer, A1): the eviction evictSRKUnowed makes is
// triggered by a persist reported by tpm.PersistMissingSRK(false). A1
// answers the PK's TPM2_Load with TPM_RC_HANDLE on handle 1 (the SRK
// gone), then ReadPublic(0x81000001) with TPM_RC_HANDLE (empty), then
// stands ready to forge success for the TPM2_EvictControl that would
// persist it, so that the agent believes it persisted the SRK for this
// operation. Held, earlier than intended: no TPM2_EvictControl was sent
// (the test logs "evict false": the tpm package's srkAgain/pinnedSRK
// checks did not take the forged answers for an eviction), the key create
// succeeded and the SRK stays at 0x81000001. Even a reported persist
// would not evict here: evictSRKUnowed decides from the state on disk,
// which is provisioned, never from the bus. A1 can evict the SRK itself
// anyway (owner auth is empty); it gains nothing through provd.
//
// HELD: TestReview40LegacyGateReplacementStillInstalls.
// Question 3: updateUnderPK refuses a write when the state's PK Name
// differs from the one the operation began with. moveCounter's gate
// replacement (a PK record from before gates had an authValue) writes
// the same PK's record with a new gate: the name is unchanged and the
// install goes through; recordD (the first signed policy's D) writes
// under the same name too (every test that installs a fleet policy, e.g.
// the adoption test's movablePair, goes through it). No flow found that
// renames the PK before its write: provision writes its own records with
// a plain Update, and moveCounter is called by installPolicy only, after
// the PK record is committed.
//
// HELD (by reading): no deadlock of unlock's st.View: unlock is reached
// only from the deferred release of lock/lockKeep and from Rest, never
// inside a store transaction (no st.View/Update callback calls an
// exported method or a.unlock; the CLI and server hold no store lock;
// the serve lock is another file), and the store's lock times out
// (ErrLocked, logged) rather than hangs.
import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

func TestReview40ForgedEmptySRKDoesNotEvictInAProvisionedState(t *testing.T) {
	s := review32Mount(t, false)
	s.a.pk = nil
	loadForged, readForged, evictForged := false, false, false
	s.b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		switch cc := swtpmtest.CommandCode(cmd); {
		case cc == tpm2.TPMCCLoad && !loadForged && len(cmd) >= 14 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == tpm.SRKHandle:
			loadForged = true
			return swtpmtest.ErrorAnswer(tpm2.TPMRCHandle + 0x100), nil, true
		case cc == tpm2.TPMCCReadPublic && loadForged && !readForged && len(cmd) >= 14 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == tpm.SRKHandle:
			readForged = true
			return swtpmtest.ErrorAnswer(tpm2.TPMRCHandle + 0x100), nil, true
		case cc == tpm2.TPMCCEvictControl && readForged && !evictForged:
			evictForged = true
			// Success with a password session's empty response auth.
			rsp := make([]byte, 19)
			binary.BigEndian.PutUint16(rsp[0:2], uint16(tpm2.TPMSTSessions))
			binary.BigEndian.PutUint32(rsp[2:6], 19)
			rsp[18-2] = 0x01 // continueSession
			return rsp, nil, true
		}
		return nil, nil, false
	})
	_, err := s.a.CreateKey(context.Background(), api.CreateRequest{Name: "k", Type: "ecc-p256"})
	s.b.Set(nil)
	t.Logf("key create with the SRK forged gone and its persist forged: %v (forged: load %v, read %v, evict %v)", err, loadForged, readForged, evictForged)
	if !loadForged {
		t.Fatalf("not mounted: no PK TPM2_Load under the SRK (%v)", err)
	}
	if !review26SRKThere(s.env) {
		t.Errorf("a bus interposer's forged answers had the agent evict the SRK of a provisioned state")
	}
	if !review40Provisioned(t, s.dir) {
		t.Errorf("the state is no longer provisioned")
	}
}

func TestReview40LegacyGateReplacementStillInstalls(t *testing.T) {
	ctx := context.Background()
	st := srkRaceSignedState(t)
	a := st.a
	// A PK record from before gates had an authorization value.
	var name string
	if err := a.st.Update(ctx, func(tx *store.Tx) error {
		var pk pkState
		if err := tx.Get(recPK, &pk); err != nil {
			return err
		}
		if pk.CounterGate == "" {
			t.Fatalf("provision made no counter gate: the test does not reach moveCounter's replacement")
		}
		pk.CounterGateAuth = ""
		name = pk.Name
		return tx.Put(recPK, pk)
	}); err != nil {
		t.Fatal(err)
	}
	raw := st.policy(t, st.counter+1)
	got, err := a.InstallPolicy(ctx, raw)
	t.Logf("install over a gate without an authValue: %+v %v", got, err)
	if err != nil {
		t.Fatalf("updateUnderPK refused a legitimate install (gate replacement, same PK): %v", err)
	}
	var pk pkState
	if err := a.st.View(ctx, func(tx *store.Tx) error { return tx.Get(recPK, &pk) }); err != nil {
		t.Fatal(err)
	}
	if pk.Name != name || pk.CounterGateAuth == "" || pk.DName == "" {
		t.Errorf("after the install: PK %q (was %q), gate auth set %v, D %q", pk.Name, name, pk.CounterGateAuth != "", pk.DName)
	}
}
