package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// oneShotState provisions a state on env (PCRs 7 and 16, key "k") and
// returns a maker of one-shot agents on it: each a new provd process,
// nothing loaded or kept from an earlier one.
func oneShotState(t *testing.T, env *swtpmtest.Env) func() *Agent {
	t.Helper()
	dir := t.TempDir() + "/state"
	a, err := New(Config{TPM: env.TPM, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7, 16}, AllowResettable: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	return func() *Agent {
		a, err := New(Config{TPM: env.TPM, StateDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
}

// isPKLoad: a TPM2_Load under the persistent SRK, the PK's in a key use.
func isPKLoad(cmd []byte) bool {
	return swtpmtest.CommandCode(cmd) == tpm2.TPMCCLoad && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == tpm.SRKHandle
}

// A one-shot key use loads the PK guarded by its own policy session (the
// session's extra role, keyed by its salt alone), then authorizes the
// key's load and the use in it: one StartAuthSession in the operation,
// where the PK's load had a salted session of its own (issue 14: a
// one-shot sign 17 TPM commands to 15).
func TestOneShotKeyUseLoadsThePKInItsSession(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	a := oneShotState(t, env)()

	var sessions [][]tpm2.TPMHandle // of each Load
	log := &swtpmtest.CommandLog{}
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) == tpm2.TPMCCLoad {
			sessions = append(sessions, swtpmtest.Sessions(cmd, 1))
		}
		return log.Answered(next, cmd)
	})
	log.Start()
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil { // the process's end: the key's flush
		t.Fatal(err)
	}
	cmds := log.Stop()
	bus.Set(nil)
	want := []tpm2.TPMCC{
		tpm2.TPMCCStartAuthSession, tpm2.TPMCCLoad, // the PK, guarded by the session
		tpm2.TPMCCPolicyPCR, tpm2.TPMCCPolicyAuthValue, tpm2.TPMCCLoad, tpm2.TPMCCFlushContext, // the key, authorized by it
		tpm2.TPMCCPolicyPCR, tpm2.TPMCCPolicyAuthValue, tpm2.TPMCCSign, // the use
		tpm2.TPMCCFlushContext, tpm2.TPMCCFlushContext, // the key, the session
	}
	if !slices.Equal(cmds, want) {
		t.Errorf("one-shot sign sent %v, want %v", cmds, want)
	}
	if len(sessions) != 2 || len(sessions[0]) != 2 || len(sessions[1]) != 1 || sessions[0][1] != sessions[1][0] {
		t.Errorf("the loads' sessions %x: want the PK's load guarded (second session) by the session that authorizes the key's", sessions)
	}
	if left, err := env.TPM.Leftovers(); err != nil || len(left) != 0 {
		t.Errorf("left in the TPM: %x %v", left, err)
	}
}

// pkLoadTamperings are A1's changes to the PK's load (swtpmtest.Tamper,
// isPKLoad): the public area or the private area on its way in, the name
// in the answer.
var pkLoadTamperings = map[string]func(cmd, rsp []byte) ([]byte, []byte){
	"the public area": func(cmd, rsp []byte) ([]byte, []byte) {
		if rsp != nil {
			return nil, rsp
		}
		cmd = bytes.Clone(cmd)
		cmd[len(cmd)-1] ^= 1
		return cmd, nil
	},
	"the private area": func(cmd, rsp []byte) ([]byte, []byte) {
		if rsp != nil {
			return nil, rsp
		}
		cmd = bytes.Clone(cmd)
		cmd[swtpmtest.ParamsOffset(cmd, 1)+2] ^= 1
		return cmd, nil
	},
	"the name in the answer": func(cmd, rsp []byte) ([]byte, []byte) {
		if rsp == nil {
			return nil, nil
		}
		rsp = bytes.Clone(rsp)
		// handle, parameterSize, TPM2B_NAME: its last byte.
		n := int(binary.BigEndian.Uint16(rsp[18:20]))
		rsp[20+n-1] ^= 1
		return nil, rsp
	},
}

// A1 on the PK's guarded load in a one-shot sign: a changed public area or
// private area on its way in, or a changed name in the answer, is refused
// as forged (exit 15), nothing signs, nothing stays loaded, and the next
// sign works.
func TestOneShotPKLoadChangedOnTheBusIsForged(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	newAgent := oneShotState(t, env)
	for name, tamper := range pkLoadTamperings {
		t.Run(name, func(t *testing.T) {
			ran := false
			bus.Set(swtpmtest.Tamper(isPKLoad, tamper, &ran))
			a := newAgent()
			sig, err := signK(a)
			bus.Set(nil)
			if cerr := a.Close(); cerr != nil {
				t.Fatal(cerr)
			}
			if !ran {
				t.Fatal("the attack did not run")
			}
			if !errors.Is(err, tpm.ErrResponseForged) || errors.Is(err, api.ErrTampered) {
				t.Errorf("sign: %v (signature %x), want forged", err, sig)
			}
			if sig != nil {
				t.Error("a signature came back")
			}
			if left, err := env.TPM.Leftovers(); err != nil || len(left) != 0 {
				t.Errorf("left in the TPM: %x %v", left, err)
			}
			a = newAgent()
			defer a.Close()
			if _, err := signK(a); err != nil {
				t.Fatalf("the sign after it: %v", err)
			}
		})
	}
}

// The daemon keeps only a session a key use went through: one that only
// guarded the PK's load (the operation failed before any policy) is
// flushed when the operation ends, so that a fresh session, which may
// guard a load, is always the operation's own and never one a TPM reset
// the channel did not see may have killed.
func TestUnappliedSessionIsNotKept(t *testing.T) {
	env := swtpmtest.Start(t)
	a := keptAgent(t, env)
	unlock := a.lockKeep()
	ps, fresh, err := a.opPolicy([]byte("the objects' authValue"))
	if err != nil || ps == nil || !fresh {
		unlock()
		t.Fatalf("opPolicy: %v %v %v", ps, fresh, err)
	}
	h := a.opHandle()
	unlock()
	if a.opHandle() != 0 {
		t.Error("a session no policy was applied in was kept")
	}
	if left, err := env.TPM.Leftovers(); err != nil || slices.Contains(left, h) {
		t.Errorf("session %x still loaded: %x %v", h, left, err)
	}
	// The control: a sign's session is kept.
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	if a.opHandle() == 0 {
		t.Error("the sign's session was not kept")
	}
}

// sealedOn seals a secret to PCR 7 with a one-shot agent on the state
// newAgent makes agents on.
func sealedOn(t *testing.T, newAgent func() *Agent, secret []byte) []byte {
	t.Helper()
	a := newAgent()
	defer a.Close()
	blob, err := a.Seal(context.Background(), api.SealRequest{Data: secret, PCRs: []int{7}})
	if err != nil {
		t.Fatal(err)
	}
	return blob
}

// A one-shot unseal loads the PK guarded by the session that then
// authorizes the sealed object's load and the unseal and encrypts the
// secret on its way out: one StartAuthSession (issue 14: 17 TPM commands
// to 15); the secret crosses the bus encrypted.
func TestOneShotUnsealLoadsThePKInItsSession(t *testing.T) {
	bus := &swtpmtest.Bus{}
	rec := &swtpmtest.Recorder{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus), swtpmtest.WithRecorder(rec))
	newAgent := oneShotState(t, env)
	secret := []byte("the secret that the unseal answers, 32B")
	blob := sealedOn(t, newAgent, secret)

	a := newAgent()
	var sessions [][]tpm2.TPMHandle // of each Load and the Unseal
	log := &swtpmtest.CommandLog{}
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		switch swtpmtest.CommandCode(cmd) {
		case tpm2.TPMCCLoad, tpm2.TPMCCUnseal:
			sessions = append(sessions, swtpmtest.Sessions(cmd, 1))
		}
		return log.Answered(next, cmd)
	})
	log.Start()
	rec.Reset()
	got, err := a.Unseal(context.Background(), blob)
	if cerr := a.Close(); cerr != nil {
		t.Fatal(cerr)
	}
	cmds := log.Stop()
	bus.Set(nil)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("unseal: %q, %v", got, err)
	}
	want := []tpm2.TPMCC{
		tpm2.TPMCCStartAuthSession, tpm2.TPMCCLoad, // the PK, guarded by the session
		tpm2.TPMCCPolicyPCR, tpm2.TPMCCPolicyAuthValue, tpm2.TPMCCLoad, // the sealed object, authorized by it
		tpm2.TPMCCPolicyPCR, tpm2.TPMCCPolicyAuthValue, tpm2.TPMCCUnseal, // the unseal, encrypted out
		tpm2.TPMCCFlushContext, tpm2.TPMCCFlushContext, tpm2.TPMCCFlushContext,
	}
	if !slices.Equal(cmds, want) {
		t.Errorf("one-shot unseal sent %v, want %v", cmds, want)
	}
	if len(sessions) != 3 || len(sessions[0]) != 2 || sessions[0][1] != sessions[1][0] || sessions[1][0] != sessions[2][0] {
		t.Errorf("the sessions %x: want the PK's load guarded by the session that authorizes the object's load and the unseal", sessions)
	}
	if off := rec.Leak(secret); off >= 0 {
		t.Errorf("the secret crossed the bus in the clear at %d", off)
	}
	if left, err := env.TPM.Leftovers(); err != nil || len(left) != 0 {
		t.Errorf("left in the TPM: %x %v", left, err)
	}
}

