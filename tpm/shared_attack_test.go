package tpm_test

// A1's attacks on an operation's shared audit session (tpm.TPM.Share,
// issue 14), from its adversarial review.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// corruptLastHMAC flips the last byte of the last session's HMAC in cmd
// (nh handles): A1 changing what the command's audit session covers.
func corruptLastHMAC(cmd []byte, nh int) []byte {
	cmd = bytes.Clone(cmd)
	off := 10 + 4*nh
	size := int(binary.BigEndian.Uint32(cmd[off : off+4]))
	end := off + 4 + size // the last session's HMAC ends the area
	cmd[end-1] ^= 0x01
	return cmd
}

// A1 cannot change a command that the shared audit session guards: the
// TPM checks its HMAC, so a Load (guarded by an encrypting session before
// sharing) whose audit HMAC does not verify is refused and nothing is
// loaded; so is a PCR_Read, which has no authorization of its own. The
// shared session is replaced, and the next read works.
func TestShareChangedCommandIsRefused(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	srk, blob, _ := pinnedGateBlob(t, tp)
	target := tpm2.TPMCCLoad
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		cc := swtpmtest.CommandCode(cmd)
		if cc != target {
			return nil, nil, false
		}
		nh := map[tpm2.TPMCC]int{tpm2.TPMCCLoad: 1, tpm2.TPMCCPCRRead: 0}[cc]
		rsp, err := next.Send(corruptLastHMAC(cmd, nh))
		return rsp, err, true
	})
	err := tp.Share(func() error {
		if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
			return err
		}
		_, err := tp.Load(srk, nil, blob)
		if err == nil {
			t.Error("a Load whose audit HMAC was changed on the bus was loaded")
		} else if !errors.Is(err, tpm.ErrResponseForged) {
			t.Logf("Load refused: %v", err)
		}
		target = tpm2.TPMCCPCRRead
		if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err == nil {
			t.Error("a PCR_Read whose audit HMAC was changed on the bus was answered")
		}
		target = 0
		_, err = tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7})
		return err
	})
	bus.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	tp.NeedsSweep()
	nothingLeft(t, tp, "after Share")
}

// A1 cannot turn a finished operation into a failure with one forged
// answer after its work: the shared session's flush when fn returns is
// not fn's, and its failure only asks for the sweep (found by review:
// Share returned the forged FlushContext error, and a deleted key's
// delete was recorded as failed).
func TestShareForgedFlushFailsNothingDone(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	pinnedGateBlob(t, tp)
	var shared tpm2.TPMHandle
	committed := false
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		switch swtpmtest.CommandCode(cmd) {
		case tpm2.TPMCCPCRRead:
			shared = swtpmtest.LastSession(cmd, 0)
		case tpm2.TPMCCFlushContext:
			if committed && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == shared {
				// A1 passes the flush on and answers an error.
				if _, err := next.Send(cmd); err != nil {
					return nil, err, true
				}
				return swtpmtest.ErrorAnswer(tpm2.TPMRCValue), nil, true
			}
		}
		return nil, nil, false
	})
	err := tp.Share(func() error {
		if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
			return err
		}
		committed = true // the operation's work is done (a state written, say)
		return nil
	})
	bus.Set(nil)
	if err != nil {
		t.Errorf("fn succeeded, yet Share returned %v (one forged FlushContext answer after the work)", err)
	}
	if !tp.NeedsSweep() {
		t.Error("the failed flush asked for no sweep")
	}
}

// After a TPM reset inside a Share, the shared session's number is the
// TPM's to hand out again: provd forgets the session and flushes nothing
// by that number (found by review: the flush took a session started after
// the reset), here another client's, which holds it when provd next
// starts a session.
func TestShareAfterResetFlushesNobodysSession(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	pinnedGateBlob(t, tp)
	var old, theirs tpm2.TPMHandle
	err := tp.Share(func() error {
		bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
			if swtpmtest.CommandCode(cmd) == tpm2.TPMCCPCRRead {
				old = swtpmtest.LastSession(cmd, 0)
			}
			return nil, nil, false
		})
		if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
			return err
		}
		bus.Set(nil)
		env.Reset()
		if _, err := tp.PCRRead(tpm2.TPMAlgSHA256, []int{0}); err != nil { // the channel starts the TPM up
			return err
		}
		// Another client starts a session: the number is free again.
		rsp, err := swtpmtest.StartOwnPolicySession(bus.Next)
		if err != nil {
			return err
		}
		theirs = rsp.SessionHandle
		// provd starts a session of its own (the shared one is given
		// up first), then reads again.
		ps, err := tp.StartPolicySession(false)
		if err != nil {
			return err
		}
		defer ps.Close()
		_, err = tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if theirs&0x00ffffff != old&0x00ffffff {
		t.Fatalf("the other client's session 0x%08x is not in the shared session's slot 0x%08x: the attack did not run", uint32(theirs), uint32(old))
	}
	if _, err := (tpm2.PolicyCommandCode{PolicySession: theirs, Code: tpm2.TPMCCSign}).Execute(bus.Next); err != nil {
		t.Fatalf("the other client's session 0x%08x, in the shared session's old slot: %v", uint32(theirs), err)
	}
	if _, err := (tpm2.FlushContext{FlushHandle: theirs}).Execute(bus.Next); err != nil {
		t.Fatal(err)
	}
	tp.NeedsSweep()
}

