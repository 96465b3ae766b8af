package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// Held: policyRecord.checked (commit c2c9a86) locks no one out of
// recovery. With the state's policy record edited (its digest, as A4
// would), status refuses it as tampered, and still provision --force
// replaces the PK (a new record that reads again), and zeroize on the
// tampered state wipes it; a genuine record reads as before.
func TestReview73TamperedPolicyRecordStillRecoverable(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	tamper := func(a *Agent) {
		t.Helper()
		if err := a.st.Update(ctx, func(tx *store.Tx) error {
			st, err := a.readPK(tx)
			if err != nil {
				return err
			}
			st.Policy.Digest = strings.Repeat("ab", 32)
			return tx.Put(recPK, st)
		}); err != nil {
			t.Fatal(err)
		}
	}
	a := testAgent(t, env, nil)
	provisionSigned(t, a)
	if _, err := a.Status(ctx); err != nil {
		t.Fatalf("a genuine record: status %v", err)
	}
	tamper(a)
	if _, err := a.Status(ctx); !errors.Is(err, api.ErrTampered) {
		t.Fatalf("status over the edited record: %v, want tampered", err)
	}
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, Force: true,
		Signer: signer.Public()})
	if err != nil {
		t.Fatalf("provision --force over the edited record: %v", err)
	}
	if s, err := a.Status(ctx); err != nil || !s.Provisioned || s.PolicyDigest != res.PolicyDigest {
		t.Fatalf("status after provision --force: %+v %v (want digest %s)", s, err, res.PolicyDigest)
	}
	tamper(a)
	if _, err := a.Zeroize(ctx, api.ZeroizeOptions{}); err != nil {
		t.Fatalf("zeroize over the edited record: %v", err)
	}
	if s, err := a.Status(ctx); err != nil || s.Provisioned {
		t.Fatalf("status after zeroize: %+v %v", s, err)
	}
}
