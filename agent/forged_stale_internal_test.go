package agent

import (
	"context"
	"crypto/sha256"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// Found by the second review of issue 14, and accepted (docs/threat-model.md,
// the cached-handle row): A1 passes the daemon's TPM2_Sign (cached key, kept
// session) on to the TPM, which signs, and answers an error code of its own
// (an error answer has no HMAC): TPM_RC_HANDLE or TPM_RC_BAD_AUTH. useKey
// takes it for a stale cached handle, drops or forgets the key, loads it
// again and signs once more: the TPM signs twice for one request (a second
// signature over provd's own digest; the outputs of the other uses travel
// encrypted). That retry is what lets provd recover from a real TPM reset
// or a planted object at once (TestTPMFaultsUnderProvd,
// TestStaleHandleNeverStopsProvd). What must hold: no more than one extra
// run, and nothing left loaded that nobody holds (a forgotten key's object
// is swept: found by the same review).
func TestForgedStaleHandleCostsOneMoreSignature(t *testing.T) {
	for _, c := range []struct {
		name string
		rc   uint16
	}{
		{"TPM_RC_HANDLE-h1", 0x018b},
		{"TPM_RC_BAD_AUTH-s1", 0x09a2},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, env, a := busAgent(t) // k cached, session kept
			ran := forgeOnce(b, isSign, c.rc)
			_, err := signK(a)
			b.Set(nil)
			if n := ran(); err != nil || n > 2 {
				t.Fatalf("one sign request with a forged %s after the TPM signed: %v, the TPM signed %d times; want success and at most 2", c.name, err, n)
			}
			hs, herr := env.TPM.Handles(tpm.TransientHandles)
			if herr != nil {
				t.Fatal(herr)
			}
			if len(hs) > len(a.keys.Handles()) {
				t.Errorf("transient handles %x, the cache holds %x: the forgotten key's object leaked", hs, a.keys.Handles())
			}
		})
	}
}

// A forged TPM_RC_HANDLE on a cached key's use (found by the second review
// of issue 14): the cache forgets the key without a flush, on the bus's
// word; the sweep marked with it flushes the object the TPM still holds,
// and the next honest request works.
func TestForgedHandleErrorLeaksNoSlot(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	a := keptAgent(t, env)
	ctx := context.Background()
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k2", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCSign {
			return nil, nil, false
		}
		rsp, err := next.Send(cmd)
		forge := false
		once.Do(func() { forge = true })
		if forge {
			return []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x8b}, nil, true
		}
		return rsp, err, true
	})
	if _, err := signK(a); err != nil {
		t.Logf("forged sign: %v", err)
	}
	b.Set(nil)
	hs, err := env.TPM.Handles(tpm.TransientHandles)
	if err != nil {
		t.Fatal(err)
	}
	if len(hs) > len(a.keys.Handles()) {
		t.Errorf("after one forged TPM_RC_HANDLE: transient handles %x, the cache holds %x", hs, a.keys.Handles())
	}
	d := sha256.Sum256([]byte("honest"))
	if _, err := a.Sign(ctx, "k2", d[:], api.SignOptions{}); err != nil {
		t.Fatalf("the next honest request: %v", err)
	}
}

// A1 passes the kept session's TPM2_Sign on and answers the warning
// TPM_RC_RETRY; counting.Send resends the same bytes, and the TPM refuses
// them (the policy session's digest was reset by the first Sign:
// TPM_RC_POLICY_FAIL), which useKey does not retry. The TPM signed once.
func TestForgedRetryIsNotRunTwice(t *testing.T) {
	b, _, a := busAgent(t)
	ran := forgeOnce(b, isSign, 0x0922) // TPM_RC_RETRY
	_, err := signK(a)
	b.Set(nil)
	if ran() != 1 || err == nil {
		t.Fatalf("a forged TPM_RC_RETRY: %v, the TPM signed %d times", err, ran())
	}
	t.Logf("%v, the TPM signed once", err)
	if _, err := signK(a); err != nil {
		t.Fatalf("the next sign: %v", err)
	}
}
