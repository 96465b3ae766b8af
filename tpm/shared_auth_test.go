package tpm_test

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

// authLog records the command codes sent behind a swtpmtest.Bus, and the
// sessions of each command with handles in handles (by code).
type authLog struct {
	mu       sync.Mutex
	codes    []tpm2.TPMCC
	sessions [][]tpm2.TPMHandle
}

var authHandles = map[tpm2.TPMCC]int{tpm2.TPMCCLoad: 1, tpm2.TPMCCNVRead: 2, tpm2.TPMCCPCRRead: 0,
	tpm2.TPMCCQuote: 1, tpm2.TPMCCPolicySecret: 2}

func (l *authLog) hook(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	cc := swtpmtest.CommandCode(cmd)
	l.codes = append(l.codes, cc)
	var s []tpm2.TPMHandle
	if nh, ok := authHandles[cc]; ok {
		s = swtpmtest.Sessions(cmd, nh)
	}
	l.sessions = append(l.sessions, s)
	return nil, nil, false
}

// of is the sessions of the first command cc.
func (l *authLog) of(cc tpm2.TPMCC) []tpm2.TPMHandle {
	l.mu.Lock()
	defer l.mu.Unlock()
	if i := slices.Index(l.codes, cc); i >= 0 {
		return l.sessions[i]
	}
	return nil
}

// The operation's shared session, started by the AK's load, also
// authorizes the AK's quote, keyed by the AK's authValue (issue 14): no
// session of the quote's own, 5 commands in all (the load, the quote, the
// AK's flush, the session's start and flush). The quote verifies with the
// AK, and nothing is left.
func TestSharedSessionAuthorizesTheQuote(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	srk, blob, auth := pinnedGateBlob(t, tp) // a gate's template is the AK's (tpm.AKTemplate)
	nonce := sha256.Sum256([]byte("nonce"))
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{0x81, 0, 0}}}}
	log := &authLog{}
	bus.Set(log.hook)
	var q, sig []byte
	var ak tpm.Object
	err := tp.Share(func() (err error) {
		if ak, err = tp.Load(srk, nil, blob); err != nil {
			return err
		}
		defer tp.Flush(ak.Handle)
		q, sig, err = tp.Quote(ak, auth, nonce[:], sel)
		return err
	})
	bus.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []tpm2.TPMCC{tpm2.TPMCCStartAuthSession, tpm2.TPMCCLoad, tpm2.TPMCCQuote, tpm2.TPMCCFlushContext, tpm2.TPMCCFlushContext}
	if !slices.Equal(log.codes, want) {
		t.Errorf("sent %v, want %v", log.codes, want)
	}
	// The load's: the SRK's password, then the shared session.
	load, quote := log.of(tpm2.TPMCCLoad), log.of(tpm2.TPMCCQuote)
	if len(load) != 2 || len(quote) != 1 || load[1] != quote[0] {
		t.Errorf("the load's sessions %v, the quote's %v: want the one shared session", load, quote)
	}
	// The quote is the TPM's over the nonce, signed by the AK.
	qa, err := tpm2.Unmarshal[tpm2.TPMSAttest](q)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(qa.ExtraData.Buffer, nonce[:]) {
		t.Errorf("quoted over %x, want the nonce %x", qa.ExtraData.Buffer, nonce)
	}
	ts, err := tpm2.Unmarshal[tpm2.TPMTSignature](sig)
	if err != nil {
		t.Fatal(err)
	}
	if d := sha256.Sum256(q); !ecdsaVerifies(t, ak.Public, d[:], *ts) {
		t.Error("the quote's signature does not verify with the AK")
	}
	nothingLeft(t, tp, "after Share")
}

