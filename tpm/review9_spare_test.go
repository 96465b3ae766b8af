package tpm_test

// Review 9: attacks on the spare policy session (9627171,
// tpm.PolicySession.Spare): the record's gate proof goes into the policy
// session that authorized the operation's last command, kept in the Share,
// instead of a session of its own.

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// A1, on its own side of the bus, flushes the kept spare and starts a
// policy session of its own (unsalted: it knows its key), which the TPM
// gives the freed number. The spare's claim is that its number is
// provd's (the creation's checked answer showed it), but that holds only
// until someone else flushes it: nothing checks it again before the
// proof goes in. What must hold: the gate's proof never lands in A1's
// session (PolicySecret names the spare's nonceTPM, which A1's session
// does not have, and the command's HMAC in the shared session covers
// it), so A1 extends the anchor neither with its own data nor with
// provd's head; the anchor moves by provd's head at most once, nothing is
// left after the sweep, and the next record works.
func TestReview9SpareSlotTakenByA1(t *testing.T) {
	r := newSpareEnv(t)
	was := r.anchor(t)
	head := sha256.Sum256([]byte("record"))
	mine := sha256.Sum256([]byte("A1's own data"))
	var mu sync.Mutex
	var secretRC tpm2.TPMRC
	secretSeen := false
	var ownRC, headRC []tpm2.TPMRC
	err := r.tp.Share(func() error {
		if err := r.read(); err != nil {
			return err
		}
		ps, uses := r.used(t)
		h := ps.Handle()
		if err := ps.Spare(uses); err != nil {
			return err
		}
		if tpm.SpareHandle(r.tp) != h {
			t.Fatal("the spare is not kept")
		}
		next := r.bus.Next
		if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(next); err != nil {
			t.Fatalf("A1's flush of the spare: %v", err)
		}
		own, err := swtpmtest.StartOwnPolicySession(next)
		if err != nil {
			t.Fatalf("A1's session: %v", err)
		}
		if own.SessionHandle != h {
			t.Fatalf("A1's session is 0x%08x, the spare was 0x%08x: not mounted", uint32(own.SessionHandle), uint32(h))
		}
		// Right after provd's PolicySecret (passed on), A1 completes
		// the gate policy in its session and extends, its data then
		// provd's head.
		r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
			mu.Lock()
			defer mu.Unlock()
			if swtpmtest.CommandCode(cmd) != tpm2.TPMCCPolicySecret || secretSeen {
				return nil, nil, false
			}
			secretSeen = true
			rsp, err := next.Send(cmd)
			if err != nil {
				return rsp, err, true
			}
			secretRC = tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
			for _, data := range [][]byte{mine[:], head[:]} {
				_, _ = (tpm2.PolicyCommandCode{PolicySession: h, Code: tpm2.TPMCCNVExtend}).Execute(next)
				rc, err := swtpmtest.OwnSessionExtend(next, r.x.Handle, h, data)
				if err != nil {
					t.Errorf("A1's extend: %v", err)
				}
				if bytes.Equal(data, mine[:]) {
					ownRC = append(ownRC, rc)
				} else {
					headRC = append(headRC, rc)
				}
			}
			return rsp, nil, true
		})
		defer r.bus.Set(nil)
		ge, err := r.tp.PrepareGatedExtendOf(r.x, r.gate, head[:])
		if err != nil {
			t.Logf("prepare: %v", err)
			return nil
		}
		t.Logf("extend: %v", errors.Join(ge.Extend(), ge.Close()))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !secretSeen {
		t.Fatal("no PolicySecret: not mounted")
	}
	t.Logf("provd's PolicySecret into the spare's number: rc 0x%x; A1's extends: own %v, provd's head %v", uint32(secretRC), rcs(ownRC), rcs(headRC))
	if secretRC == tpm2.TPMRCSuccess {
		t.Error("the gate's proof went into A1's session at the spare's number")
	}
	for _, rc := range ownRC {
		if rc == tpm2.TPMRCSuccess {
			t.Error("A1 extended the anchor with its own data")
		}
	}
	for _, rc := range headRC {
		if rc == tpm2.TPMRCSuccess {
			t.Error("A1 made provd's extend in its own session")
		}
	}
	now := r.anchor(t)
	if !bytes.Equal(now, was) && !bytes.Equal(now, chained(was, head[:])) {
		t.Errorf("anchor %x: neither as it was nor provd's head once", now)
	}
	sweepAndCheck(t, r)
	next := sha256.Sum256([]byte("next"))
	if err := r.tp.NVExtendGated(r.x.Handle, next[:], r.gate); err != nil {
		t.Fatalf("the next record: %v", err)
	}
	onlyObjectsLeft(t, r)
}

