package agent

import (
	"bytes"
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/test/swtpmtest"
)

// Found by the second review of issue 14: A1 passes TPM2_HMAC_Start (an
// HMAC over more than 1024 bytes) on to the TPM, which makes the sequence
// object, and changes one byte of the success answer (its response HMAC
// fails): provd fails the request, and the sequence object stayed in the
// TPM with nobody holding it (the sweep was marked for failed Load and
// CreateLoaded answers only). Every handle-making command whose answer
// fails now marks the operation's sweep: nothing is left.
func TestForgedHMACStartAnswerLeavesNothing(t *testing.T) {
	for _, c := range []struct {
		name string
		cc   tpm2.TPMCC
	}{
		{"HMAC_Start-response-HMAC-flipped", tpm2.TPMCCHMACStart},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			a := keptAgent(t, env)
			ctx := context.Background()
			if _, err := a.DeriveKey(ctx, api.DeriveRequest{Name: "h", Label: "mac", Type: "hmac-sha256",
				Approval: approveRecipe(t, a, officer.Recipe{Type: "hmac-sha256", Label: "mac"})}); err != nil {
				t.Fatal(err)
			}
			if _, err := a.HMAC(ctx, "h", []byte("warm")); err != nil { // h cached, session kept
				t.Fatal(err)
			}
			var mu sync.Mutex
			made := tpm2.TPMHandle(0)
			b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if swtpmtest.CommandCode(cmd) != c.cc {
					return nil, nil, false
				}
				mu.Lock()
				defer mu.Unlock()
				if made != 0 {
					return nil, nil, false
				}
				rsp, err := next.Send(cmd)
				if err != nil || len(rsp) < 14 || rsp[6]|rsp[7]|rsp[8]|rsp[9] != 0 {
					return rsp, err, true
				}
				made = tpm2.TPMHandle(uint32(rsp[10])<<24 | uint32(rsp[11])<<16 | uint32(rsp[12])<<8 | uint32(rsp[13]))
				out := bytes.Clone(rsp)
				out[len(out)-3] ^= 0x01 // inside the last session's response HMAC
				return out, nil, true
			})
			_, err := a.HMAC(ctx, "h", bytes.Repeat([]byte{7}, 3000))
			b.Set(nil)
			left, lerr := env.TPM.Leftovers()
			if lerr != nil {
				t.Fatal(lerr)
			}
			held := append(a.keys.Handles(), a.opHandle())
			t.Logf("HMAC with a forged %s answer: %v; the TPM made 0x%08x; left in the TPM %x, provd holds %x", c.name, err, uint32(made), left, held)
			if err == nil || made == 0 {
				t.Fatalf("attack did not run: err %v, made %x", err, made)
			}
			if slices.Contains(left, made) && !slices.Contains(held, made) {
				t.Fatalf("0x%08x left in the TPM, held by nobody", uint32(made))
			}
		})
	}
}
