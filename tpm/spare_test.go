package tpm_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// spareEnv is a sharedAuthEnv with a sealed object under the SRK whose
// policy is PolicyAuthValue: its unseal is the one command a keyed policy
// session authorizes before the record, as a seal's TPM2_Create is.
type spareEnv struct {
	*sharedAuthEnv
	gateBlob tpm.Blob
	gateAuth []byte
	objBlob  tpm.Blob
	obj      tpm.Object
	auth     []byte
}

func newSpareEnv(t *testing.T) *spareEnv {
	t.Helper()
	r := &spareEnv{sharedAuthEnv: &sharedAuthEnv{bus: &swtpmtest.Bus{}}, auth: newGateAuth(t)}
	r.env = swtpmtest.Start(t, swtpmtest.WithBus(r.bus))
	r.tp = r.env.TPM
	first := sha256.Sum256([]byte("head"))
	r.gate, r.x, r.gateBlob, r.gateAuth = gatedIndex(t, r.tp, testGatedHandle, first[:])
	var err error
	if r.srk, err = r.tp.SRK(); err != nil {
		t.Fatal(err)
	}
	c, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	if err := (tpm2.PolicyAuthValue{}).Update(c); err != nil {
		t.Fatal(err)
	}
	r.objBlob, err = r.tp.Create(r.srk, nil, tpm.SealTemplate(c.Hash().Digest), tpm.Sensitive{UserAuth: r.auth, Data: []byte("secret")})
	if err != nil {
		t.Fatal(err)
	}
	if r.obj, err = r.tp.Load(r.srk, nil, r.objBlob); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.tp.Flush(r.obj.Handle) })
	return r
}

// used is a keyed policy session that has authorized the object's unseal
// (made: Uses moved), and the count before it.
func (r *spareEnv) used(t *testing.T) (*tpm.PolicySession, int) {
	t.Helper()
	ps, err := r.tp.StartSecretPolicySession(tpm.EncryptOut, r.auth)
	if err != nil {
		t.Fatal(err)
	}
	uses := ps.Uses()
	if err := ps.PolicyAuthValue(); err != nil {
		t.Fatal(err)
	}
	if got, err := r.tp.UnsealWith(r.obj, ps.Session()); err != nil || string(got) != "secret" {
		t.Fatalf("unseal: %q %v", got, err)
	}
	if ps.Uses() != uses+1 {
		t.Fatalf("uses %d after the unseal, want %d", ps.Uses(), uses+1)
	}
	return ps, uses
}

// recordOwn is record, which must start a session of its own (no spare
// taken).
func (r *spareEnv) recordOwn(t *testing.T, head []byte) error {
	t.Helper()
	cmds, _, err := r.record(t, head)
	if err == nil && !slices.Contains(cmds, tpm2.TPMCCStartAuthSession) {
		t.Errorf("the record sent %v: no session of its own", cmds)
	}
	return err
}

// spare is a session of used's kept as the Share's spare.
func (r *spareEnv) spare(t *testing.T) *tpm.PolicySession {
	t.Helper()
	ps, uses := r.used(t)
	if err := ps.Spare(uses); err != nil {
		t.Fatal(err)
	}
	return ps
}

// record is one gated extend of head, prepared, made and closed, with the
// commands it sent from its preparation on.
func (r *spareEnv) record(t *testing.T, head []byte) ([]tpm2.TPMCC, tpm2.TPMHandle, error) {
	t.Helper()
	log := &swtpmtest.CommandLog{}
	r.bus.Set(log.Hook)
	log.Start()
	defer r.bus.Set(nil)
	ge, err := r.tp.PrepareGatedExtendOf(r.x, r.gate, head)
	if err != nil {
		return log.Stop(), 0, err
	}
	h := ge.Handle()
	err = errors.Join(ge.Extend(), ge.Close())
	return log.Stop(), h, err
}

