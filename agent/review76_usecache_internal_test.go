package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// Held: the key use policy checked once per cached key state (usePolicy,
// f708e17) is never stale. One name is used in turn for a fixed key, an
// extractable key, a key --duplicable-by an authority, and a fixed key
// again, each deleted and made anew while the agent's key-state cache held
// the previous one (the same agent, the state read by a sign just before):
// every sign after the change runs under the new key's policy (the TPM
// would answer a policy failure to the old one), and its signature
// verifies with the new key's public part, never the old's; no genuine
// key is refused as tampered.
func TestReview76CachedUsePolicyFollowsTheKey(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := provisioned(t, env)
	authority, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(authority.Public())
	authPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	digest := sha256.Sum256([]byte("review 76"))
	for i, req := range []api.CreateRequest{
		{Name: "k", Type: "ecc-p256"},
		{Name: "k", Type: "ecc-p256", Extractable: true},
		{Name: "k", Type: "ecc-p256", DuplicableBy: authPEM},
		{Name: "k", Type: "ecc-p256"},
	} {
		if i > 0 {
			if err := a.DeleteKey(ctx, "k"); err != nil {
				t.Fatalf("step %d: delete: %v", i, err)
			}
		}
		if _, err := a.CreateKey(ctx, req); err != nil {
			t.Fatalf("step %d: create %+v: %v", i, req, err)
		}
		pub, _, err := a.KeyPublic(ctx, "k")
		if err != nil {
			t.Fatalf("step %d: the key's public part: %v", i, err)
		}
		for n := range 2 { // the second from the cached state
			sig, err := a.Sign(ctx, "k", digest[:], api.SignOptions{})
			if err != nil {
				t.Fatalf("step %d (extractable %v, duplicable-by %v), sign %d: %v", i, req.Extractable, req.DuplicableBy != "", n, err)
			}
			if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), digest[:], sig) {
				t.Fatalf("step %d, sign %d: the signature is not the new key's", i, n)
			}
		}
	}
}