// rspAttrsOffset is the offset of the (only) session's attributes byte in
// a response with sessions and no handles.
func rspAttrsOffset(rsp []byte) int {
	psize := int(binary.BigEndian.Uint32(rsp[10:14]))
	off := 14 + psize
	nonce := int(binary.BigEndian.Uint16(rsp[off : off+2]))
	return off + 2 + nonce
}

// cmdFirstSessionOffset is the offset of the first session's handle in a
// command with nh handles.
func cmdFirstSessionOffset(nh int) int { return 10 + 4*nh + 4 }

// A1's tamperings with a read in the shared session never give a value: a
// response with continueSession or audit flipped, the
// answer of another command of the same session, an earlier answer of the
// same command given without the TPM running it, a command with its
// continueSession cleared or naming another session. Each read fails, the
// next read in the same Share gets the TPM's value, and nothing is left
// loaded once the owner sweeps when asked (NeedsSweep).
func TestShareTamperedReadsGiveNothing(t *testing.T) {
	type tamper func(next transport.TPM, cmd []byte, prev []byte) ([]byte, error)
	cases := map[string]tamper{
		"response continueSession cleared": func(next transport.TPM, cmd, _ []byte) ([]byte, error) {
			rsp, err := next.Send(cmd)
			if err != nil {
				return nil, err
			}
			rsp = bytes.Clone(rsp)
			rsp[rspAttrsOffset(rsp)] &^= 0x01
			return rsp, nil
		},
		"response audit flipped": func(next transport.TPM, cmd, _ []byte) ([]byte, error) {
			rsp, err := next.Send(cmd)
			if err != nil {
				return nil, err
			}
			rsp = bytes.Clone(rsp)
			rsp[rspAttrsOffset(rsp)] ^= 0x80
			return rsp, nil
		},
		"earlier answer, command dropped": func(next transport.TPM, cmd, prev []byte) ([]byte, error) {
			return bytes.Clone(prev), nil
		},
		"earlier answer, command run": func(next transport.TPM, cmd, prev []byte) ([]byte, error) {
			if _, err := next.Send(cmd); err != nil {
				return nil, err
			}
			return bytes.Clone(prev), nil
		},
		"command continueSession cleared": func(next transport.TPM, cmd, _ []byte) ([]byte, error) {
			cmd = bytes.Clone(cmd)
			off := cmdFirstSessionOffset(0) + 4
			nonce := int(binary.BigEndian.Uint16(cmd[off : off+2]))
			cmd[off+2+nonce] &^= 0x01
			return next.Send(cmd)
		},
		"command names another session": func(next transport.TPM, cmd, _ []byte) ([]byte, error) {
			// A1 starts a session of its own and names it instead.
			s, _, err := tpm2.HMACSession(next, tpm2.TPMAlgSHA256, 16)
			if err != nil {
				return nil, err
			}
			cmd = bytes.Clone(cmd)
			binary.BigEndian.PutUint32(cmd[cmdFirstSessionOffset(0):], uint32(s.Handle()))
			rsp, err := next.Send(cmd)
			_, _ = (tpm2.FlushContext{FlushHandle: s.Handle()}).Execute(next)
			return rsp, err
		},
	}
	for name, tf := range cases {
		t.Run(name, func(t *testing.T) {
			bus := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
			tp := env.TPM
			pinnedGateBlob(t, tp)
			var prev []byte
			armed := false
			bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if swtpmtest.CommandCode(cmd) != tpm2.TPMCCPCRRead {
					return nil, nil, false
				}
				if armed && prev != nil {
					armed = false
					rsp, err := tf(next, cmd, prev)
					return rsp, err, true
				}
				rsp, err := next.Send(cmd)
				if err == nil {
					prev = bytes.Clone(rsp)
				}
				return rsp, err, true
			})
			err := tp.Share(func() error {
				before, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{16})
				if err != nil {
					return err
				}
				if err := tp.PCRExtend(16, tpm2.TPMAlgSHA256, bytes.Repeat([]byte{2}, 32)); err != nil {
					return err
				}
				armed = true
				if v, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{16}); err == nil {
					t.Errorf("a tampered read gave %x (before the extend: %x)", v[16], before[16])
				}
				after, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{16})
				if err != nil {
					return err
				}
				if bytes.Equal(after[16], before[16]) {
					t.Errorf("the read after the tampering gave the value before the extend")
				}
				return nil
			})
			bus.Set(nil)
			if err != nil {
				t.Fatal(err)
			}
			left, lerr := tp.Leftovers()
			if lerr != nil {
				t.Fatal(lerr)
			}
			if len(left) != 0 {
				if !tp.NeedsSweep() {
					t.Errorf("left %v and no sweep asked for", left)
				}
				for _, h := range left {
					_ = tp.Flush(h)
				}
			}
		})
	}
}
