package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// Found by review of issue 14: provision makes the PK with
// TPM2_CreateLoaded. A1 passes the command on and changes one byte of the
// answer's outPrivate: the salted session's response HMAC catches it
// (tpm_response_forged), but go-tpm then returns no response, so there was
// no handle to flush, and the TPM had answered SUCCESS, so no sweep ran:
// the PK stayed loaded after provision failed. A handle-making command whose
// answer fails now marks the channel for the operation's sweep.
func TestForgedCreateLoadedLeavesNothing(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	a, err := New(Config{TPM: env.TPM, StateDir: t.TempDir() + "/state", KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	hit := 0
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCCreateLoaded || binary.BigEndian.Uint32(cmd[10:14]) != 0x81000001 || hit > 0 {
			return nil, nil, false
		}
		rsp, err := next.Send(cmd)
		if err != nil || len(rsp) < 40 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
			return rsp, err, true
		}
		hit++
		rsp = append([]byte(nil), rsp...)
		rsp[30] ^= 1 // inside outPrivate, covered by the response HMAC
		return rsp, nil, true
	})
	_, perr := a.Provision(context.Background(), api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	b.Set(nil)
	if hit == 0 {
		t.Fatal("no CreateLoaded of the PK seen: the attack is not mounted")
	}
	if !errors.Is(perr, tpm.ErrResponseForged) {
		t.Fatalf("provision with a changed CreateLoaded answer: %v, want tpm_response_forged", perr)
	}
	if hs, err := env.TPM.Handles(tpm.TransientHandles); err != nil || len(hs) != 0 {
		t.Fatalf("left loaded after the failed provision: %x (%v)", hs, err)
	}
}

// TPM2_Load of a key under the PK runs in the kept policy session alone (no
// extra salted session): A1 changing the name in the answer (to pass off
// another object as the key) is refused by that session's response HMAC
// (salt and authValue), and the key the TPM loaded is swept.
func TestForgedLoadAnswerInKeptSession(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	a := keptAgent(t, env)
	ctx := context.Background()
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k2", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	a2, err := New(Config{TPM: env.TPM, StateDir: a.dir, KeepSession: true})
	a.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Close()
	if _, err := signK(a2); err != nil {
		t.Fatal(err)
	}
	hit := 0
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCLoad || binary.BigEndian.Uint32(cmd[10:14]) == 0x81000001 || hit > 0 {
			return nil, nil, false
		}
		rsp, err := next.Send(cmd)
		if err != nil || len(rsp) < 30 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
			return rsp, err, true
		}
		hit++
		rsp = append([]byte(nil), rsp...)
		rsp[25] ^= 1 // inside the returned name
		return rsp, nil, true
	})
	d := [32]byte{1}
	_, serr := a2.Sign(ctx, "k2", d[:], api.SignOptions{})
	b.Set(nil)
	if hit == 0 {
		t.Fatal("attack not mounted")
	}
	if !errors.Is(serr, tpm.ErrResponseForged) {
		t.Fatalf("a changed Load answer: %v, want tpm_response_forged", serr)
	}
	hs, err := env.TPM.Handles(tpm.TransientHandles)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if !containsHandle(a2.keys.Handles(), h) {
			t.Errorf("transient %x left loaded, not the cache's", h)
		}
	}
}

func containsHandle(hs []tpm2.TPMHandle, h tpm2.TPMHandle) bool {
	for _, x := range hs {
		if x == h {
			return true
		}
	}
	return false
}
