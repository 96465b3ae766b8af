package tpm_test

// Attacks on the shared session's authorization roles (issue
// 14: tpm.TPM.Share as provd's keyed HMAC session, authorizing the AK's
// quote and a gate's TPM2_PolicySecret; keepShared over the gate policy
// session's start). A1 is the bus; each test says what it tries.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// sharedAuthEnv is a pinned SRK, a gate with its written gated index, and an
// AK (a gate-shaped key) blob with its value, behind a bus.
type sharedAuthEnv struct {
	env    *swtpmtest.Env
	bus    *swtpmtest.Bus
	tp     *tpm.TPM
	gate   tpm.Gate
	x      tpm.NVIndex
	srk    tpm.Object
	akBlob tpm.Blob
	akAuth []byte
}

func newSharedAuthEnv(t *testing.T, opts ...swtpmtest.Option) *sharedAuthEnv {
	t.Helper()
	r := &sharedAuthEnv{bus: &swtpmtest.Bus{}}
	r.env = swtpmtest.Start(t, append([]swtpmtest.Option{swtpmtest.WithBus(r.bus)}, opts...)...)
	r.tp = r.env.TPM
	first := sha256.Sum256([]byte("head"))
	r.gate, r.x = writtenGatedIndex(t, r.tp, first[:])
	var err error
	if r.srk, err = r.tp.SRK(); err != nil {
		t.Fatal(err)
	}
	r.akAuth = newGateAuth(t)
	if r.akBlob, err = r.tp.CreateGate(r.srk, r.akAuth); err != nil {
		t.Fatal(err)
	}
	return r
}

var sharedAuthSel = tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{1, 0, 0}}}}

