package agent

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// Found by review of issue 14: status and policy show, which no longer
// evict the daemon's hot key, had stopped loading the PK and read only its
// blob's public part; a PK blob whose private part is broken (A4 editing the
// state, a bad sector, a mismatched backup) then reported "satisfied" while
// no key under the PK could be loaded. They load the PK again (the cached
// key stays resident): the TPM's integrity check refuses the blob.
func TestStatusLoadsThePK(t *testing.T) {
	env := swtpmtest.Start(t)
	a := keptAgent(t, env)
	ctx := context.Background()
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	// Break the PK's private blob (its integrity HMAC), public part intact.
	if err := a.st.Update(ctx, func(tx *store.Tx) error {
		raw, err := tx.ReadBlob(blobPK)
		if err != nil {
			return err
		}
		b, err := tpm.UnmarshalBlob(raw)
		if err != nil {
			return err
		}
		b.Private.Buffer[len(b.Private.Buffer)/2] ^= 0x55
		return tx.WriteBlob(blobPK, b.Marshal())
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Status(ctx); err == nil {
		t.Fatal("status says nothing of a PK blob that no longer loads")
	}
	if _, err := a.ShowPolicy(ctx); err == nil {
		t.Fatal("policy show says nothing of a PK blob that no longer loads")
	}
}

// Found by review of issue 14 (older than it): status compared the PCRs
// with the values the state says the PK needs, and nothing compared those
// with the PK's authPolicy: A4 rewriting pcr_values to the current (bad)
// PCRs made status say "satisfied" on a platform the PK refuses. Status
// now checks the state's policy record against the loaded PK's authPolicy.
func TestStatusChecksThePolicyRecordAgainstThePK(t *testing.T) {
	env := swtpmtest.Start(t)
	a := keptAgent(t, env)
	ctx := context.Background()
	d := sha256.Sum256([]byte("bad boot"))
	if err := env.TPM.PCRExtend(16, tpm2.TPMAlgSHA256, d[:]); err != nil {
		t.Fatal(err)
	}
	if _, err := signK(a); !errors.Is(err, tpm.ErrPolicyNotSatisfied) {
		t.Fatalf("sign on the bad boot: %v", err)
	}
	if st, err := a.Status(ctx); err != nil || st.Policy.Satisfied {
		t.Fatalf("control: status on the bad boot: %v %+v", err, st.Policy)
	}
	cur, err := env.TPM.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7, 16})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.st.Update(ctx, func(tx *store.Tx) error {
		var s pkState
		if err := tx.Get(recPK, &s); err != nil {
			return err
		}
		v, err := policy.ParsePCRValues(s.Policy.Values)
		if err != nil {
			return err
		}
		for i := range v.Values {
			v.Values[i] = cur[i]
		}
		raw, err := json.Marshal(v)
		if err != nil {
			return err
		}
		s.Policy.Values = raw
		return tx.Put(recPK, s)
	}); err != nil {
		t.Fatal(err)
	}
	if st, err := a.Status(ctx); !errors.Is(err, api.ErrTampered) {
		t.Fatalf("status over an edited policy record: %v (%+v), want ErrTampered", err, st.Policy)
	}
}
