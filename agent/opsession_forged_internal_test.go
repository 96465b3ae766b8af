package agent

import (
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

// Found by review of issue 14: an error answer carries no HMAC, so A1 can
// pass provd's Sign (in the kept session) on to the TPM, which signs, and
// answer TPM_RC_POLICY_FAIL; withOpPolicy took that for a spoiled kept
// session and ran the use again in a fresh session, so the TPM signed twice
// for one request. Now a failure of the authorized command is never retried:
// the request fails, and the TPM signed once.
func TestForgedFailureIsNotRunTwice(t *testing.T) {
	b, _, a := busAgent(t)
	// TPM_RC_POLICY_FAIL (0x01D, format 1) | TPM_RC_S | TPM_RC_1
	ran := forgeOnce(b, isSign, 0x099d)
	_, err := signK(a)
	b.Set(nil)
	if err == nil || ran() != 1 {
		t.Fatalf("one request with a forged failure: %v, the TPM signed %d times; want the failure and 1", err, ran())
	}
	if _, err := signK(a); err != nil {
		t.Fatalf("the next sign: %v", err)
	}
}

// busAgent is keptAgent on a swtpm behind a hookBus, its key k signed with
// once (cached, the session kept).
func busAgent(t *testing.T) (*swtpmtest.Bus, *swtpmtest.Env, *Agent) {
	t.Helper()
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	a := keptAgent(t, env)
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	return b, env, a
}

// forgeOnce has b pass every command match picks on to the TPM and answer
// the first of them with the error code rc (format-1 bytes, as the TPM
// would) in place of the TPM's answer: an interposer forging a failure over
// a command the TPM ran. ran says how many of them the TPM ran with success.
func forgeOnce(b *swtpmtest.Bus, match func(cmd []byte) bool, rc uint16) (ran func() int) {
	var mu sync.Mutex
	executed, forged := 0, 0
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if !match(cmd) {
			return nil, nil, false
		}
		rsp, err := next.Send(cmd)
		mu.Lock()
		defer mu.Unlock()
		if err == nil && len(rsp) >= 10 && rsp[6]|rsp[7]|rsp[8]|rsp[9] == 0 {
			executed++
		}
		if forged == 0 {
			forged++
			return []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, byte(rc >> 8), byte(rc)}, nil, true
		}
		return rsp, err, true
	})
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return executed
	}
}

func isSign(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == tpm2.TPMCCSign }

// The same forgery on the TPM2_Load of a key under the PK, in the kept
// session: the TPM loads the key once, provd hears the failure and does not
// load again, and the operation's sweep flushes the copy nobody holds.
func TestForgedLoadFailureIsNotRunTwice(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	a := keptAgent(t, env)
	ctx := t.Context()
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k2", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	dir := a.dir
	a.Close()
	a2, err := New(Config{TPM: env.TPM, StateDir: dir, KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Close()
	if _, err := signK(a2); err != nil {
		t.Fatal(err)
	}
	// The load of a key under the PK (a transient parent), not the PK's
	// own under the persistent SRK.
	ran := forgeOnce(b, func(cmd []byte) bool {
		return swtpmtest.CommandCode(cmd) == tpm2.TPMCCLoad && binary.BigEndian.Uint32(cmd[10:14]) != 0x81000001
	}, 0x099d)
	d := sha256.Sum256([]byte("k2"))
	_, err = a2.Sign(ctx, "k2", d[:], api.SignOptions{})
	b.Set(nil)
	if err == nil || ran() != 1 {
		t.Fatalf("sign k2 with a forged load failure: %v, loads by the TPM %d; want the failure and 1", err, ran())
	}
	hs, err := env.TPM.Handles(tpm.TransientHandles)
	if err != nil {
		t.Fatal(err)
	}
	if len(hs) > len(a2.keys.Handles()) {
		t.Errorf("transient handles %x after the forged failure, the cache holds %x: the loaded copy leaked", hs, a2.keys.Handles())
	}
}
