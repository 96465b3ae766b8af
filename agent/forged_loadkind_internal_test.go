package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// A1 answers each Load of a key use (the PK's, the key's) with a
// persistent handle: the use fails with ErrResponseForged, never runs the
// Sign (no command is retried after the refusal), and nothing is left
// loaded once the operation's sweep ran; the next sign works.
func TestKeyUseLoadRenamedToAPersistentHandle(t *testing.T) {
	for _, c := range []struct {
		nth  int // which Load of the use
		name string
	}{{1, "the PK's load"}, {2, "the key's load"}} {
		nth := c.nth
		t.Run(c.name, func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			dir := t.TempDir() + "/state"
			ctx := context.Background()
			a0, err := New(Config{TPM: env.TPM, StateDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := a0.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7, 16}, AllowResettable: true}); err != nil {
				t.Fatal(err)
			}
			if _, err := a0.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"}); err != nil {
				t.Fatal(err)
			}
			a0.Close()
			a, err := New(Config{TPM: env.TPM, StateDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			loads, signs, flipped := 0, 0, false
			b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				switch swtpmtest.CommandCode(cmd) {
				case tpm2.TPMCCSign:
					signs++
				case tpm2.TPMCCLoad:
					loads++
					if loads == nth {
						rsp, err := next.Send(cmd)
						if err == nil && len(rsp) >= 14 && rsp[6]|rsp[7]|rsp[8]|rsp[9] == 0 {
							flipped = true
							rsp[10] = 0x81
						}
						return rsp, err, true
					}
				}
				return nil, nil, false
			})
			d := sha256.Sum256([]byte("x"))
			_, err = a.Sign(ctx, "k", d[:], api.SignOptions{})
			b.Set(nil)
			if !flipped {
				t.Fatalf("the attack did not run: %d loads", loads)
			}
			if !errors.Is(err, tpm.ErrResponseForged) {
				t.Errorf("got %v, want ErrResponseForged", err)
			}
			if signs != 0 {
				t.Errorf("%d Sign commands after a refused load", signs)
			}
			left, lerr := env.TPM.Leftovers()
			if lerr != nil {
				t.Fatal(lerr)
			}
			if len(left) > len(a.keys.Handles()) {
				t.Errorf("left loaded: %x, held %x", left, a.keys.Handles())
			}
			if _, err := a.Sign(ctx, "k", d[:], api.SignOptions{}); err != nil {
				t.Errorf("sign after the bus left: %v", err)
			}
		})
	}
}
