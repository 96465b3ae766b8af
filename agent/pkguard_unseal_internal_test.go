package agent

// The unseal's guarded PK load (withPKGuarded) and its secret session
// (provd's own keyedPolicy): the attacks of its review (issue 14).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

func extendPCR(t *testing.T, tp *tpm.TPM, pcr int) {
	t.Helper()
	d := sha256.Sum256([]byte("guarded unseal"))
	if err := tp.PCRExtend(pcr, tpm2.TPMAlgSHA256, d[:]); err != nil {
		t.Fatal(err)
	}
}

func sealTo(t *testing.T, a *Agent, secret []byte, pcrs ...int) []byte {
	t.Helper()
	blob, err := a.Seal(context.Background(), api.SealRequest{Data: secret, PCRs: pcrs, AllowResettable: true})
	if err != nil {
		t.Fatal(err)
	}
	return blob
}

// The daemon's unseals, cold (the PK from its blob, guarded by the unseal's
// session) and warm (the PK from its saved context, no guard), after a
// kept key use session: the secret and the seal's sensitive area never
// cross the bus in the clear, nothing is left beyond what the daemon
// holds, and a key use after each works (its own
// guarded load when cold).
func TestDaemonUnsealGuardNeverOutlivesIt(t *testing.T) {
	rec := &swtpmtest.Recorder{}
	env := swtpmtest.Start(t, swtpmtest.WithRecorder(rec))
	a := keptAgent(t, env)
	secret := []byte("the daemon's secret, never in the clear")
	big := bytes.Repeat([]byte("a secret larger than a sealed object holds. "), 10)
	rec.Reset()
	blob := sealTo(t, a, secret, 7)
	bigBlob := sealTo(t, a, big, 7)
	if off := rec.Leak(secret); off >= 0 {
		t.Errorf("the seal sent the secret in the clear at %d", off)
	}
	for _, state := range []string{"cold", "warm", "cold after a sign", "warm after a sign"} {
		for name, b := range map[string][]byte{"small": blob, "enveloped": bigBlob} {
			want := secret
			if name == "enveloped" {
				want = big
			}
			if state == "cold after a sign" || state == "warm after a sign" {
				if _, err := signK(a); err != nil {
					t.Fatal(err)
				}
			}
			if state == "cold" || state == "cold after a sign" {
				a.pk = nil
			}
			rec.Reset()
			got, err := a.Unseal(context.Background(), b)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s %s unseal: %q, %v", state, name, got, err)
			}
			if off := rec.Leak(want); off >= 0 {
				t.Errorf("%s %s unseal: the secret crossed the bus in the clear at %d", state, name, off)
			}
			if extra := unheldLeft(t, a); len(extra) != 0 {
				t.Errorf("%s %s unseal: left %x", state, name, extra)
			}
			a.pk = nil
			if _, err := signK(a); err != nil {
				t.Errorf("%s %s: the sign after it: %v", state, name, err)
			}
		}
	}
}

