package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review59CtxSwap records, per key being used, the TPMS_CONTEXT of every
// TPM2_ContextLoad the cache sends, and once armed swaps the context of
// key from for the one recorded for key to (the command changed on the
// bus, not its answer).
type review59CtxSwap struct {
	mu       sync.Mutex
	using    string
	ctxs     map[string][]byte
	from, to string
	swapped  int
	signRCs  []uint32 // answers to TPM2_Sign once armed
}

func (s *review59CtxSwap) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	if len(cmd) >= 10 && swtpmtest.CommandCode(cmd) == tpm2.TPMCCSign {
		rsp, err := next.Send(cmd)
		s.mu.Lock()
		if s.from != "" && len(rsp) >= 10 {
			s.signRCs = append(s.signRCs, binary.BigEndian.Uint32(rsp[6:10]))
		}
		s.mu.Unlock()
		return rsp, err, true
	}
	if swtpmtest.CommandCode(cmd) != tpm2.TPMCCContextLoad || len(cmd) < 10 {
		return nil, nil, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	body := cmd[10:]
	if s.from != "" && bytes.Equal(body, s.ctxs[s.from]) {
		other := s.ctxs[s.to]
		c := append(append([]byte{}, cmd[:10]...), other...)
		binary.BigEndian.PutUint32(c[2:6], uint32(len(c)))
		s.swapped++
		rsp, err := next.Send(c)
		return rsp, err, true
	}
	if s.using != "" {
		s.ctxs[s.using] = append([]byte{}, body...)
	}
	return nil, nil, false
}

func (s *review59CtxSwap) use(name string) {
	s.mu.Lock()
	s.using = name
	s.mu.Unlock()
}

// Held: A1 on the bus changes the cache's TPM2_ContextLoad of key k's
// saved context into a load of key k2's saved context (both provd's, both
// under the same PK, with the same policy and authValue, so the policy
// session's assertions hold for either): the TPM loads a copy of k2 and
// the cache serves it as k. Attacker: A1 (bus interposer), to get provd's
// signature request for k made with k2 (a signature by the wrong key
// answered as k's) or to make provd fail. Refused: the key use's salted
// policy session binds the object's name in its command HMAC, so the TPM
// refuses the Sign on k2's copy (named as k), the cache drops and flushes
// that handle, and k is loaded again from its blob; the signature is
// checked against k's public area anyway (SignDeferred). Nothing is left
// loaded and the lockout counter does not move (provd's keys are noDA).
func TestReview59ContextLoadSwappedForAnotherKeysContext(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	a := keptAgent(t, env) // the daemon's configuration, key "k"
	ctx := context.Background()
	for _, n := range []string{"k2", "k3"} {
		if _, err := a.CreateKey(ctx, api.CreateRequest{Name: n, Type: "ecc-p256"}); err != nil {
			t.Fatal(err)
		}
	}
	sw := &review59CtxSwap{ctxs: map[string][]byte{}}
	b.Set(sw.hook)
	d := sha256.Sum256([]byte("review 59"))
	sign := func(n string) ([]byte, error) {
		sw.use(n)
		defer sw.use("")
		return a.Sign(ctx, n, d[:], api.SignOptions{})
	}
	// Cycle through three keys with two resident slots: every key is
	// evicted, saved, and loaded back from its context.
	for range 3 {
		for _, n := range []string{"k", "k2", "k3"} {
			if _, err := sign(n); err != nil {
				t.Fatal(err)
			}
		}
	}
	sw.mu.Lock()
	if sw.ctxs["k"] == nil || sw.ctxs["k2"] == nil || bytes.Equal(sw.ctxs["k"], sw.ctxs["k2"]) {
		sw.mu.Unlock()
		t.Fatalf("contexts not recorded: k %d bytes, k2 %d bytes", len(sw.ctxs["k"]), len(sw.ctxs["k2"]))
	}
	sw.from, sw.to = "k", "k2"
	sw.mu.Unlock()

	// Make k the least recently used resident key, so its next use loads
	// its context again.
	for _, n := range []string{"k2", "k3"} {
		if _, err := sign(n); err != nil {
			t.Fatal(err)
		}
	}
	sig, err := sign("k")
	sw.mu.Lock()
	swapped, rcs := sw.swapped, sw.signRCs
	sw.mu.Unlock()
	t.Logf("TPM2_Sign answers during the attack: %#x", rcs)
	b.Set(nil)
	if swapped == 0 {
		t.Fatal("the attack did not run: no ContextLoad of k's context was sent")
	}
	pubK, _, kerr := a.KeyPublic(ctx, "k")
	pubK2, _, k2err := a.KeyPublic(ctx, "k2")
	if kerr != nil || k2err != nil {
		t.Fatal(kerr, k2err)
	}
	if err == nil {
		if ecdsa.VerifyASN1(pubK2.(*ecdsa.PublicKey), d[:], sig) {
			t.Fatal("provd answered a signature by k2 for a request to sign with k")
		}
		if !ecdsa.VerifyASN1(pubK.(*ecdsa.PublicKey), d[:], sig) {
			t.Fatal("the signature returned for k is not k's")
		}
	} else if !errors.Is(err, api.ErrTampered) && !errors.Is(err, tpm.ErrBadAuth) {
		t.Logf("sign refused: %v", err)
	}
	// k serves again, and nothing is left loaded beyond what the agent holds.
	sig, err = sign("k")
	if err != nil || !ecdsa.VerifyASN1(pubK.(*ecdsa.PublicKey), d[:], sig) {
		t.Fatalf("k after the attack: %v", err)
	}
	left, err := env.TPM.Handles(tpm.TransientHandles)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > len(a.keys.Handles()) {
		t.Errorf("transient handles %x, the cache holds %x", left, a.keys.Handles())
	}
	if n := swtpmtest.LockoutCounter(t, b.Next); n != 0 {
		t.Errorf("lockout counter %d", n)
	}
}

// Held: a key resident in the cache is refused as soon as the PCRs no
// longer satisfy the PK's policy: the cache holds a handle, not an
// authorization, and each use satisfies the key's policy (the PK's, with
// PolicyPCR) in the TPM again, kept session or not. Attacker: A5 (root
// whose boot changed a PCR the PK is sealed to) asking the daemon, which
// loaded the key on a good boot, to sign (or any local caller after a PCR
// extend). The refusal is a policy error, and it stays refused.
func TestReview59CachedKeyRefusedAfterAPCRMoves(t *testing.T) {
	env := swtpmtest.Start(t)
	a := keptAgent(t, env) // PCRs 7 and 16
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	if _, err := signK(a); err != nil { // warm: resident, kept session
		t.Fatal(err)
	}
	if a.keys.Resident() == 0 {
		t.Fatal("k is not resident after two signs")
	}
	e := sha256.Sum256([]byte("a boot that differs"))
	if err := env.TPM.PCRExtend(16, tpm2.TPMAlgSHA256, e[:]); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		sig, err := signK(a)
		if err == nil {
			t.Fatalf("sign %d with the cached key after PCR 16 moved: a signature (%d bytes)", i, len(sig))
		}
		if !errors.Is(err, tpm.ErrPolicyNotSatisfied) {
			t.Errorf("sign %d after PCR 16 moved: %v, want ErrPolicyNotSatisfied", i, err)
		}
	}
}
