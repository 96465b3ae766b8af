package agent

// A1 and a kept session against the guarded PK load in a key use
// (loadPK): the attacks of the guard's adversarial review.

import (
	"context"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// A1 passes the PK's guarded load on and answers an error the transport
// sends again (TPM_RC_RETRY), or one that asks for a sweep
// (TPM_RC_OBJECT_MEMORY): at most one PK load is taken, nothing signs
// twice, nothing stays loaded, and the next sign works.
func TestPKLoadAnsweredAWarningSignsOnce(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	newAgent := oneShotState(t, env)
	for _, forged := range []tpm2.TPMRC{tpm2.TPMRCRetry, tpm2.TPMRCObjectMemory, tpm2.TPMRCSessionMemory} {
		t.Run(forged.Error(), func(t *testing.T) {
			loads, signs, done := 0, 0, false
			bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				switch {
				case swtpmtest.CommandCode(cmd) == tpm2.TPMCCSign:
					signs++
				case isPKLoad(cmd):
					loads++
					if !done {
						done = true
						if _, err := next.Send(cmd); err != nil {
							return nil, err, true
						}
						return swtpmtest.ErrorAnswer(forged), nil, true
					}
				}
				return nil, nil, false
			})
			a := newAgent()
			sig, err := signK(a)
			bus.Set(nil)
			if cerr := a.Close(); cerr != nil {
				t.Fatal(cerr)
			}
			t.Logf("sign: %d-byte signature, err %v (forged %v); PK loads sent %d, signs %d", len(sig), err, errors.Is(err, tpm.ErrResponseForged), loads, signs)
			if signs > 1 {
				t.Errorf("%d signs for one request", signs)
			}
			if left, err := env.TPM.Leftovers(); err != nil || len(left) != 0 {
				t.Errorf("left in the TPM: %x %v", left, err)
				for _, h := range left {
					_ = env.TPM.Flush(h)
				}
			}
			a = newAgent()
			defer a.Close()
			if _, err := signK(a); err != nil {
				t.Fatalf("the sign after it: %v", err)
			}
		})
	}
}

// The daemon: A1 flushes the kept session between two requests, and the
// PK's saved context is gone too (A1 answers the ContextLoad with an
// error): the next sign loads the PK from its blob with a dead kept
// session. It must not use that session as a guard, and must succeed.
func TestKeptSessionKilledIsNoGuard(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	a := keptAgent(t, env)
	defer a.Close()
	if _, err := a.CreateKey(context.Background(), api.CreateRequest{Name: "k2", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	h := a.opHandle()
	if h == 0 {
		t.Fatal("no session kept")
	}
	if err := env.TPM.Flush(h); err != nil {
		t.Fatal(err)
	}
	var pkLoadSessions [][]tpm2.TPMHandle
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		switch {
		case swtpmtest.CommandCode(cmd) == tpm2.TPMCCContextLoad:
			return swtpmtest.ErrorAnswer(tpm2.TPMRCIntegrity + tpm2.TPMRC(0x100)), nil, true
		case isPKLoad(cmd):
			pkLoadSessions = append(pkLoadSessions, swtpmtest.Sessions(cmd, 1))
		}
		return nil, nil, false
	})
	d := sha256.Sum256([]byte("k2"))
	_, err := a.Sign(context.Background(), "k2", d[:], api.SignOptions{})
	bus.Set(nil)
	if len(pkLoadSessions) == 0 {
		t.Fatal("no PK load: the attack did not run")
	}
	t.Logf("PK loads: %x", pkLoadSessions)
	for _, s := range pkLoadSessions {
		for _, x := range s {
			if x == h {
				t.Errorf("the dead kept session 0x%08x guarded a load", uint32(h))
			}
		}
	}
	if err != nil {
		t.Errorf("sign after the kept session was killed: %v", err)
	}
}