// anchor is the gated index's value, read outside any session.
func (r *sharedAuthEnv) anchor(t *testing.T) []byte {
	t.Helper()
	v, err := r.tp.ReadExtendIndex(r.x)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// read is an authenticated read of the gated index (in the shared session
// inside a Share).
func (r *sharedAuthEnv) read() error {
	return r.tp.WithAuthenticatedNV(func(a *tpm.AuthenticatedNV) error { _, err := a.ReadExtendIndex(r.x); return err })
}

// prove is, in one Share, the anchor's authenticated read (it starts the
// shared session), arm, then one gated extend of head prepared (its proof
// in the shared session), made and closed.
func (r *sharedAuthEnv) prove(head []byte, arm func()) error {
	return r.tp.Share(func() error {
		if err := r.read(); err != nil {
			return err
		}
		if arm != nil {
			arm()
		}
		ge, err := r.tp.PrepareGatedExtendOf(r.x, r.gate, head)
		if err != nil {
			return err
		}
		return errors.Join(ge.Extend(), ge.Close())
	})
}

// quote is, in one Share, the AK's load (it starts the shared session),
// arm, then a quote authorized in the shared session.
func (r *sharedAuthEnv) quote(arm func()) error {
	return r.tp.Share(func() error {
		ak, err := r.tp.Load(r.srk, nil, r.akBlob)
		if err != nil {
			return err
		}
		defer r.tp.Flush(ak.Handle)
		if arm != nil {
			arm()
		}
		nonce := sha256.Sum256([]byte("nonce"))
		_, _, err = r.tp.Quote(ak, r.akAuth, nonce[:], sharedAuthSel)
		return err
	})
}

// chained is SHA-256(v || head).
func chained(v, head []byte) []byte {
	c := sha256.Sum256(append(slices.Clone(v), head...))
	return c[:]
}

// isPolicyStart: cmd is a StartAuthSession for a policy session.
func isPolicyStart(cmd []byte) bool {
	if swtpmtest.CommandCode(cmd) != tpm2.TPMCCStartAuthSession {
		return false
	}
	st, ok := swtpmtest.SessionType(cmd)
	return ok && st == tpm2.TPMSEPolicy
}

// withHandle is rsp (a StartAuthSession answer) naming h.
func withHandle(rsp []byte, h uint32) []byte {
	r := slices.Clone(rsp)
	binary.BigEndian.PutUint32(r[10:14], h)
	return r
}

// A1 answers the gate policy session's StartAuthSession with a policy
// session of its own, in a Share whose shared session then proves the
// gate into it (the new path: before, a one-use session did). The proof
// is bound to provd's extend by its cpHashA: A1's data is refused, and
// the index moves at most by provd's head, once, whatever provd and A1
// then do. Nothing is left once swept.
func TestGateProofStolenInShare(t *testing.T) {
	r := newSharedAuthEnv(t)
	was := r.anchor(t)
	head := sha256.Sum256([]byte("provd's head"))
	thief := &swtpmtest.PolicySessionThief{}
	var extendErr error
	err := r.tp.Share(func() error {
		if err := r.read(); err != nil {
			return err
		}
		r.bus.Set(thief.Hook)
		ge, err := r.tp.PrepareGatedExtendOf(r.x, r.gate, head[:])
		r.bus.Set(nil)
		if err != nil {
			return err
		}
		if thief.Stolen() == 0 {
			t.Fatal("attack not mounted")
		}
		evil := sha256.Sum256([]byte("A1 was here"))
		if rc, err := swtpmtest.OwnSessionExtend(r.bus.Next, r.x.Handle, thief.Stolen(), evil[:]); err != nil || rc == tpm2.TPMRCSuccess {
			t.Errorf("A1's data through the proof made in the shared session: %v %v, want a refusal", rc, err)
		}
		if rc, err := swtpmtest.OwnSessionExtend(r.bus.Next, r.x.Handle, thief.Stolen(), head[:]); err != nil || rc != tpm2.TPMRCSuccess {
			t.Logf("provd's head through the stolen session: %v %v", rc, err)
		}
		extendErr = ge.Extend()
		return ge.Close()
	})
	t.Logf("provd's extend: %v; Share: %v", extendErr, err)
	if extendErr == nil {
		t.Error("provd's extend in A1's session reported success")
	}
	if now := r.anchor(t); !bytes.Equal(now, chained(was, head[:])) && !bytes.Equal(now, was) {
		t.Errorf("anchor %x: neither as before nor provd's one extend", now)
	}
	sweptAsAsked(t, r.tp, r.gate.Handle)
	// The next proof works.
	next := sha256.Sum256([]byte("next"))
	before := r.anchor(t)
	if err := r.prove(next[:], nil); err != nil {
		t.Fatalf("next proof: %v", err)
	}
	if now := r.anchor(t); !bytes.Equal(now, chained(before, next[:])) {
		t.Errorf("anchor %x after the next proof, want %x", now, chained(before, next[:]))
	}
	sweptAsAsked(t, r.tp, r.gate.Handle)
}

// sharedHandleRecorder records the shared session's handle from the NV_Read
// that starts a proof's Share (its last session).
func sharedHandleRecorder(dst *tpm2.TPMHandle, mu *sync.Mutex, then swtpmtest.Hook) swtpmtest.Hook {
	return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) == tpm2.TPMCCNVRead || swtpmtest.CommandCode(cmd) == tpm2.TPMCCLoad {
			nh := 2
			if swtpmtest.CommandCode(cmd) == tpm2.TPMCCLoad {
				nh = 1
			}
			if h := swtpmtest.LastSession(cmd, nh); h>>24 == 0x02 {
				mu.Lock()
				*dst = h
				mu.Unlock()
			}
		}
		if then != nil {
			return then(next, cmd)
		}
		return nil, nil, false
	}
}