// The shared session keys its authorization of the AK, and of a gate's
// PolicySecret, with the value provd gives: a wrong one is refused by the
// TPM (ErrBadAuth), which it would not be if the session keyed by the
// session key alone, or the one it started with. The failure gives the
// shared session up: the next read starts another, and nothing is left.
func TestSharedSessionAuthorizesOnlyWithTheValue(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	srk, blob, auth := pinnedGateBlob(t, tp)
	wrong := bytes.Clone(auth)
	wrong[0] ^= 1
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{1, 0, 0}}}}
	nonce := sha256.Sum256([]byte("nonce"))
	err := tp.Share(func() error {
		ak, err := tp.Load(srk, nil, blob)
		if err != nil {
			return err
		}
		defer tp.Flush(ak.Handle)
		// Each quote after a read, which starts the shared session again
		// (a failure gives it up).
		for _, v := range [][]byte{wrong, nil, auth} {
			if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{0}); err != nil {
				return err
			}
			_, _, err := tp.Quote(ak, v, nonce[:], sel)
			if v == nil || !bytes.Equal(v, auth) {
				if !errors.Is(err, tpm.ErrBadAuth) {
					t.Errorf("quote with the value %x: %v, want ErrBadAuth", v, err)
				}
				continue
			}
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	nothingLeft(t, tp, "after the quotes")

	// A gate (the blob above) loaded with a wrong value: its proof in the
	// shared session, for an index of another gate's (the TPM refuses the
	// proof before it looks at any index).
	d := sha256.Sum256([]byte("head"))
	gate, x := writtenGatedIndex(t, tp, d[:])
	bad, err := tp.LoadGate(srk, blob, wrong)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Flush(bad.Handle)
	before, err := tp.ReadExtendIndex(x)
	if err != nil {
		t.Fatal(err)
	}
	err = tp.Share(func() error {
		if err := tp.WithAuthenticatedNV(func(r *tpm.AuthenticatedNV) error { _, err := r.ReadExtendIndex(x); return err }); err != nil {
			return err
		}
		_, err := tp.PrepareGatedExtendOf(x, bad, d[:])
		return err
	})
	if !errors.Is(err, tpm.ErrBadAuth) {
		t.Errorf("a gate's proof with a wrong value: %v, want ErrBadAuth", err)
	}
	if after, err := tp.ReadExtendIndex(x); err != nil || !bytes.Equal(after, before) {
		t.Errorf("the index is %x (%v), want %x as before", after, err, before)
	}
	sweptAsAsked(t, tp, bad.Handle, gate.Handle)
}

// A one-shot record's gated extend, after the operation's shared session
// read the anchor: the gate's proof is made in the shared session, kept
// over the policy session's start (tpm.TPM.Send), where a one-use session
// started for it (issue 14: a StartAuthSession fewer). Its sequence, the
// PolicySecret authorized by the session the read named, the extend
// chained on the value read, and nothing left.
func TestSharedSessionProvesTheGate(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	d := sha256.Sum256([]byte("head"))
	gate, x := writtenGatedIndex(t, tp, d[:])
	d2 := sha256.Sum256([]byte("next"))
	log := &authLog{}
	bus.Set(log.hook)
	var v []byte
	err := tp.Share(func() error {
		if err := tp.WithAuthenticatedNV(func(r *tpm.AuthenticatedNV) (err error) { v, err = r.ReadExtendIndex(x); return err }); err != nil {
			return err
		}
		ge, err := tp.PrepareGatedExtendOf(x, gate, d2[:])
		if err != nil {
			return err
		}
		return errors.Join(ge.Extend(), ge.Close())
	})
	bus.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []tpm2.TPMCC{tpm2.TPMCCStartAuthSession, tpm2.TPMCCNVRead, tpm2.TPMCCStartAuthSession, tpm2.TPMCCPolicySecret,
		tpm2.TPMCCPolicyCommandCode, tpm2.TPMCCNVExtend, tpm2.TPMCCFlushContext, tpm2.TPMCCFlushContext}
	if !slices.Equal(log.codes, want) {
		t.Errorf("sent %v, want %v", log.codes, want)
	}
	// The read's: the index's password, then the shared session.
	read, proof := log.of(tpm2.TPMCCNVRead), log.of(tpm2.TPMCCPolicySecret)
	if len(read) != 2 || len(proof) != 1 || read[1] != proof[0] {
		t.Errorf("the read's sessions %v, the proof's %v: want the one shared session", read, proof)
	}
	after, err := tp.ReadExtendIndex(x)
	if err != nil {
		t.Fatal(err)
	}
	if chained := sha256.Sum256(append(slices.Clone(v), d2[:]...)); !bytes.Equal(after, chained[:]) {
		t.Errorf("the index is %x, want the read value extended with the head, %x", after, chained)
	}
	sweptAsAsked(t, tp, gate.Handle)
}

// A1 changes the answer of a quote, or of a gate's PolicySecret, made in
// the shared session: the answer's HMAC, keyed by the session key and the
// entity's value, does not verify (ErrResponseForged); the session is
// given up, nothing is left, and the next operation works.
func TestSharedSessionAnswersChangedAreForged(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	d := sha256.Sum256([]byte("head"))
	gate, x := writtenGatedIndex(t, tp, d[:])
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	akBlob, err := tp.CreateGate(srk, bytes.Repeat([]byte{7}, tpm.GateAuthSize))
	if err != nil {
		t.Fatal(err)
	}
	akAuth := bytes.Repeat([]byte{7}, tpm.GateAuthSize)
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{1, 0, 0}}}}
	nonce := sha256.Sum256([]byte("nonce"))
	// The last byte of the answer's parameters (no handles in either).
	lastParam := func(cmd, rsp []byte) ([]byte, []byte) {
		if rsp == nil || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
			return nil, rsp
		}
		r := slices.Clone(rsp)
		r[14+int(binary.BigEndian.Uint32(r[10:14]))-1] ^= 1
		return nil, r
	}
	quote := func() error {
		return tp.Share(func() error {
			ak, err := tp.Load(srk, nil, akBlob)
			if err != nil {
				return err
			}
			defer tp.Flush(ak.Handle)
			_, _, err = tp.Quote(ak, akAuth, nonce[:], sel)
			return err
		})
	}
	prove := func() error {
		return tp.Share(func() error {
			if err := tp.WithAuthenticatedNV(func(r *tpm.AuthenticatedNV) error { _, err := r.ReadExtendIndex(x); return err }); err != nil {
				return err
			}
			ge, err := tp.PrepareGatedExtendOf(x, gate, d[:])
			if err != nil {
				return err
			}
			return ge.Close()
		})
	}
	for _, c := range []struct {
		name string
		cc   tpm2.TPMCC
		op   func() error
	}{{"quote", tpm2.TPMCCQuote, quote}, {"gate's proof", tpm2.TPMCCPolicySecret, prove}} {
		var ran bool
		bus.Set(tamperOn(c.cc, lastParam, &ran))
		err := c.op()
		bus.Set(nil)
		if !ran {
			t.Fatalf("%s: the answer was not reached", c.name)
		}
		if !errors.Is(err, tpm.ErrResponseForged) {
			t.Errorf("%s, its answer changed: %v, want ErrResponseForged", c.name, err)
		}
		sweptAsAsked(t, tp, gate.Handle)
		if err := c.op(); err != nil {
			t.Errorf("%s after: %v", c.name, err)
		}
		sweptAsAsked(t, tp, gate.Handle)
	}
}