// A failed unseal (its own policy fails: a PCR changed; the PK's policy
// fails; A1 forges the PK's guarded load; A1 forges the unseal's answer)
// in the daemon: the failure's audit record is written, nothing is left, and the next key use, cold, loads the PK in
// its own session and works.
func TestDaemonFailedUnsealLeavesNoGuard(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	a := keptAgent(t, env)
	secret := []byte("a secret whose unseal fails")
	blob23 := sealTo(t, a, secret, 23)
	blob7 := sealTo(t, a, secret, 7)
	isCC := func(cc tpm2.TPMCC) func([]byte) bool {
		return func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == cc }
	}
	flipRsp := func(cmd, rsp []byte) ([]byte, []byte) {
		if rsp == nil {
			return nil, nil
		}
		rsp = bytes.Clone(rsp)
		rsp[len(rsp)-1] ^= 1
		return nil, rsp
	}
	for _, c := range []struct {
		name   string
		blob   []byte
		before func()
		hook   swtpmtest.Hook
		forged bool
	}{
		{name: "the secret's PCR changed", blob: blob23, before: func() { extendPCR(t, env.TPM, 23) }},
		{name: "the PK's load forged", blob: blob7, before: func() { a.pk = nil }, hook: swtpmtest.Tamper(isPKLoad, flipRsp, nil), forged: true},
		{name: "the sealed object's load forged", blob: blob7, hook: swtpmtest.Tamper(func(cmd []byte) bool {
			return swtpmtest.CommandCode(cmd) == tpm2.TPMCCLoad && !isPKLoad(cmd)
		}, flipRsp, nil), forged: true},
		{name: "the unseal's answer forged", blob: blob7, hook: swtpmtest.Tamper(isCC(tpm2.TPMCCUnseal), flipRsp, nil), forged: true},
		{name: "the unseal's answer an error", blob: blob7, hook: swtpmtest.Tamper(isCC(tpm2.TPMCCUnseal), func(cmd, rsp []byte) ([]byte, []byte) {
			if rsp == nil {
				return nil, nil
			}
			return nil, swtpmtest.ErrorAnswer(tpm2.TPMRCPolicyFail)
		}, nil)},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := signK(a); err != nil { // a kept session
				t.Fatal(err)
			}
			if c.before != nil {
				c.before()
			}
			unseals := 0
			bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if c.hook != nil {
					if rsp, err, ok := c.hook(countingTPM{next, &unseals}, cmd); ok {
						return rsp, err, true
					}
				}
				rsp, err := countingTPM{next, &unseals}.Send(cmd)
				return rsp, err, true
			})
			got, err := a.Unseal(context.Background(), c.blob)
			bus.Set(nil)
			if err == nil || got != nil {
				t.Fatalf("unseal: %q, %v; want a failure and nothing", got, err)
			}
			if c.forged != errors.Is(err, tpm.ErrResponseForged) {
				t.Errorf("unseal: %v; forged %v, want %v", err, errors.Is(err, tpm.ErrResponseForged), c.forged)
			}
			if unseals > 1 {
				t.Errorf("the TPM unsealed %d times", unseals)
			}
			if extra := unheldLeft(t, a); len(extra) != 0 {
				t.Errorf("left %x", extra)
			}
			a.pk = nil
			if _, err := signK(a); err != nil {
				t.Errorf("the sign after it: %v", err)
			}
			if got, err := a.Unseal(context.Background(), blob7); err != nil || !bytes.Equal(got, secret) {
				t.Errorf("the unseal after it: %q, %v", got, err)
			}
		})
	}
}

// countingTPM counts the TPM2_Unseal commands the TPM answered with
// success.
type countingTPM struct {
	next transport.TPM
	n    *int
}

func (c countingTPM) Send(cmd []byte) ([]byte, error) {
	rsp, err := c.next.Send(cmd)
	if err == nil && swtpmtest.CommandCode(cmd) == tpm2.TPMCCUnseal && len(rsp) >= 10 && binary.BigEndian.Uint32(rsp[6:10]) == 0 {
		*c.n++
	}
	return rsp, err
}

