package tpm_test

// Review 36: c2ff9ed's resend of a command naming the SRK at 0x81000001
// that was answered TPM_RC_HANDLE for handle 1 (tpm.TPM.Send, srkGone,
// srkAgain), attacked by A1 on the bus.
//
// FLAW (failed before the mend): TestReview36ForgedSRKHandleFillsTheRMSpace —
// behind a resource manager (no sweep runs there), A1 passes a salted
// StartAuthSession on and answers TPM_RC_HANDLE(1): srkAgain found the SRK
// where it was and sent the start once more; the TPM's first session was
// held by nobody. Each forged read succeeded, nothing was reported. The
// mend: with the SRK at its handle nothing is sent again and the answer is
// ErrResponseForged. The session the TPM made under each forged answer is
// left behind a resource manager, as under any error A1 forges after the
// TPM made a session (docs/threat-model.md: a handle made under a forged
// error is flushed on a TPM provd has to itself; behind a manager no sweep
// runs): the test now checks that each forgery is reported and nothing is
// sent again.
//
// FLAW (failed before the mend): TestReview36ResentStartIsTheSpacesFourth —
// the resend skipped the room checks Send makes before the first send: with
// two sessions held and the TPM having run the forged start, the resend was
// the connection's fourth session (on /dev/tpmrm0 the write fails and the
// kernel flushes every session of the connection, the held ones too). The
// SRK at its handle, nothing is sent again now.
//
// HELD: TestReview36ResentAfterTheTPMRanIsForged — a Load, a guarded Load
// and a Create under the SRK run by the TPM, then answered TPM_RC_HANDLE(1):
// reported ErrResponseForged, the sweep asked for; no retry is counted
// (policyUse's rule is not needed). Before the mend the resend's HMACs
// (the session's nonce moved) were refused, BAD_AUTH without DA; now,
// the SRK at its handle, nothing is sent again.
//
// HELD: TestReview36ForgedHandleEverywhereOneResend — A1 answers
// TPM_RC_HANDLE(1) to every command naming 0x81000001 as parent or salt
// key, the resend included: one resend per command, no loop, no deadlock
// on srkMu (srkAs sends no command srkGone lists), an error returned.
//
// HELD: TestReview36PinnedSRKAgainWithAnotherName — with the SRK pinned,
// A1 forges TPM_RC_HANDLE(1), then "not there" to the SRK's ReadPublic,
// and has the TPM create another primary (unique changed): the name is not
// the pin's, refused; nothing persisted, no copy left, no resend; the
// SRK at 0x81000001 is the pinned one.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// namesSRK: cmd's first handle is 0x81000001.
func namesSRK(cmd []byte) bool {
	return len(cmd) >= 14 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == tpm.SRKHandle
}

// ranThenHandle1 is A1 passing the first salted StartAuthSession (to the
// SRK) of each arming on, then answering TPM_RC_HANDLE for handle 1.
func ranThenHandle1(cc tpm2.TPMCC, sent *int) swtpmtest.Hook {
	done := false
	return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != cc || !namesSRK(cmd) {
			return nil, nil, false
		}
		*sent++
		if done {
			return nil, nil, false
		}
		done = true
		if _, err := next.Send(cmd); err != nil {
			return nil, err, true
		}
		return swtpmtest.ErrorAnswer(tpm2.TPMRCHandle + 0x100), nil, true
	}
}

func pinnedSRKOf(t *testing.T, tp *tpm.TPM) tpm.Object {
	t.Helper()
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.PinSRK(srk.Public); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.SRK(); err != nil { // cached, as in a running daemon
		t.Fatal(err)
	}
	return srk
}

