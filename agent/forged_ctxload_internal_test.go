package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// Found by the second review of issue 14: A1 answers the cache's
// TPM2_ContextLoad of k (the TPM loaded it) with the handle of k2, resident
// beside it. The cache now refuses a handle it already holds (only a forged
// answer names one) and marks the sweep; before, it took it, provd's Sign of
// k went to k2's object and the TPM refused it (the session's HMAC covers
// the key's name), and the copy of k the TPM had loaded stayed, nobody's.
// Either way the signature is k's; now nothing is left loaded.
func TestForgedContextLoadHandle(t *testing.T) {
	b := &swtpmtest.Bus{}
	env, a := kEvicted(t, b)
	ctx := context.Background()
	d := sha256.Sum256([]byte("kept"))
	hs := a.keys.Handles()
	if len(hs) != 1 {
		t.Fatalf("resident after status: %x", hs)
	}
	k2h := hs[0]
	real := renameContextLoad(b, k2h)
	sig, err := signK(a)
	b.Set(nil)
	if err != nil {
		t.Fatalf("sign k: %v", err)
	}
	pub, _, err := a.KeyPublic(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("the signature is not k's")
	}
	left, err := env.TPM.Handles(tpm.TransientHandles)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > len(a.keys.Handles()) {
		t.Errorf("the TPM loaded k at 0x%08x, provd was told 0x%08x (k2); transient handles now %x, the cache holds %x", uint32(*real), uint32(k2h), left, a.keys.Handles())
	}
}

// renameContextLoad arms b: the next ContextLoad the TPM answers with
// success is answered to provd with handle to instead; *real is then the
// handle the TPM gave.
func renameContextLoad(b *swtpmtest.Bus, to tpm2.TPMHandle) (real *tpm2.TPMHandle) {
	real = new(tpm2.TPMHandle)
	var mu sync.Mutex
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCContextLoad {
			return nil, nil, false
		}
		mu.Lock()
		defer mu.Unlock()
		if *real != 0 {
			return nil, nil, false
		}
		rsp, err := next.Send(cmd)
		if err != nil || len(rsp) < 14 || rsp[6]|rsp[7]|rsp[8]|rsp[9] != 0 {
			return rsp, err, true
		}
		*real = tpm2.TPMHandle(binary.BigEndian.Uint32(rsp[10:14]))
		binary.BigEndian.PutUint32(rsp[10:14], uint32(to))
		return rsp, nil, true
	})
	return real
}

// kEvicted is a daemon's agent (keptAgent) on a TPM behind b with keys k
// and k2, each used twice (k's context saved), then a status: k is evicted
// to its saved context, k2 resident, and k's next use is a ContextLoad.
func kEvicted(t *testing.T, b *swtpmtest.Bus) (*swtpmtest.Env, *Agent) {
	t.Helper()
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	a := keptAgent(t, env)
	ctx := context.Background()
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k2", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("kept"))
	for range 2 {
		if _, err := signK(a); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Sign(ctx, "k2", d[:], api.SignOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Status(ctx); err != nil { // Trim(1): k (least recent) evicted
		t.Fatal(err)
	}
	return env, a
}