// A1 on the PK's guarded load in a one-shot unseal: refused as forged, no
// secret, nothing left, and the next unseal works.
func TestOneShotUnsealPKLoadChangedOnTheBusIsForged(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	newAgent := oneShotState(t, env)
	secret := []byte("unsealed only by the TPM's own answer")
	blob := sealedOn(t, newAgent, secret)
	for name, tamper := range pkLoadTamperings {
		t.Run(name, func(t *testing.T) {
			ran := false
			bus.Set(swtpmtest.Tamper(isPKLoad, tamper, &ran))
			a := newAgent()
			got, err := a.Unseal(context.Background(), blob)
			bus.Set(nil)
			if cerr := a.Close(); cerr != nil {
				t.Fatal(cerr)
			}
			if !ran {
				t.Fatal("the attack did not run")
			}
			if !errors.Is(err, tpm.ErrResponseForged) || got != nil {
				t.Errorf("unseal: %q, %v; want forged and nothing", got, err)
			}
			if left, err := env.TPM.Leftovers(); err != nil || len(left) != 0 {
				t.Errorf("left in the TPM: %x %v", left, err)
			}
			a = newAgent()
			defer a.Close()
			if got, err := a.Unseal(context.Background(), blob); err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("the unseal after it: %q, %v", got, err)
			}
		})
	}
}