// forgedUnsealAnswer is a success answer to TPM2_Unseal with one session
// whose HMAC A1 made up (it does not know the session's key).
func forgedUnsealAnswer() []byte {
	nonce, mac, data := make([]byte, 32), make([]byte, 32), make([]byte, 16)
	_, _ = rand.Read(nonce)
	_, _ = rand.Read(mac)
	_, _ = rand.Read(data)
	b := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMSTSessions))
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(2+len(data)))
	b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
	b = append(b, data...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(nonce)))
	b = append(b, nonce...)
	b = append(b, 1) // continueSession
	b = binary.BigEndian.AppendUint16(b, uint16(len(mac)))
	b = append(b, mac...)
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	return b
}

// A1 on the command the spare would authorize (the unseal standing for a
// seal's TPM2_Create): answered success without the TPM running it (the
// session's policy, PolicyAuthValue, still satisfied in the TPM), or run
// and its answer's HMAC changed. Neither answer validates: Uses does not
// move, Spare keeps nothing and flushes the session, and the record
// proves the gate in a session of its own; the anchor moves by the head
// once, nothing is left.
func TestReview9ForgedAnswerKeepsNoSpare(t *testing.T) {
	for _, ran := range []bool{false, true} {
		name := map[bool]string{false: "forged, not run", true: "run, answer changed"}[ran]
		t.Run(name, func(t *testing.T) {
			r := newSpareEnv(t)
			was := r.anchor(t)
			head := sha256.Sum256([]byte(name))
			err := r.tp.Share(func() error {
				if err := r.read(); err != nil {
					return err
				}
				ps, err := r.tp.StartSecretPolicySession(tpm.EncryptOut, r.auth)
				if err != nil {
					t.Fatal(err)
				}
				uses := ps.Uses()
				if err := ps.PolicyAuthValue(); err != nil {
					t.Fatal(err)
				}
				r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					if swtpmtest.CommandCode(cmd) != tpm2.TPMCCUnseal {
						return nil, nil, false
					}
					if !ran {
						return forgedUnsealAnswer(), nil, true
					}
					rsp, err := next.Send(cmd)
					if err != nil || len(rsp) <= 10 {
						return rsp, err, true
					}
					rsp = bytes.Clone(rsp)
					rsp[len(rsp)-1] ^= 1
					return rsp, nil, true
				})
				_, uerr := r.tp.UnsealWith(r.obj, ps.Session())
				r.bus.Set(nil)
				if uerr == nil {
					t.Error("the answer A1 made was taken")
				}
				if ps.Uses() != uses {
					t.Errorf("Uses moved to %d on an answer A1 made", ps.Uses())
				}
				if err := ps.Spare(uses); err != nil {
					t.Logf("spare: %v", err)
				}
				if h := tpm.SpareHandle(r.tp); h != 0 {
					t.Errorf("spare 0x%08x kept after an answer A1 made", uint32(h))
				}
				return r.recordOwn(t, head[:])
			})
			r.recordedOnce(t, err, was, head[:])
		})
	}
}

