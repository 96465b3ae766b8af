package tpm_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// extendedOnce is, in r's Share, the anchor's read and one gated extend of
// head made (its GatedExtend not closed: the caller goes on with it).
func (r *sharedAuthEnv) extendedOnce(t *testing.T, head []byte) *tpm.GatedExtend {
	t.Helper()
	if err := r.read(); err != nil {
		t.Fatal(err)
	}
	ge, err := r.tp.PrepareGatedExtendOf(r.x, r.gate, head)
	if err != nil {
		t.Fatal(err)
	}
	if err := ge.Extend(); err != nil {
		t.Fatal(err)
	}
	return ge
}

// A second extend in the first's policy session (issue 14: provision's
// record after its new anchor's first): two commands (PolicySecret,
// PolicyCommandCode) where a session of its own takes four and a flush,
// the anchor moved by the two heads in order, the first GatedExtend's
// Close a no-op (its session went on), and nothing left once the second
// is closed.
func TestPrepareGatedExtendAgain(t *testing.T) {
	r := newSharedAuthEnv(t)
	was := r.anchor(t)
	h1, h2 := sha256.Sum256([]byte("first")), sha256.Sum256([]byte("second"))
	log := &swtpmtest.CommandLog{}
	err := r.tp.Share(func() error {
		ge1 := r.extendedOnce(t, h1[:])
		r.bus.Set(log.Hook)
		log.Start()
		ge2, ok, err := r.tp.PrepareGatedExtendAgain(ge1, r.x, r.gate, h2[:])
		if err != nil || !ok {
			t.Fatalf("again: ok %v, %v", ok, err)
		}
		if err := ge1.Close(); err != nil {
			t.Fatal(err)
		}
		cmds := log.Stop()
		if want := []tpm2.TPMCC{tpm2.TPMCCPolicySecret, tpm2.TPMCCPolicyCommandCode}; !slices.Equal(cmds, want) {
			t.Errorf("again sent %v, want %v", cmds, want)
		}
		if ge2.Handle() != ge1.Handle() {
			t.Errorf("the second extend's session 0x%x, the first's 0x%x", ge2.Handle(), ge1.Handle())
		}
		if err := ge2.Extend(); err != nil {
			t.Fatal(err)
		}
		return ge2.Close()
	})
	r.bus.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	if now := r.anchor(t); !bytes.Equal(now, chained(chained(was, h1[:]), h2[:])) {
		t.Errorf("anchor %x, want the two heads in order", now)
	}
	onlyGateLeft(t, r)
}

// What cannot go on, sends nothing and says so (ok false): an extend not
// made, one made in another generation of the TPM (a reset seen since: the
// session is gone, and its number may be another's), one whose session
// started more than half a proof's lifetime ago (the proof's expiry counts
// from the session's start), and one already passed on.
func TestPrepareGatedExtendAgainRefusesWhatCannotGoOn(t *testing.T) {
	h1, h2 := sha256.Sum256([]byte("first")), sha256.Sum256([]byte("second"))
	// Each returns what the test closes at its end.
	cases := map[string]func(r *sharedAuthEnv, ge *tpm.GatedExtend) *tpm.GatedExtend{
		"not made": nil,
		"reset": func(r *sharedAuthEnv, _ *tpm.GatedExtend) *tpm.GatedExtend {
			r.env.Reset()
			if _, err := r.tp.Leftovers(); err != nil { // provd sees it
				t.Fatal(err)
			}
			return nil // the session went with the reset
		},
		"old": func(_ *sharedAuthEnv, ge *tpm.GatedExtend) *tpm.GatedExtend {
			tpm.AgeGatedExtend(ge, 6*time.Second)
			return ge
		},
		"passed on": func(r *sharedAuthEnv, ge *tpm.GatedExtend) *tpm.GatedExtend {
			next, ok, err := r.tp.PrepareGatedExtendAgain(ge, r.x, r.gate, h2[:])
			if !ok || err != nil {
				t.Fatalf("the first again: %v %v", ok, err)
			}
			return next
		},
	}
	for name, ev := range cases {
		t.Run(name, func(t *testing.T) {
			r := newSharedAuthEnv(t)
			err := r.tp.Share(func() error {
				var ge, last *tpm.GatedExtend
				if ev == nil {
					if err := r.read(); err != nil {
						return err
					}
					var err error
					if ge, err = r.tp.PrepareGatedExtendOf(r.x, r.gate, h1[:]); err != nil {
						return err
					}
					last = ge
				} else {
					ge = r.extendedOnce(t, h1[:])
					last = ev(r, ge)
				}
				before := r.tp.Stats()
				if _, ok, err := r.tp.PrepareGatedExtendAgain(ge, r.x, r.gate, h2[:]); ok || err != nil {
					t.Errorf("again: ok %v, %v; want neither", ok, err)
				}
				if n := r.tp.Stats().Sub(before).Commands; n != 0 {
					t.Errorf("again sent %d commands, want none", n)
				}
				if last == nil {
					return nil
				}
				return last.Close()
			})
			if err != nil {
				t.Fatal(err)
			}
			if name != "reset" { // the test's gate went with the reset too
				onlyGateLeft(t, r)
			}
		})
	}
}

