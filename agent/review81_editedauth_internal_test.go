package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
)

// Held: a key's own authValue edited in the state (A4 or A6: an extractable
// key's record carries it, "auth") is the TPM's refusal of the HMAC, exit
// 11 (docs/exit-codes.md: a wrong value or a changed command), never
// forged (exit 15), in a one-shot agent and in a daemon (KeepSession) whose
// cache holds the key warm (the cached handle's BAD_AUTH is stale: dropped,
// the key loaded again, refused again, now fresh: refusedFresh forgets it
// and asks for the sweep). Steps: an extractable P-256 key signs; one byte
// of its auth flipped in the state; two signs refused; nothing held by
// nobody; the auth restored; the key signs again and nothing is left.
func TestReview81EditedKeyAuthIsBadAuthNotForged(t *testing.T) {
	t.Parallel()
	for _, daemon := range []bool{false, true} {
		name := "oneshot"
		if daemon {
			name = "daemon"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			env := swtpmtest.Start(t)
			a := provisioned(t, env)
			if daemon {
				dir := a.dir
				a.Close()
				var err error
				if a, err = New(Config{TPM: env.TPM, StateDir: dir, KeepSession: true}); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { a.Close() })
			}
			if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "x", Type: "ecc-p256", Extractable: true}); err != nil {
				t.Fatal(err)
			}
			signVerifies(t, a, a, "x")
			var orig string
			setAuth := func(f func(string) string) {
				t.Helper()
				if err := a.st.Update(ctx, func(tx *store.Tx) error {
					var k keyRecord
					if err := tx.Get(keyRecName("x"), &k); err != nil {
						return err
					}
					k.Auth = f(k.Auth)
					return tx.Put(keyRecName("x"), k)
				}); err != nil {
					t.Fatal(err)
				}
			}
			setAuth(func(s string) string {
				orig = s
				b, err := hex.DecodeString(s)
				if err != nil || len(b) == 0 {
					t.Fatalf("the extractable key's auth in the state: %q", s)
				}
				b[0] ^= 1
				return hex.EncodeToString(b)
			})
			d := sha256.Sum256([]byte("x"))
			for i := range 2 {
				_, err := a.Sign(ctx, "x", d[:], api.SignOptions{})
				t.Logf("sign %d with the key's auth edited: %v (exit %d)", i+1, err, api.ExitCode(err))
				if err == nil {
					t.Fatal("signed with an edited auth")
				}
				if c := api.ExitCode(err); c != api.ExitBadAuth && c != api.ExitTampered {
					t.Errorf("the key's own auth edited in the state: exit %d, want %d or %d", c, api.ExitBadAuth, api.ExitTampered)
				}
				if left := unheldLeft(t, a); len(left) != 0 {
					t.Errorf("held by nobody after the refused sign: %v", left)
				}
			}
			setAuth(func(string) string { return orig })
			signVerifies(t, a, a, "x")
			if left := unheldLeft(t, a); len(left) != 0 {
				t.Errorf("held by nobody at the end: %v", left)
			}
		})
	}
}
