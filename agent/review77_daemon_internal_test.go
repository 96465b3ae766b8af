package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"testing"

	"github.com/provd/provd/api"
)

// Held: the transfer key's own policy session (review 74: T's USER role
// is its policy's, one more session per load under T) fits beside what a
// daemon keeps (KeepSession: the PK's context and kept policy session, the
// key cache) on swtpm's 3 object and 3 session slots. A daemon on a
// receiver with three keys of its own resident and a key received under
// a legacy T: peer identity makes the new T (keeping the old), a key is
// imported under the new T, and every key then signs, in turns, twice
// (cold and warm): the legacy key (HMAC session), the new one (T's policy
// session), the daemon's own; no TPM_RC_OBJECT_MEMORY or
// TPM_RC_SESSION_MEMORY, and nothing is left in the TPM once the daemon
// closes.
func TestReview77TransferredKeysInABusyDaemon(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	envB, a, b, _, _ := review77LegacyReceiver(t)
	b.Close()
	d, err := New(Config{TPM: envB.TPM, StateDir: b.dir, KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	own := []string{"c1", "c2", "c3"}
	for _, n := range own {
		if _, err := d.CreateKey(ctx, api.CreateRequest{Name: n, Type: "ecc-p256"}); err != nil {
			t.Fatal(err)
		}
		signVerifies(t, d, d, n)
	}
	peer, err := d.PeerIdentity(ctx)
	if err != nil {
		t.Fatalf("peer identity in the daemon: %v", err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k2", Type: "ecc-p256", Extractable: true}); err != nil {
		t.Fatal(err)
	}
	dup, err := a.DupExport(ctx, api.DupExportRequest{Name: "k2", Peer: peer, Approval: approveDup(t, a, "k2", peer), EKCA: caBundle(t, envB)})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range own {
		signVerifies(t, d, d, n)
	}
	if _, err := d.DupImport(ctx, api.DupImportRequest{Name: "k2", Dup: dup}); err != nil {
		t.Fatalf("dup import in the daemon with its keys resident: %v", err)
	}
	for range 2 {
		for _, n := range []string{"k2", "old", "c1", "k2", "c2", "old", "c3"} {
			switch n {
			case "k2":
				signVerifies(t, a, d, n)
			case "old": // A's "k", received under the legacy T
				pub, _, err := a.KeyPublic(ctx, "k")
				if err != nil {
					t.Fatal(err)
				}
				dg := sha256.Sum256([]byte(n))
				sig, err := d.Sign(ctx, n, dg[:], api.SignOptions{})
				if err != nil {
					t.Fatalf("sign with the key under the legacy T in the daemon: %v", err)
				}
				if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), dg[:], sig) {
					t.Fatal("the legacy key's signature does not verify")
				}
			default:
				signVerifies(t, d, d, n)
			}
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if left, err := envB.TPM.Leftovers(); err != nil || len(left) != 0 {
		t.Errorf("left in the TPM after the daemon closed: %v (%v)", left, err)
	}
}