// A1 holds the record's NV_Extend in the spare (answered as failed, not
// passed on) and drops the spare's FlushContext (answered success), so
// that the session, and the proof in it, stay in the TPM. The proof's
// expiry counts from the session's start time in the TPM, which every
// command that rolls its nonce moves (the creation, after provd's start
// of it); GatedExtend.Close spends the proof by waiting until proofUntil,
// counted from the PolicySecret. What must hold: once Close returns, the
// held extend is refused (expired), whatever provd's clock or the
// spare's age said; the anchor never moves.
func TestReview9HeldSpareExtendDeadWhenCloseReturns(t *testing.T) {
	r := newSpareEnv(t)
	was := r.anchor(t)
	head := sha256.Sum256([]byte("held"))
	var held []byte
	var spare tpm2.TPMHandle
	var closeTook time.Duration
	err := r.tp.Share(func() error {
		if err := r.read(); err != nil {
			return err
		}
		ps, uses := r.used(t)
		spare = ps.Handle()
		if err := ps.Spare(uses); err != nil {
			return err
		}
		// The spare waits a while before the record (its nonce rolled
		// at the unseal, after its start).
		time.Sleep(2 * time.Second)
		var mu sync.Mutex
		r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
			mu.Lock()
			defer mu.Unlock()
			switch swtpmtest.CommandCode(cmd) {
			case tpm2.TPMCCNVExtend:
				if held == nil {
					held = bytes.Clone(cmd)
					return swtpmtest.ErrorAnswer(tpm2.TPMRCFailure), nil, true
				}
			case tpm2.TPMCCFlushContext:
				if len(cmd) >= 14 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == spare {
					return swtpmtest.ErrorAnswer(tpm2.TPMRCSuccess), nil, true
				}
			}
			return nil, nil, false
		})
		defer r.bus.Set(nil)
		ge, err := r.tp.PrepareGatedExtendOf(r.x, r.gate, head[:])
		if err != nil {
			return err
		}
		if ge.Handle() != spare {
			t.Errorf("the record's session 0x%08x, not the spare 0x%08x", uint32(ge.Handle()), uint32(spare))
		}
		if err := ge.Extend(); err == nil {
			t.Error("the held extend answered success")
		}
		start := time.Now()
		cerr := ge.Close()
		closeTook = time.Since(start)
		t.Logf("close: %v after %v", cerr, closeTook)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if held == nil {
		t.Fatal("no extend held: not mounted")
	}
	rsp, err := r.bus.Next.Send(held)
	if err != nil {
		t.Fatal(err)
	}
	rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
	t.Logf("the held extend sent once Close returned (%v): rc 0x%x", closeTook, uint32(rc))
	if rc == tpm2.TPMRCSuccess {
		t.Error("the held extend in the spare was made after Close returned")
	}
	if now := r.anchor(t); !bytes.Equal(now, was) {
		t.Errorf("anchor %x, want it unmoved", now)
	}
	sweepAndCheck(t, r)
}

// The spare was keyed by the objects' authValue (the PK's, in a seal):
// once the spare takes the gate's role, and when it is kept but never
// taken, that copy is cleared and the record's session keys nothing with
// it; the caller's own buffer is left as it was.
func TestReview9SpareKeepsNoSecret(t *testing.T) {
	for _, taken := range []bool{true, false} {
		name := map[bool]string{true: "taken", false: "kept, never taken"}[taken]
		t.Run(name, func(t *testing.T) {
			r := newSpareEnv(t)
			callers := bytes.Clone(r.auth)
			var own []byte
			head := sha256.Sum256([]byte(name))
			err := r.tp.Share(func() error {
				if err := r.read(); err != nil {
					return err
				}
				ps, uses := r.used(t)
				own = tpm.PolicySessionAuth(ps)
				if !bytes.Equal(own, r.auth) {
					t.Fatalf("the session's copy %x is not the authValue", own)
				}
				if err := ps.Spare(uses); err != nil {
					return err
				}
				if !taken {
					return nil
				}
				ge, err := r.tp.PrepareGatedExtendOf(r.x, r.gate, head[:])
				if err != nil {
					return err
				}
				o, k, dir := tpm.GatedExtendAuth(ge)
				if len(o) != 0 || len(k) != 0 || dir != 0 {
					t.Errorf("the record's session keeps authValue %x / %x, direction %d", o, k, dir)
				}
				if !allZero(own) {
					t.Errorf("the spare's copy of the authValue is not cleared: %x", own)
				}
				return errors.Join(ge.Extend(), ge.Close())
			})
			if err != nil {
				t.Fatal(err)
			}
			if !allZero(own) {
				t.Errorf("the spare's copy of the authValue is not cleared after the Share: %x", own)
			}
			if !bytes.Equal(r.auth, callers) {
				t.Error("the caller's authValue was cleared under it")
			}
			onlyObjectsLeft(t, r)
		})
	}
}

// rcs are response codes as numbers.
func rcs(rc []tpm2.TPMRC) []string {
	out := make([]string, len(rc))
	for i, c := range rc {
		out[i] = fmt.Sprintf("0x%x", uint32(c))
	}
	return out
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
