package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// TestSwappedPKBlobIsTampered: a PK blob that loads under the SRK but is not
// the PK the state names is api.ErrTampered on every path that loads the PK:
// seal and policy show (withPK) as well as key use (readKeyState).
func TestSwappedPKBlobIsTampered(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	if _, err := officertest.Derive(t, ctx, a, api.DeriveRequest{Name: "k", Label: "k", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	if err := a.keys.Close(); err != nil {
		t.Fatal(err)
	}
	// Another object under the same SRK: it loads, but its name is not the PK's.
	srk, err := a.t.SRK()
	if err != nil {
		t.Fatal(err)
	}
	other, err := a.t.Create(srk, nil, tpm.SealTemplate(nil), tpm.Sensitive{Data: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.st.Update(ctx, func(tx *store.Tx) error { return tx.WriteBlob(blobPK, other.Marshal()) }); err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(nil)
	for name, op := range map[string]func() error{
		"seal":        func() error { _, err := a.Seal(ctx, api.SealRequest{Data: []byte("s"), PCRs: []int{7}}); return err },
		"policy show": func() error { _, err := a.ShowPolicy(ctx); return err },
		"sign":        func() error { _, err := a.Sign(ctx, "k", d[:], api.SignOptions{}); return err },
	} {
		if err := op(); !errors.Is(err, api.ErrTampered) {
			t.Errorf("%s with a swapped PK blob: %v, want api.ErrTampered", name, err)
		}
	}
}