// A1 answers the gate policy session's StartAuthSession with the number
// of the session the proof is to be made in: the operation's shared
// session (kept started over that start), or ReadPrepareGatedExtend's
// record session; the number read from the NV_Read that session
// authorized. As its HMAC handle it is refused at the channel (not a
// policy session's); in its policy form (0x03, the same slot: the TPM
// numbers sessions by slot) the TPM refuses PolicySecret
// (TPM_RC_HANDLE); forged, or with the real start passed on (the TPM's
// real policy session is then nobody's). Nothing is extended, nothing is
// called a wrong value, whatever is left is swept as asked, and the next
// proof extends the anchor once, by provd's head.
func TestGateStartAnsweredWithItsOwnSession(t *testing.T) {
	for _, session := range []string{"shared", "record"} {
		for _, c := range []struct {
			name    string
			forward bool
			policy  bool
		}{
			{"forged, its HMAC handle", false, false},
			{"passed on, its HMAC handle", true, false},
			{"forged, its slot as a policy handle", false, true},
			{"passed on, its slot as a policy handle", true, true},
		} {
			t.Run(session+"/"+c.name, func(t *testing.T) {
				r := newSharedAuthEnv(t)
				prove := func(head []byte) error { return r.prove(head, nil) }
				if session == "record" {
					prove = func(head []byte) error { _, err := r.readPrepare(head); return err }
				}
				was := r.anchor(t)
				var mu sync.Mutex
				var own tpm2.TPMHandle
				var after []string
				ran := false
				r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					mu.Lock()
					defer mu.Unlock()
					if isSessionNVRead(cmd) && own == 0 {
						own = swtpmtest.LastSession(cmd, 2)
						return nil, nil, false
					}
					if own != 0 {
						after = append(after, ccName(swtpmtest.CommandCode(cmd)))
					}
					if ran || own == 0 || !isPolicyStart(cmd) {
						return nil, nil, false
					}
					ran = true
					var rsp []byte
					if c.forward {
						var err error
						if rsp, err = next.Send(cmd); err != nil {
							return nil, err, true
						}
					} else {
						rsp = make([]byte, 10+4+2+16)
						binary.BigEndian.PutUint16(rsp, uint16(tpm2.TPMSTNoSessions))
						binary.BigEndian.PutUint32(rsp[2:], uint32(len(rsp)))
						binary.BigEndian.PutUint16(rsp[14:], 16)
					}
					h := uint32(own)
					if c.policy {
						h = 0x03000000 | h&0x00ffffff
					}
					return withHandle(rsp, h), nil, true
				})
				head := sha256.Sum256([]byte("provd's head"))
				err := prove(head[:])
				r.bus.Set(nil)
				t.Logf("%s session 0x%08x; %v; commands after the read: %v", session, uint32(own), err, after)
				if !ran {
					t.Fatal("not mounted")
				}
				if err == nil {
					t.Error("a proof into the session A1 named succeeded")
				}
				if errors.Is(err, tpm.ErrBadAuth) {
					t.Errorf("A1's handle reported as a wrong gate value: %v", err)
				}
				if now := r.anchor(t); !bytes.Equal(now, was) {
					t.Errorf("the anchor moved: %x, was %x", now, was)
				}
				sweptAsAsked(t, r.tp, r.gate.Handle)
				next := sha256.Sum256([]byte("next"))
				if err := prove(next[:]); err != nil {
					t.Fatalf("the next proof: %v", err)
				}
				if now := r.anchor(t); !bytes.Equal(now, chained(was, next[:])) {
					t.Errorf("the anchor after the next proof %x, want %x", now, chained(was, next[:]))
				}
				sweptAsAsked(t, r.tp, r.gate.Handle)
			})
		}
	}
}

// A1 passes the gate's PolicySecret, or the quote, on to the TPM, which
// runs it, and answers TPM_RC_RETRY: the channel sends the same bytes
// again. Made in the shared session, the TPM refuses the copy (the
// session's nonce moved with the first run), and so the probe: the refusal
// is what A1 made (ErrResponseForged). Made in a one-use HMAC session (no
// Share), the TPM ended the session with the first copy, and the resend
// names none (TPM_RC_REFERENCE_S0). Never a wrong authorization value
// (ErrBadAuth: the state's value is right, and api maps it to
// tpm_bad_auth); nothing extended, the index as before, nothing left.
func TestForgedRetryAfterSharedAuth(t *testing.T) {
	r := newSharedAuthEnv(t)
	for _, c := range []struct {
		name   string
		cc     tpm2.TPMCC
		op     func(arm func()) error
		forged bool
	}{
		{"gate proof", tpm2.TPMCCPolicySecret, func(arm func()) error {
			h := sha256.Sum256([]byte("head after a forged RETRY"))
			return r.prove(h[:], arm)
		}, true},
		{"quote", tpm2.TPMCCQuote, r.quote, true},
		{"quote, no Share", tpm2.TPMCCQuote, func(arm func()) error {
			ak, err := r.tp.Load(r.srk, nil, r.akBlob)
			if err != nil {
				return err
			}
			defer r.tp.Flush(ak.Handle)
			arm()
			nonce := sha256.Sum256([]byte("nonce"))
			_, _, err = r.tp.Quote(ak, r.akAuth, nonce[:], sharedAuthSel)
			return err
		}, false},
		{"gated extend, no Share", tpm2.TPMCCPolicySecret, func(arm func()) error {
			arm()
			h := sha256.Sum256([]byte("h"))
			return r.tp.NVExtendGated(r.x.Handle, h[:], r.gate)
		}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			was := r.anchor(t)
			n := 0
			err := c.op(func() { r.bus.Set(swtpmtest.RanThenAnswered(c.cc, tpm2.TPMRCRetry, &n)) })
			r.bus.Set(nil)
			t.Logf("%s after a forged RETRY (%d sent): %v", c.name, n, err)
			if n < 2 {
				t.Fatalf("the command was sent %d times, want it sent again", n)
			}
			if err == nil {
				t.Fatal("succeeded: the TPM ran it twice")
			}
			if errors.Is(err, tpm.ErrBadAuth) {
				t.Errorf("%s: A1's forged RETRY is reported as a wrong authorization value (ErrBadAuth): %v", c.name, err)
			}
			if c.forged && !errors.Is(err, tpm.ErrResponseForged) {
				t.Errorf("%s: A1's forged RETRY is not ErrResponseForged: %v", c.name, err)
			}
			if now := r.anchor(t); !bytes.Equal(now, was) {
				t.Errorf("failed, yet the anchor moved: %x, was %x", now, was)
			}
			sweptAsAsked(t, r.tp, r.gate.Handle)
		})
	}
}