// The record's gate is proved in the session that authorized the
// operation's command (issue 14): PolicySecret, PolicyCommandCode, the
// extend and the session's flush, where a session of its own adds its
// StartAuthSession; the anchor moves by the head once, and nothing is
// left.
func TestSpareProvesTheRecordsGate(t *testing.T) {
	r := newSpareEnv(t)
	was := r.anchor(t)
	head := sha256.Sum256([]byte("record"))
	err := r.tp.Share(func() error {
		if err := r.read(); err != nil {
			return err
		}
		ps, uses := r.used(t)
		sh := ps.Handle()
		if err := ps.Spare(uses); err != nil {
			return err
		}
		if got := tpm.SpareHandle(r.tp); got != sh {
			t.Errorf("spare 0x%x, want the session 0x%x", got, sh)
		}
		cmds, h, err := r.record(t, head[:])
		if err != nil {
			return err
		}
		want := []tpm2.TPMCC{tpm2.TPMCCPolicySecret, tpm2.TPMCCPolicyCommandCode, tpm2.TPMCCNVExtend, tpm2.TPMCCFlushContext}
		if !slices.Equal(cmds, want) {
			t.Errorf("the record sent %v, want %v", cmds, want)
		}
		if h != sh {
			t.Errorf("the record's session 0x%x, the spare's 0x%x", h, sh)
		}
		return nil
	})
	r.recordedOnce(t, err, was, head[:])
}

