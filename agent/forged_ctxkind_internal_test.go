package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// A1 renames the daemon's ContextLoad of a cached key to a session handle
// (an unused one, or the kept policy session's): the channel refuses it
// as forged, since a saved object loads as a transient one (tpm.madeHandle),
// the key is loaded again from its blob and the sign works, nothing is left
// loaded that provd does not hold, and later signs work (found by review:
// the cache kept the session's handle as the key's, and the key failed
// until restart).
func TestContextLoadAnsweredWithASessionHandle(t *testing.T) {
	for _, tc := range []struct {
		name string
		to   func(a *Agent) tpm2.TPMHandle
	}{
		{"unused-hmac-kind", func(*Agent) tpm2.TPMHandle { return 0x02000007 }},
		{"kept-op-session", func(a *Agent) tpm2.TPMHandle { return a.opHandle() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env, a := kEvicted(t, b)
			ctx := context.Background()
			d := sha256.Sum256([]byte("kept"))
			if tc.name == "kept-op-session" {
				if _, err := a.Sign(ctx, "k2", d[:], api.SignOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			to := tc.to(a)
			if to == 0 {
				t.Fatal("no kept policy session")
			}
			t.Logf("renaming ContextLoad answer to 0x%08x (op session 0x%08x)", uint32(to), uint32(a.opHandle()))
			real := renameContextLoad(b, to)
			_, err := signK(a)
			b.Set(nil)
			if *real == 0 {
				t.Fatal("the attack did not run")
			}
			t.Logf("first sign after the forgery: %v (forged: %v); cache holds %x", err, errors.Is(err, tpm.ErrResponseForged), a.keys.Handles())
			left, lerr := env.TPM.Handles(tpm.TransientHandles)
			if lerr != nil {
				t.Fatal(lerr)
			}
			for _, h := range left {
				if h == *real && !containsHandle(a.keys.Handles(), h) {
					t.Errorf("the TPM loaded k at 0x%08x, provd was told 0x%08x: still loaded after the operation, nobody's (transient %x, cache %x)", uint32(*real), uint32(to), left, a.keys.Handles())
				}
			}
			if err != nil && !errors.Is(err, tpm.ErrResponseForged) {
				t.Errorf("the forged answer is reported as %v, not ErrResponseForged", err)
			}
			// Does the poisoned entry heal?
			for i := 0; i < 3; i++ {
				_, err2 := signK(a)
				t.Logf("later sign %d: %v; cache %x; op session 0x%08x", i, err2, a.keys.Handles(), uint32(a.opHandle()))
				if err2 != nil && i == 2 {
					t.Errorf("k still unusable after the bus left: %v", err2)
				}
			}
		})
	}
}