// A1 passes the proof or the quote on and answers a failure the TPM
// did not give (it ran the command): SESSION_MEMORY, POLICY_FAIL,
// TPM_RC_VALUE, TPM_RC_INITIALIZE. The shared session, its nonces out of
// step, is given up: the next read in the same Share starts another and
// works; the index is as before; nothing is left once swept.
func TestForgedFailureAfterSharedAuth(t *testing.T) {
	r := newSharedAuthEnv(t)
	for _, cc := range []tpm2.TPMCC{tpm2.TPMCCPolicySecret, tpm2.TPMCCQuote} {
		for _, rc := range []tpm2.TPMRC{tpm2.TPMRCSessionMemory, tpm2.TPMRCPolicyFail, tpm2.TPMRCValue, tpm2.TPMRCInitialize} {
			t.Run(ccName(cc)+"/"+rc.Error(), func(t *testing.T) {
				was := r.anchor(t)
				n := 0
				var opErr, nextErr error
				err := r.tp.Share(func() error {
					if err := r.read(); err != nil {
						return err
					}
					r.bus.Set(swtpmtest.RanThenAnswered(cc, rc, &n))
					if cc == tpm2.TPMCCPolicySecret {
						h := sha256.Sum256([]byte("h"))
						var ge *tpm.GatedExtend
						if ge, opErr = r.tp.PrepareGatedExtendOf(r.x, r.gate, h[:]); opErr == nil {
							opErr = errors.Join(ge.Extend(), ge.Close())
						}
					} else {
						ak, err := r.tp.Load(r.srk, nil, r.akBlob)
						if err != nil {
							return err
						}
						nonce := sha256.Sum256([]byte("nonce"))
						_, _, opErr = r.tp.Quote(ak, r.akAuth, nonce[:], sharedAuthSel)
						if err := r.tp.Flush(ak.Handle); err != nil {
							return err
						}
					}
					r.bus.Set(nil)
					nextErr = r.read()
					return nil
				})
				r.bus.Set(nil)
				t.Logf("%v forged after the TPM ran %v: %v", rc, cc, opErr)
				if err != nil {
					t.Fatal(err)
				}
				if n == 0 {
					t.Fatal("attack not mounted")
				}
				if opErr == nil {
					t.Error("succeeded on a forged failure")
				}
				if nextErr != nil {
					t.Errorf("the next read in the same Share: %v", nextErr)
				}
				if now := r.anchor(t); !bytes.Equal(now, was) {
					t.Errorf("the anchor moved: %x, was %x", now, was)
				}
				sweptAsAsked(t, r.tp, r.gate.Handle)
			})
		}
	}
}