// A reset provd has not seen yet when it goes on (its generation has not
// moved): the kept session and the gate are gone, and the TPM says so.
// The error is the TPM's, neither forged nor a wrong value; nothing is
// extended and nothing is left.
func TestPrepareGatedExtendAgainAfterAnUnseenReset(t *testing.T) {
	r := newSharedAuthEnv(t)
	h1, h2 := sha256.Sum256([]byte("first")), sha256.Sum256([]byte("second"))
	var was []byte
	err := r.tp.Share(func() error {
		ge := r.extendedOnce(t, h1[:])
		was = r.anchor(t)
		r.env.Reset()
		_, ok, err := r.tp.PrepareGatedExtendAgain(ge, r.x, r.gate, h2[:])
		t.Logf("again after a reset: ok %v, %v", ok, err)
		if err == nil || errors.Is(err, tpm.ErrResponseForged) || errors.Is(err, tpm.ErrBadAuth) {
			t.Errorf("again after an unseen reset: %v, want the TPM's error", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if now := r.anchor(t); !bytes.Equal(now, was) {
		t.Errorf("anchor %x after the failed again, was %x", now, was)
	}
	if left, err := r.tp.Leftovers(); err != nil || len(left) > 0 {
		t.Errorf("left in the TPM: %x %v", left, err)
	}
}

// A1 on the bus and the session kept between two extends: the first
// extend's command replayed once it is done (the TPM reset the session's
// policy when it ran), and, once the second proof is made, A1's own data
// through that session (the proof is bound to provd's second extend by
// cpHashA). The TPM refuses both; the anchor moves by provd's two heads
// only, and nothing is left.
func TestPrepareGatedExtendAgainUnderA1(t *testing.T) {
	r := newSharedAuthEnv(t)
	was := r.anchor(t)
	h1, h2 := sha256.Sum256([]byte("first")), sha256.Sum256([]byte("second"))
	var first []byte
	r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) == tpm2.TPMCCNVExtend && first == nil {
			first = slices.Clone(cmd)
		}
		return nil, nil, false
	})
	err := r.tp.Share(func() error {
		ge1 := r.extendedOnce(t, h1[:])
		r.bus.Set(nil)
		if rsp, err := r.bus.Next.Send(first); err != nil || tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10])) == tpm2.TPMRCSuccess {
			t.Errorf("the first extend replayed in the kept session: %x %v, want a refusal", rsp, err)
		}
		// The replay's failure moved nothing provd holds: the TPM checks
		// a command's HMAC before it runs, and a refused one leaves the
		// session's nonces as they were.
		ge2, ok, err := r.tp.PrepareGatedExtendAgain(ge1, r.x, r.gate, h2[:])
		if err != nil || !ok {
			t.Fatalf("again after the replay: ok %v, %v", ok, err)
		}
		evil := sha256.Sum256([]byte("A1 was here"))
		if rc, err := swtpmtest.OwnSessionExtend(r.bus.Next, r.x.Handle, ge2.Handle(), evil[:]); err != nil || rc == tpm2.TPMRCSuccess {
			t.Errorf("A1's data through the second proof: %v %v, want a refusal", rc, err)
		}
		if err := ge2.Extend(); err != nil {
			t.Fatalf("provd's second extend: %v", err)
		}
		return ge2.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	if now := r.anchor(t); !bytes.Equal(now, chained(chained(was, h1[:]), h2[:])) {
		t.Errorf("anchor %x, want provd's two heads in order and nothing else", now)
	}
	onlyGateLeft(t, r)
}

// onlyGateLeft: nothing but r's gate (the test's, flushed at its end) is
// loaded in the TPM.
func onlyGateLeft(t *testing.T, r *sharedAuthEnv) { onlyLeft(t, r.tp, r.gate.Handle) }

// onlyLeft: nothing but the handles held (the test's, flushed at its end)
// is loaded in tp.
func onlyLeft(t *testing.T, tp *tpm.TPM, held ...tpm2.TPMHandle) {
	t.Helper()
	left, err := tp.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	if left = slices.DeleteFunc(left, func(h tpm2.TPMHandle) bool { return slices.Contains(held, h) }); len(left) > 0 {
		t.Errorf("left in the TPM: %x", left)
	}
}