func TestReview36ForgedSRKHandleFillsTheRMSpace(t *testing.T) {
	l := &swtpmtest.SessionLimit{}
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(l.Wrap), swtpmtest.WithBus(b), swtpmtest.WithResourceManager())
	tp := env.TPM
	pinnedSRKOf(t, tp)
	tp.TransientSRKOnly() // as the agent
	for i := range 2 {
		sent := 0
		b.Set(ranThenHandle1(tpm2.TPMCCStartAuthSession, &sent))
		_, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7})
		b.Set(nil)
		left, _ := tp.Handles(0x02000000)
		t.Logf("round %d: read %v, StartAuthSession sent %d, sessions loaded %x", i, err, sent, left)
		if !errors.Is(err, tpm.ErrResponseForged) || sent != 1 {
			t.Errorf("round %d: a salted start the TPM ran, answered TPM_RC_HANDLE(1) with the SRK at its handle: %v, sent %d times; want ErrResponseForged, once", i, err, sent)
		}
		if _, err := tp.ReadPublic(tpm.SRKHandle); err != nil {
			t.Errorf("round %d: the SRK after the forged answer: %v", i, err)
		}
	}
	// A1 is gone: the sessions the TPM made under its answers are held by
	// nobody (no sweep behind a resource manager), one slot is left.
	left, _ := tp.Handles(0x02000000)
	for _, h := range left { // for the leak check: A1's doing
		_ = tp.Flush(h)
	}
	if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
		t.Errorf("a salted read once A1 is gone: %v", err)
	}
}

func TestReview36ResentStartIsTheSpacesFourth(t *testing.T) {
	l := &swtpmtest.SessionLimit{}
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(l.Wrap), swtpmtest.WithBus(b), swtpmtest.WithResourceManager())
	tp := env.TPM
	pinnedSRKOf(t, tp)
	var held []*tpm.PolicySession
	for range 2 {
		ps, err := tp.StartSaltedPolicySession(nil)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, ps)
	}
	l.Take()
	sent := 0
	b.Set(ranThenHandle1(tpm2.TPMCCStartAuthSession, &sent))
	_, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7})
	b.Set(nil)
	refused, cmds := l.Take()
	left, _ := tp.Handles(0x02000000)
	t.Logf("read: %v; StartAuthSession sent %d; sessions loaded %x", err, sent, left)
	if refused > 0 {
		t.Errorf("with two sessions held and a salted start the TPM ran answered TPM_RC_HANDLE(1) by A1, provd resent it as the connection's "+
			"fourth session (%d refused; on /dev/tpmrm0 the kernel flushes the connection's every session): commands %v", refused, cmds)
	}
	for _, ps := range held {
		_ = ps.Close()
	}
	left, _ = tp.Handles(0x02000000)
	for _, h := range left {
		_ = tp.Flush(h)
	}
}

func TestReview36ResentAfterTheTPMRanIsForged(t *testing.T) {
	for _, c := range []string{"load", "guarded load", "create"} {
		t.Run(c, func(t *testing.T) {
			bus := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
			tp := env.TPM
			srk, parentBlob, _, auth := guardedSetup(t, tp)
			tp.NeedsSweep()
			before := tp.Stats()
			sent := 0
			var err error
			switch c {
			case "load":
				bus.Set(ranThenHandle1(tpm2.TPMCCLoad, &sent))
				var o tpm.Object
				if o, err = tp.Load(srk, nil, parentBlob); err == nil {
					_ = tp.Flush(o.Handle)
				}
			case "guarded load":
				var o tpm.Object
				var ps *tpm.PolicySession
				o, ps, err = guardedLoadUnder(t, bus, tp, srk, parentBlob, auth, ranThenHandle1(tpm2.TPMCCLoad, &sent))
				if err == nil {
					_ = tp.Flush(o.Handle)
				}
				_ = ps.Close()
			case "create":
				bus.Set(ranThenHandle1(tpm2.TPMCCCreate, &sent))
				_, err = tp.Create(srk, nil, policyAuthValueTemplate(), tpm.Sensitive{UserAuth: auth})
			}
			bus.Set(nil)
			retries := tp.Stats().Sub(before).Retries
			sweep := tp.NeedsSweep()
			lock := swtpmtest.LockoutCounter(t, bus.Next)
			if !errors.Is(err, tpm.ErrResponseForged) || sent != 1 || !sweep || lock != 0 || retries != 0 {
				t.Errorf("%s run by the TPM, then answered TPM_RC_HANDLE(1): %v, sent %d, sweep %v, lockout %d, retries %d; "+
					"want ErrResponseForged, 1, true, 0, 0", c, err, sent, sweep, lock, retries)
			}
			// The owner's sweep (exclusive TPM).
			left, _ := tp.Leftovers()
			for _, h := range left {
				_ = tp.Flush(h)
			}
		})
	}
}