// A1 flips attribute bits of the shared session's entry in the gate's
// PolicySecret or the quote: in the command (continueSession cleared,
// audit set, decrypt set, encrypt set), the TPM refuses it; in the answer
// (continueSession cleared, audit set), provd refuses it as forged.
// Nothing is extended, nothing is left, the next proof works.
func TestSharedAuthBitsFlipped(t *testing.T) {
	r := newSharedAuthEnv(t)
	type flip struct {
		name    string
		command bool
		bit     byte
	}
	flips := []flip{
		{"command continueSession cleared", true, 0x01},
		{"command audit set", true, 0x80},
		{"command decrypt set", true, 0x20},
		{"command encrypt set", true, 0x40},
		{"answer continueSession cleared", false, 0x01},
		{"answer audit set", false, 0x80},
	}
	nhOf := map[tpm2.TPMCC]int{tpm2.TPMCCPolicySecret: 2, tpm2.TPMCCQuote: 1}
	for _, cc := range []tpm2.TPMCC{tpm2.TPMCCPolicySecret, tpm2.TPMCCQuote} {
		for _, f := range flips {
			t.Run(ccName(cc)+"/"+f.name, func(t *testing.T) {
				was := r.anchor(t)
				var ran bool
				tamper := func(cmd, rsp []byte) ([]byte, []byte) {
					if rsp == nil {
						if !f.command {
							return nil, nil
						}
						c := slices.Clone(cmd)
						c[swtpmtest.SessionAttrOffset(c, nhOf[cc], 0)] ^= f.bit
						return c, nil
					}
					if f.command || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
						return nil, rsp
					}
					a := slices.Clone(rsp)
					a[rspAttrsOffset(a)] ^= f.bit
					return nil, a
				}
				arm := func() { r.bus.Set(tamperOn(cc, tamper, &ran)) }
				var err error
				if cc == tpm2.TPMCCQuote {
					err = r.quote(arm)
				} else {
					h := sha256.Sum256([]byte("h"))
					err = r.prove(h[:], arm)
				}
				r.bus.Set(nil)
				if !ran {
					t.Fatal("attack not mounted")
				}
				t.Logf("%v: bad auth %v, forged %v", err, errors.Is(err, tpm.ErrBadAuth), errors.Is(err, tpm.ErrResponseForged))
				if err == nil {
					t.Error("succeeded")
				}
				if !f.command && !errors.Is(err, tpm.ErrResponseForged) {
					t.Errorf("a changed answer is not ErrResponseForged: %v", err)
				}
				if now := r.anchor(t); !bytes.Equal(now, was) {
					t.Errorf("the anchor moved: %x, was %x", now, was)
				}
				sweptAsAsked(t, r.tp, r.gate.Handle)
			})
		}
	}
	h := sha256.Sum256([]byte("next"))
	if err := r.prove(h[:], nil); err != nil {
		t.Fatalf("next proof: %v", err)
	}
	if err := r.quote(nil); err != nil {
		t.Fatalf("next quote: %v", err)
	}
	sweptAsAsked(t, r.tp, r.gate.Handle)
}

// A1 holds the gate's PolicySecret (the shared session's, keyed by the
// gate's value) and answers a failure without passing it on; it sends the
// held command itself later, when it sees the shared session's flush (the
// last moment it is valid). The proof lands in provd's policy session,
// which provd spends: nothing is extended by it, and provd's next proof
// extends once. A1 also replays an earlier PolicySecret of the shared
// session after provd's proof: refused, and provd's session goes on.
func TestSharedAuthHeldAndReplayed(t *testing.T) {
	r := newSharedAuthEnv(t)
	t.Run("held, sent at the flush", func(t *testing.T) {
		was := r.anchor(t)
		var mu sync.Mutex
		var held []byte
		var heldRC tpm2.TPMRC
		var order []tpm2.TPMCC
		r.bus.Set(nil)
		h := sha256.Sum256([]byte("held head"))
		err := r.prove(h[:], func() {
			r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				mu.Lock()
				defer mu.Unlock()
				cc := swtpmtest.CommandCode(cmd)
				order = append(order, cc)
				switch {
				case cc == tpm2.TPMCCPolicySecret && held == nil:
					held = slices.Clone(cmd)
					return swtpmtest.ErrorAnswer(tpm2.TPMRCValue), nil, true
				case cc == tpm2.TPMCCFlushContext && held != nil && heldRC == 0:
					rsp, err := next.Send(held)
					if err == nil && len(rsp) >= 10 {
						heldRC = tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
						if heldRC == 0 {
							heldRC = 0xffffffff // success, marked
						}
					}
				}
				return nil, nil, false
			})
		})
		r.bus.Set(nil)
		t.Logf("prove: %v; the held PolicySecret, sent at the first flush, answered 0x%x; order %v", err, uint32(heldRC), order)
		if err == nil {
			t.Error("succeeded with its PolicySecret held")
		}
		if now := r.anchor(t); !bytes.Equal(now, was) {
			t.Errorf("the anchor moved: %x, was %x", now, was)
		}
		sweptAsAsked(t, r.tp, r.gate.Handle)
		next := sha256.Sum256([]byte("next"))
		if err := r.prove(next[:], nil); err != nil {
			t.Fatal(err)
		}
		if now := r.anchor(t); !bytes.Equal(now, chained(was, next[:])) {
			t.Errorf("anchor %x, want one extend %x", now, chained(was, next[:]))
		}
		sweptAsAsked(t, r.tp, r.gate.Handle)
	})
	t.Run("replayed", func(t *testing.T) {
		var mu sync.Mutex
		var recorded [][]byte
		var replayRC []tpm2.TPMRC
		record := func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
			mu.Lock()
			defer mu.Unlock()
			if swtpmtest.CommandCode(cmd) == tpm2.TPMCCPolicySecret {
				recorded = append(recorded, slices.Clone(cmd))
			}
			return nil, nil, false
		}
		r.bus.Set(record)
		was := r.anchor(t)
		h1 := sha256.Sum256([]byte("one"))
		h2 := sha256.Sum256([]byte("two"))
		var nextErr error
		err := r.tp.Share(func() error {
			if err := r.read(); err != nil {
				return err
			}
			ge, err := r.tp.PrepareGatedExtendOf(r.x, r.gate, h1[:])
			if err != nil {
				return err
			}
			if err := errors.Join(ge.Extend(), ge.Close()); err != nil {
				return err
			}
			// A1 replays the recorded PolicySecret (the shared session's,
			// one command old) into the TPM.
			mu.Lock()
			for _, c := range recorded {
				rsp, err := r.bus.Next.Send(c)
				if err != nil {
					return err
				}
				replayRC = append(replayRC, tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10])))
			}
			mu.Unlock()
			// provd goes on in its shared session.
			if nextErr = r.read(); nextErr != nil {
				return nextErr
			}
			ge, err = r.tp.PrepareGatedExtendOf(r.x, r.gate, h2[:])
			if err != nil {
				return err
			}
			return errors.Join(ge.Extend(), ge.Close())
		})
		r.bus.Set(nil)
		t.Logf("replays answered %v", replayRC)
		for _, rc := range replayRC {
			if rc == tpm2.TPMRCSuccess {
				t.Error("a replayed PolicySecret of the shared session was accepted")
			}
		}
		if err != nil {
			t.Errorf("provd after A1's replay: %v", err)
		}
		if now := r.anchor(t); !bytes.Equal(now, chained(chained(was, h1[:]), h2[:])) {
			t.Errorf("anchor %x, want provd's two extends", now)
		}
		sweptAsAsked(t, r.tp, r.gate.Handle)
	})
}