// A panic under the unseal while the guard is set (here from the bus at
// the PK's load: provd's own code between the guard's setting and fn is
// what it stands for) unwinds through withPKGuarded: the agent's lock is
// released, and the next operations work.
func TestPanicUnderTheGuardedLoadLeavesNoGuard(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	a := keptAgent(t, env)
	secret := []byte("a secret whose unseal panics")
	blob := sealTo(t, a, secret, 7)
	a.pk = nil
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if isPKLoad(cmd) {
			bus.Set(nil)
			panic("a panic under the guarded load (test)")
		}
		return nil, nil, false
	})
	func() {
		defer func() {
			if r := recover(); r == nil {
				t.Error("no panic")
			}
		}()
		_, _ = a.Unseal(context.Background(), blob)
	}()
	bus.Set(nil)
	done := make(chan error, 1)
	go func() {
		_, err := signK(a)
		if err == nil {
			var got []byte
			got, err = a.Unseal(context.Background(), blob)
			if err == nil && !bytes.Equal(got, secret) {
				err = fmt.Errorf("unsealed %q", got)
			}
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("after the panic: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("after the panic: the agent hangs (its lock, or the TPM's, held)")
	}
	if extra := unheldLeft(t, a); len(extra) != 0 {
		t.Errorf("left %x", extra)
	}
}

// Unseals behind Linux's resource manager (swtpmtest.SessionLimit: three
// sessions a connection): one-shot and in the daemon, cold and warm, with
// a kept session, and failing (a PCR changed: the failure's audit record
// is written in the operation's process): no refusal for want of a slot.
func TestUnsealBehindTheSessionLimit(t *testing.T) {
	l := &swtpmtest.SessionLimit{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(l.Wrap))
	a := keptAgent(t, env)
	secret := []byte("a secret behind the resource manager")
	blob := sealTo(t, a, secret, 7)
	blob23 := sealTo(t, a, secret, 23)
	for _, state := range []string{"cold, session kept", "warm, session kept", "cold", "warm"} {
		if _, err := signK(a); err != nil {
			t.Fatal(err)
		}
		if state == "cold" || state == "warm" {
			if err := a.dropOp(); err != nil {
				t.Fatal(err)
			}
		}
		if state == "cold" || state == "cold, session kept" {
			a.pk = nil
		}
		l.Take()
		got, err := a.Unseal(context.Background(), blob)
		if err != nil || !bytes.Equal(got, secret) {
			t.Errorf("%s: unseal %q, %v", state, got, err)
		}
		if refused, cmds := l.Take(); refused > 0 {
			t.Errorf("%s: %d refusals for want of a slot: %v", state, refused, cmds)
		}
	}
	extendPCR(t, env.TPM, 23)
	for _, state := range []string{"cold", "warm"} {
		if _, err := signK(a); err != nil {
			t.Fatal(err)
		}
		if state == "cold" {
			a.pk = nil
		}
		l.Take()
		got, err := a.Unseal(context.Background(), blob23)
		if err == nil || got != nil || !errors.Is(err, tpm.ErrPolicyNotSatisfied) {
			t.Errorf("%s: the failing unseal: %q, %v", state, got, err)
		}
		if refused, cmds := l.Take(); refused > 0 {
			t.Errorf("%s, failing: %d refusals for want of a slot: %v", state, refused, cmds)
		}
		if extra := unheldLeft(t, a); len(extra) != 0 {
			t.Errorf("%s, failing: left %x", state, extra)
		}
	}
	// One-shot, on the same state.
	dir := a.dir
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]byte{blob, blob23} {
		o, err := New(Config{TPM: env.TPM, StateDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		l.Take()
		_, err = o.Unseal(context.Background(), b)
		if refused, cmds := l.Take(); refused > 0 {
			t.Errorf("one-shot (%v): %d refusals for want of a slot: %v", err, refused, cmds)
		}
		if cerr := o.Close(); cerr != nil {
			t.Fatal(cerr)
		}
	}
	if left, err := env.TPM.Leftovers(); err != nil || len(left) != 0 {
		t.Errorf("left in the TPM: %x %v", left, err)
	}
}

// A1 renames the unseal's session in the StartAuthSession answer (the
// first command of a one-shot unseal, before the PK's load it guards) to
// another policy session's handle: the guarded load fails, nothing
// unseals, nothing is left once the operation ends, and the next unseal
// works.
func TestUnsealSessionRenamedAtItsStart(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	newAgent := oneShotState(t, env)
	secret := []byte("a secret whose session A1 renames")
	blob := sealedOn(t, newAgent, secret)
	for name, delta := range map[string]int32{"the next handle": 1, "the previous handle": -1, "a handle no session has": 7} {
		t.Run(name, func(t *testing.T) {
			// A1's own session at a neighbouring handle, so the renamed
			// handle names a live session.
			own := &tpm2.StartAuthSessionResponse{}
			if delta != 7 {
				var err error
				own, err = swtpmtest.StartOwnPolicySession(env.TPM)
				if err != nil {
					t.Fatal(err)
				}
				defer env.TPM.Flush(own.SessionHandle)
			}
			first := true
			bus.Set(swtpmtest.Tamper(func(cmd []byte) bool {
				return swtpmtest.CommandCode(cmd) == tpm2.TPMCCStartAuthSession && first
			}, func(cmd, rsp []byte) ([]byte, []byte) {
				if rsp == nil {
					return nil, nil
				}
				first = false
				rsp = bytes.Clone(rsp)
				if binary.BigEndian.Uint32(rsp[6:10]) != 0 {
					return nil, rsp
				}
				h := binary.BigEndian.Uint32(rsp[10:14])
				binary.BigEndian.PutUint32(rsp[10:14], uint32(int32(h)+delta))
				return nil, rsp
			}, nil))
			a := newAgent()
			got, err := a.Unseal(context.Background(), blob)
			bus.Set(nil)
			if cerr := a.Close(); cerr != nil {
				t.Logf("close: %v", cerr)
			}
			if err == nil || got != nil {
				t.Errorf("unseal: %q, %v; want a failure", got, err)
			}
			t.Logf("unseal: %v", err)
			left, lerr := env.TPM.Leftovers()
			if lerr != nil {
				t.Fatal(lerr)
			}
			for _, h := range left {
				if h != own.SessionHandle {
					t.Errorf("left in the TPM: %x (A1's own: %x)", h, own.SessionHandle)
				}
			}
			a = newAgent()
			defer a.Close()
			if got, err := a.Unseal(context.Background(), blob); err != nil || !bytes.Equal(got, secret) {
				t.Errorf("the unseal after it: %q, %v", got, err)
			}
		})
	}
}

// A1 answers the unseal with TPM_RC_RETRY after the TPM unsealed: provd
// sends it again; the TPM unseals once, and provd either has the secret
// (A1 passed the first answer to the resend) or a failure, never a
// garbled secret.
func TestUnsealAnsweredRetry(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	newAgent := oneShotState(t, env)
	secret := []byte("a secret answered RETRY by A1")
	blob := sealedOn(t, newAgent, secret)
	for _, replay := range []bool{false, true} {
		t.Run(fmt.Sprintf("replay %v", replay), func(t *testing.T) {
			unseals := 0
			var first []byte
			bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if swtpmtest.CommandCode(cmd) != tpm2.TPMCCUnseal {
					return nil, nil, false
				}
				if first == nil {
					rsp, err := countingTPM{next, &unseals}.Send(cmd)
					if err != nil {
						return rsp, err, true
					}
					first = rsp
					return swtpmtest.ErrorAnswer(tpm2.TPMRCRetry), nil, true
				}
				if replay {
					return first, nil, true
				}
				rsp, err := countingTPM{next, &unseals}.Send(cmd)
				return rsp, err, true
			})
			a := newAgent()
			got, err := a.Unseal(context.Background(), blob)
			bus.Set(nil)
			if cerr := a.Close(); cerr != nil {
				t.Fatal(cerr)
			}
			t.Logf("unseal: %q, %v", got, err)
			if err == nil && !bytes.Equal(got, secret) {
				t.Errorf("unseal answered %q, not the secret", got)
			}
			if unseals > 1 {
				t.Errorf("the TPM unsealed %d times", unseals)
			}
			if left, err := env.TPM.Leftovers(); err != nil || len(left) != 0 {
				t.Errorf("left in the TPM: %x %v", left, err)
			}
		})
	}
}