func TestReview36ForgedHandleEverywhereOneResend(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	srk, parentBlob, _, _ := guardedSetup(t, tp)
	for _, transientOnly := range []bool{false, true} {
		if transientOnly {
			tp.TransientSRKOnly()
		}
		for _, op := range []string{"read", "load"} {
			sent := map[tpm2.TPMCC]int{}
			bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				switch cc := swtpmtest.CommandCode(cmd); cc {
				case tpm2.TPMCCStartAuthSession, tpm2.TPMCCLoad, tpm2.TPMCCCreate, tpm2.TPMCCCreateLoaded, tpm2.TPMCCImport:
					if namesSRK(cmd) {
						sent[cc]++
						return swtpmtest.ErrorAnswer(tpm2.TPMRCHandle + 0x100), nil, true
					}
				}
				return nil, nil, false
			})
			done := make(chan error, 1)
			go func() {
				var err error
				switch op {
				case "read":
					_, err = tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7})
				case "load":
					var o tpm.Object
					if o, err = tp.Load(srk, nil, parentBlob); err == nil {
						_ = tp.Flush(o.Handle)
					}
				}
				done <- err
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				t.Fatalf("transient only %v, %s: no answer in 30s (a deadlock on srkMu?)", transientOnly, op)
			}
			bus.Set(nil)
			many := false
			for _, n := range sent {
				many = many || n > 2
			}
			if err == nil || many {
				t.Errorf("transient only %v, %s with every command naming the SRK answered TPM_RC_HANDLE(1): %v, sent %v; want an error, each sent twice at most",
					transientOnly, op, err, sent)
			}
			if err := tp.DropTransientSRK(); err != nil {
				t.Fatal(err)
			}
			left, _ := tp.Leftovers()
			for _, h := range left {
				_ = tp.Flush(h)
			}
		}
	}
	if o, err := tp.ReadPublic(tpm.SRKHandle); err != nil || !bytesEqualName(o, srk) {
		t.Errorf("the SRK at 0x81000001 after the attack: %v", err)
	}
}

func bytesEqualName(a, b tpm.Object) bool {
	return fmt.Sprintf("%x", a.Name.Buffer) == fmt.Sprintf("%x", b.Name.Buffer)
}

func TestReview36PinnedSRKAgainWithAnotherName(t *testing.T) {
	for _, transientOnly := range []bool{false, true} {
		t.Run(fmt.Sprintf("transient only %v", transientOnly), func(t *testing.T) {
			bus := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
			tp := env.TPM
			srk := pinnedSRKOf(t, tp)
			if transientOnly {
				tp.TransientSRKOnly()
			}
			starts, evicts, creates := 0, 0, 0
			bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				switch swtpmtest.CommandCode(cmd) {
				case tpm2.TPMCCStartAuthSession:
					if namesSRK(cmd) {
						if starts++; starts == 1 {
							return swtpmtest.ErrorAnswer(tpm2.TPMRCHandle + 0x100), nil, true
						}
					}
				case tpm2.TPMCCReadPublic:
					if namesSRK(cmd) {
						return swtpmtest.ErrorAnswer(tpm2.TPMRCHandle + 0x100), nil, true
					}
				case tpm2.TPMCCEvictControl:
					evicts++
				case tpm2.TPMCCCreatePrimary:
					creates++
					// Another primary: the unique's last byte changed
					// (the template's unique is two 32-byte zero
					// coordinates, then outsideInfo and creationPCR,
					// both empty: 6 bytes).
					c := append([]byte(nil), cmd...)
					c[len(c)-7] ^= 1
					rsp, err := next.Send(c)
					return rsp, err, true
				}
				return nil, nil, false
			})
			_, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7})
			bus.Set(nil)
			left, _ := tp.Handles(tpm.TransientHandles)
			o, rerr := tp.ReadPublic(tpm.SRKHandle)
			t.Logf("read: %v; starts %d, creates %d, evicts %d, left %x", err, starts, creates, evicts, left)
			if err == nil || starts != 1 || evicts != 0 || len(left) != 0 || rerr != nil || !bytesEqualName(o, srk) || creates == 0 {
				t.Errorf("A1's TPM_RC_HANDLE(1), an empty SRK handle and another primary: read %v, starts %d, creates %d, evicts %d, left %x, SRK %v; "+
					"want an error, 1, >0, 0, none, the pinned SRK", err, starts, creates, evicts, left, rerr)
			}
			_ = tp.DropTransientSRK()
		})
	}
}