// Slots: with one session held beside the operation (the daemon's kept
// policy session, a peer's), a Share that reads, proves the gate in the
// shared session, extends, reads again, increments a gated counter three
// times and quotes, never meets a refusal for want of a slot behind
// swtpmtest.SessionLimit (3 per connection, as /dev/tpmrm0); and, alone,
// holds at most two sessions at once, as the one-use sessions did.
func TestSharedAuthSlots(t *testing.T) {
	l := &swtpmtest.SessionLimit{}
	r := newSharedAuthEnv(t, swtpmtest.WithWrap(l.Wrap))
	// A gated counter for IncrementGated.
	if _, err := r.tp.DefineGatedCounter(testGatedCounter, testGatedAuthorizer, r.gate); err != nil {
		t.Fatal(err)
	}
	undefineAtEnd(t, r.tp, testGatedCounter)
	undefineAtEnd(t, r.tp, testGatedAuthorizer)
	op := func() error {
		return r.tp.Share(func() error {
			if err := r.read(); err != nil {
				return err
			}
			h := sha256.Sum256([]byte("h"))
			ge, err := r.tp.PrepareGatedExtendOf(r.x, r.gate, h[:])
			if err != nil {
				return err
			}
			if err := errors.Join(ge.Extend(), ge.Close()); err != nil {
				return err
			}
			if err := r.read(); err != nil {
				return err
			}
			if err := r.tp.IncrementGated(testGatedCounter, testGatedAuthorizer, r.gate, 3); err != nil {
				return err
			}
			ak, err := r.tp.Load(r.srk, nil, r.akBlob)
			if err != nil {
				return err
			}
			defer r.tp.Flush(ak.Handle)
			nonce := sha256.Sum256([]byte("nonce"))
			_, _, err = r.tp.Quote(ak, r.akAuth, nonce[:], sharedAuthSel)
			return err
		})
	}
	for _, beside := range []int{0, 1} {
		var held []*tpm.PolicySession
		for range beside {
			s, err := r.tp.StartPolicySession(false)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, s)
		}
		l.Take()
		peak := &peakSessions{}
		if beside == 0 {
			r.bus.Set(peak.hook)
		}
		err := op()
		r.bus.Set(nil)
		refused, cmds := l.Take()
		for _, s := range held {
			s.Close()
		}
		if err != nil {
			t.Errorf("%d beside: %v", beside, err)
		}
		if refused > 0 {
			t.Errorf("%d beside: %d refusals for want of a slot in %v", beside, refused, cmds)
		}
		if beside == 0 {
			t.Logf("alone: at most %d sessions at once", peak.most)
			if peak.most > 2 {
				t.Errorf("alone, the operation held %d sessions at once, want at most 2", peak.most)
			}
		}
		sweptAsAsked(t, r.tp, r.gate.Handle)
	}
}