// What is not kept, or not taken, and the record then starts a session
// of its own: no Share; a session whose command was not made (Uses did
// not move: its policy may still be satisfied); one older than half a
// proof's lifetime (the proof's expiry counts from the session's start);
// one the TPM's reset took (the generation moved); one that someone else
// flushed; one a StartAuthSession needed the slot of. Each time the
// anchor moves by the head once and nothing is left.
func TestSpareNotKeptOrNotTaken(t *testing.T) {
	cases := map[string]func(t *testing.T, r *spareEnv){
		"unused": func(t *testing.T, r *spareEnv) {
			ps, err := r.tp.StartSecretPolicySession(tpm.EncryptOut, r.auth)
			if err != nil {
				t.Fatal(err)
			}
			if err := ps.PolicyAuthValue(); err != nil {
				t.Fatal(err)
			}
			if err := ps.Spare(ps.Uses()); err != nil {
				t.Fatal(err)
			}
		},
		"old": func(t *testing.T, r *spareEnv) {
			ps, uses := r.used(t)
			tpm.AgePolicySession(ps, 6*time.Second)
			if err := ps.Spare(uses); err != nil {
				t.Fatal(err)
			}
		},
		"aged after it was kept": func(t *testing.T, r *spareEnv) {
			ps := r.spare(t)
			tpm.AgePolicySession(ps, 6*time.Second)
		},
		"reset": func(t *testing.T, r *spareEnv) {
			r.spare(t)
			r.env.Reset()
			if _, err := r.tp.Leftovers(); err != nil { // provd sees it
				t.Fatal(err)
			}
			// The reset took the gate and the object too: loaded
			// again (the cleanups flush the handles they had, gone).
			gate, err := r.tp.LoadGate(r.srk, r.gateBlob, r.gateAuth)
			if err != nil {
				t.Fatal(err)
			}
			r.gate = gate
			t.Cleanup(func() { r.tp.Flush(gate.Handle) })
			obj, err := r.tp.Load(r.srk, nil, r.objBlob)
			if err != nil {
				t.Fatal(err)
			}
			r.obj = obj
			t.Cleanup(func() { r.tp.Flush(obj.Handle) })
		},
		"flushed by someone else": func(t *testing.T, r *spareEnv) {
			ps := r.spare(t)
			if err := r.tp.Flush(ps.Handle()); err != nil {
				t.Fatal(err)
			}
			if tpm.SpareHandle(r.tp) != 0 {
				t.Error("a flushed spare is still kept")
			}
		},
		"its slot needed": func(t *testing.T, r *spareEnv) {
			r.spare(t)
			// The shared session and the spare hold two of three
			// slots: a third session would leave none to spare.
			other, err := r.tp.StartSaltedPolicySession(nil)
			if err != nil {
				t.Fatal(err)
			}
			if tpm.SpareHandle(r.tp) != 0 {
				t.Error("the spare is kept beside a session that needed its slot")
			}
			if err := other.Close(); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, arm := range cases {
		t.Run(name, func(t *testing.T) {
			r := newSpareEnv(t)
			was := r.anchor(t)
			head := sha256.Sum256([]byte(name))
			err := r.tp.Share(func() error {
				if err := r.read(); err != nil {
					return err
				}
				arm(t, r)
				return r.recordOwn(t, head[:])
			})
			r.recordedOnce(t, err, was, head[:])
		})
	}
	t.Run("no share", func(t *testing.T) {
		r := newSpareEnv(t)
		r.spare(t)
		onlyObjectsLeft(t, r)
	})
}

// A1 on the bus once the spare is kept: each command of the record
// answered with an error after the TPM ran it (the answer lost), or
// refused without reaching the TPM. The anchor moves by the head at most
// once, nothing is left, and a record after it works.
func TestSpareUnderA1(t *testing.T) {
	for _, cc := range []tpm2.TPMCC{tpm2.TPMCCPolicySecret, tpm2.TPMCCPolicyCommandCode, tpm2.TPMCCNVExtend, tpm2.TPMCCFlushContext} {
		for _, ran := range []bool{true, false} {
			name := map[bool]string{true: "lost", false: "refused"}[ran]
			t.Run(ccNames[cc]+" "+name, func(t *testing.T) {
				r := newSpareEnv(t)
				was := r.anchor(t)
				head := sha256.Sum256([]byte("record"))
				err := r.tp.Share(func() error {
					if err := r.read(); err != nil {
						return err
					}
					r.spare(t)
					once := false
					r.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
						if once || swtpmtest.CommandCode(cmd) != cc {
							return nil, nil, false
						}
						once = true
						if ran {
							if _, err := next.Send(cmd); err != nil {
								return nil, err, true
							}
						}
						return swtpmtest.ErrorAnswer(tpm2.TPMRCFailure), nil, true
					})
					defer r.bus.Set(nil)
					ge, err := r.tp.PrepareGatedExtendOf(r.x, r.gate, head[:])
					if err != nil {
						t.Logf("prepare: %v", err)
						return nil
					}
					err = errors.Join(ge.Extend(), ge.Close())
					t.Logf("extend: %v", err)
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				now := r.anchor(t)
				if !bytes.Equal(now, was) && !bytes.Equal(now, chained(was, head[:])) {
					t.Errorf("anchor %x: neither as it was nor the head once", now)
				}
				sweepAndCheck(t, r)
				// A record after it works.
				next := sha256.Sum256([]byte("next"))
				if err := r.tp.NVExtendGated(r.x.Handle, next[:], r.gate); err != nil {
					t.Fatalf("the next record: %v", err)
				}
				if after := r.anchor(t); !bytes.Equal(after, chained(now, next[:])) {
					t.Errorf("anchor %x after the next record, want it chained once", after)
				}
				onlyObjectsLeft(t, r)
			})
		}
	}
}

// recordedOnce: the Share that made the record returned err, nil; the
// anchor moved from was by head once; nothing is left.
func (r *spareEnv) recordedOnce(t *testing.T, err error, was, head []byte) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if now := r.anchor(t); !bytes.Equal(now, chained(was, head)) {
		t.Errorf("anchor %x, want the head once", now)
	}
	onlyObjectsLeft(t, r)
}

// onlyObjectsLeft: nothing but r's gate and sealed object (the test's,
// flushed at its end) is loaded in the TPM.
func onlyObjectsLeft(t *testing.T, r *spareEnv) { onlyLeft(t, r.tp, r.gate.Handle, r.obj.Handle) }

// sweepAndCheck flushes what the TPM holds beside r's objects when the
// channel asked for the sweep (tpm.NeedsSweep, as the agent's sweep does),
// then checks that nothing else is left.
func sweepAndCheck(t *testing.T, r *spareEnv) {
	t.Helper()
	if r.tp.NeedsSweep() {
		left, err := r.tp.Leftovers()
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range left {
			if h != r.gate.Handle && h != r.obj.Handle {
				_ = r.tp.Flush(h)
			}
		}
	}
	onlyObjectsLeft(t, r)
}

var ccNames = map[tpm2.TPMCC]string{
	tpm2.TPMCCPolicySecret: "PolicySecret", tpm2.TPMCCPolicyCommandCode: "PolicyCommandCode",
	tpm2.TPMCCNVExtend: "NV_Extend", tpm2.TPMCCFlushContext: "FlushContext",
}