// The gate policy session's start fails: a forged SESSION_MEMORY, an
// answer lost on the bus, or a panic under it (the bus's) that the caller
// recovers inside the Share. keepShared ends with the start on every path
// (deferred): the next StartAuthSession that needs the shared session's
// slot (the second beside it, which would leave none spare) has the idle
// shared session flushed first, in the same Share and in the next.
func TestKeepEndsWithTheStart(t *testing.T) {
	r := newSharedAuthEnv(t)
	for _, c := range []struct {
		name string
		fail func(next transport.TPM, cmd []byte) ([]byte, error)
	}{
		{"forged SESSION_MEMORY", func(transport.TPM, []byte) ([]byte, error) {
			return swtpmtest.ErrorAnswer(tpm2.TPMRCSessionMemory), nil
		}},
		{"transport error", func(transport.TPM, []byte) ([]byte, error) {
			return nil, errors.New("the bus dropped it")
		}},
		{"panic recovered inside the Share", func(transport.TPM, []byte) ([]byte, error) {
			panic("the bus's panic")
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var mu sync.Mutex
			var shared tpm2.TPMHandle
			var log []string
			failed := false
			r.bus.Set(sharedHandleRecorder(&shared, &mu, func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				mu.Lock()
				switch swtpmtest.CommandCode(cmd) {
				case tpm2.TPMCCFlushContext:
					if tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == shared {
						log = append(log, "flush shared")
					}
				case tpm2.TPMCCStartAuthSession:
					log = append(log, "start")
					if !failed && isPolicyStart(cmd) {
						failed = true
						mu.Unlock()
						rsp, err := c.fail(next, cmd)
						return rsp, err, true
					}
				}
				mu.Unlock()
				return nil, nil, false
			}))
			another := func() error {
				mu.Lock()
				log = append(log, "--")
				mu.Unlock()
				var errs []error
				var started []*tpm.PolicySession
				for range 3 {
					s, err := r.tp.StartPolicySession(false)
					if err != nil {
						errs = append(errs, err)
						break
					}
					started = append(started, s)
				}
				for _, s := range started {
					errs = append(errs, s.Close())
				}
				return errors.Join(errs...)
			}
			err := r.tp.Share(func() error {
				if err := r.read(); err != nil {
					return err
				}
				func() {
					defer func() { _ = recover() }()
					h := sha256.Sum256([]byte("h"))
					if _, err := r.tp.PrepareGatedExtendOf(r.x, r.gate, h[:]); err == nil {
						t.Error("prepared through a failed start")
					}
				}()
				return another()
			})
			if err == nil {
				// The next Share: its read, then another start.
				err = r.tp.Share(func() error {
					if err := r.read(); err != nil {
						return err
					}
					return another()
				})
			}
			r.bus.Set(nil)
			if err != nil {
				t.Fatal(err)
			}
			for n, i := 0, 0; n < 2; n++ {
				i += slices.Index(log[i:], "--") + 1
				if after := log[i:]; len(after) < 4 || !slices.Equal(after[:4], []string{"start", "flush shared", "start", "start"}) {
					t.Errorf("in Share %d, the second StartAuthSession beside the shared session after the failed gate start did not flush it first: %v", n+1, log)
				}
			}
			sweptAsAsked(t, r.tp, r.gate.Handle)
		})
	}
}

// A TPM event between the shared session's start and its use in an
// authorization: a migration (the TPM keeps its sessions and objects) or a
// reset (they are gone), between the anchor's read and the gate's proof,
// right after the gate policy session's start (the shared session kept
// over it), and between the AK's load and the quote. The migration: the
// operation works, and the shared session, given up, is flushed; the
// reset: the proof or the quote fails (the gate and the AK are gone), and
// nothing is flushed by a number provd no longer holds. Nothing is left
// but, after a migration, the extend's policy session, which the sweep
// provd asks for takes.
func TestEventsBeforeSharedAuth(t *testing.T) {
	for _, ev := range []string{"migrate", "reset", "power cut"} {
		for _, where := range []string{"before the gate's start", "after the gate's start", "before the quote"} {
			t.Run(ev+"/"+where, func(t *testing.T) {
				r := newSharedAuthEnv(t)
				was := r.anchor(t)
				event := func() { r.env.Event(ev) }
				var flushed []tpm2.TPMHandle
				var mu sync.Mutex
				logFlush := func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					if swtpmtest.CommandCode(cmd) == tpm2.TPMCCFlushContext {
						mu.Lock()
						flushed = append(flushed, tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])))
						mu.Unlock()
					}
					return nil, nil, false
				}
				head := sha256.Sum256([]byte("head"))
				var err error
				switch where {
				case "before the gate's start":
					err = r.prove(head[:], func() { event(); r.bus.Set(logFlush) })
				case "after the gate's start":
					done := false
					err = r.prove(head[:], func() {
						r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
							logFlush(next, cmd)
							if done || !isPolicyStart(cmd) {
								return nil, nil, false
							}
							done = true
							rsp, err := next.Send(cmd)
							event()
							return rsp, err, true
						})
					})
				case "before the quote":
					err = r.quote(func() { event(); r.bus.Set(logFlush) })
				}
				r.bus.Set(nil)
				t.Logf("%v; flushed %x", err, flushed)
				if ev == "migrate" && err != nil {
					t.Errorf("after a migration: %v", err)
				}
				if ev != "migrate" {
					if err == nil {
						t.Error("succeeded after a reset that took the gate or the AK")
					}
					if errors.Is(err, tpm.ErrResponseForged) {
						t.Errorf("an honest reset called forged: %v", err)
					}
				}
				now := r.anchor(t)
				if where != "before the quote" && ev == "migrate" && !bytes.Equal(now, chained(was, head[:])) {
					t.Errorf("anchor %x, want one extend", now)
				}
				if ev != "migrate" && !bytes.Equal(now, was) {
					t.Errorf("the anchor moved after a reset: %x", now)
				}
				// A migration keeps the TPM's sessions, and the extend's
				// policy session, whose generation moved under it, is
				// forgotten, not flushed by its number (found by review:
				// after a reset or power cut that number may be another
				// session's slot): the sweep asked for takes it.
				if ev == "migrate" {
					sweptAsAsked(t, r.tp, r.gate.Handle)
				}
				left, lerr := r.tp.Leftovers()
				if lerr != nil {
					t.Fatal(lerr)
				}
				for _, h := range left {
					if h == r.gate.Handle && ev == "migrate" {
						continue
					}
					t.Errorf("0x%08x left in the TPM", uint32(h))
					_ = r.tp.Flush(h)
				}
				if ev != "migrate" {
					// The gate is gone with the reset: nothing to flush.
					_ = r.tp.Flush(r.gate.Handle)
				}
			})
		}
	}
}

// No secret crosses the bus: neither the gate's value nor the AK's
// appear in any command or answer of a proof or a quote in the shared
// session.
func TestSharedAuthValuesNeverOnTheBus(t *testing.T) {
	rec := &swtpmtest.Recorder{}
	r := newSharedAuthEnv(t, swtpmtest.WithRecorder(rec))
	// A gate whose value the test knows, and its own gated index.
	const h2 tpm2.TPMHandle = 0x01500031
	first := sha256.Sum256([]byte("first"))
	g, x2, _, gateAuth := gatedIndex(t, r.tp, h2, first[:])
	rec.Reset()
	err := r.tp.Share(func() error {
		if err := r.tp.WithAuthenticatedNV(func(a *tpm.AuthenticatedNV) error { _, err := a.ReadExtendIndex(x2); return err }); err != nil {
			return err
		}
		d := sha256.Sum256([]byte("d"))
		ge, err := r.tp.PrepareGatedExtendOf(x2, g, d[:])
		if err != nil {
			return err
		}
		return errors.Join(ge.Extend(), ge.Close())
	})
	if err != nil {
		t.Fatal(err)
	}
	if !rec.Sent(tpm2.TPMCCPolicySecret) {
		t.Fatal("no proof recorded")
	}
	if err := r.tp.Flush(g.Handle); err != nil { // three object slots
		t.Fatal(err)
	}
	if err := r.quote(nil); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string][]byte{"AK value": r.akAuth, "gate value": gateAuth} {
		if off := rec.Leak(v); off >= 0 {
			t.Errorf("the %s crossed the bus (from byte %d)", name, off)
		}
	}
	sweptAsAsked(t, r.tp, r.gate.Handle)
}

func ccName(cc tpm2.TPMCC) string {
	return map[tpm2.TPMCC]string{tpm2.TPMCCPolicySecret: "PolicySecret", tpm2.TPMCCQuote: "Quote"}[cc]
}
