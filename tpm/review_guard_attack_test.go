package tpm_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// Review of the guard role (hmacGuard): A1 answers the guarded creation
// TPM_RC_RETRY, once after the TPM ran it (forged: the resend meets the
// moved nonces) and once in the TPM's place without passing it on (an
// honest warning). Forged: tpm_response_forged, nothing leaked, nothing
// left without a sweep asked for. Honest: the creation works, and the
// resend is byte for byte the first copy (the same nonces never carry
// another plaintext: no key stream is used twice).
func TestReviewGuardRetryOnTheGuardedCreation(t *testing.T) {
	auth := []byte("review guard: authValue 0123456")
	data := []byte("review guard: THE SEALED DATA 0123456789abcdef")
	t.Run("forged after the TPM ran it", func(t *testing.T) {
		e := newSharedGuardEnv(t)
		sent := 0
		e.bus.Set(swtpmtest.RanThenAnswered(tpm2.TPMCCCreate, tpm2.TPMRCRetry, &sent))
		e.rec.Reset()
		out, err := e.sealAndUnseal(t, auth, data)
		e.bus.Set(nil)
		if sent < 2 {
			t.Fatalf("the creation was sent %d times", sent)
		}
		if !errors.Is(err, tpm.ErrResponseForged) {
			t.Fatalf("err = %v, want tpm_response_forged", err)
		}
		e.afterRefusal(t, out, auth, data)
	})
	t.Run("honest", func(t *testing.T) {
		e := newSharedGuardEnv(t)
		var copies [][]byte
		first := true
		e.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
			if swtpmtest.CommandCode(cmd) != tpm2.TPMCCCreate {
				return nil, nil, false
			}
			copies = append(copies, bytes.Clone(cmd))
			if first {
				first = false
				return swtpmtest.ErrorAnswer(tpm2.TPMRCRetry), nil, true
			}
			return nil, nil, false
		})
		e.rec.Reset()
		out, err := e.sealAndUnseal(t, auth, data)
		e.bus.Set(nil)
		if err != nil || !bytes.Equal(out, data) {
			t.Fatalf("after an honest RETRY: %q, %v", out, err)
		}
		if len(copies) != 2 {
			t.Fatalf("%d copies of the creation sent, want 2", len(copies))
		}
		if !bytes.Equal(copies[0], copies[1]) {
			t.Error("the resend is not the first copy: the same nonces carried another ciphertext")
		}
		for name, v := range map[string][]byte{"authValue": auth, "data": data} {
			if off := e.rec.Leak(v); off >= 0 {
				t.Errorf("the %s crossed the bus in plaintext (from byte %d)", name, off)
			}
		}
		nothingLeft(t, e.tp, "after Share")
	})
}

// Review of the guard role: A1 flips attribute bits of the shared
// session in the guarded commands and answers: the creation's audit and
// continueSession bits cleared, its encrypt bit set; the unseal's encrypt
// bit cleared in the command (the TPM would answer the secret in
// plaintext) or in the answer (provd would take ciphertext as the
// secret). Every one is refused (the HMACs cover the attributes): an
// error, never the secret on the bus nor a wrong secret given back, and
// nothing left without a sweep asked for.
func TestReviewGuardAttributeBitsFlipped(t *testing.T) {
	cmdBit := func(clearBits, setBits byte) func(cmd, rsp []byte) ([]byte, []byte) {
		return func(cmd, rsp []byte) ([]byte, []byte) {
			if rsp != nil {
				return nil, rsp
			}
			c := bytes.Clone(cmd)
			off := swtpmtest.SessionAttrOffset(c, 1, 1)
			c[off] = c[off]&^clearBits | setBits
			return c, nil
		}
	}
	// The unseal's answer: header, parameterSize, outData; then the
	// sessions area: the test's HMAC session, then the guard.
	rspGuardAttrs := func(rsp []byte) int {
		off := 10
		psize := int(uint32(rsp[off])<<24 | uint32(rsp[off+1])<<16 | uint32(rsp[off+2])<<8 | uint32(rsp[off+3]))
		off += 4 + psize
		for n := 0; ; n++ {
			off += 2 + int(uint16(rsp[off])<<8|uint16(rsp[off+1])) // nonce
			if n == 1 {
				return off
			}
			off++                                                  // attributes
			off += 2 + int(uint16(rsp[off])<<8|uint16(rsp[off+1])) // hmac
		}
	}
	cases := []struct {
		name   string
		cc     tpm2.TPMCC
		tamper func(cmd, rsp []byte) ([]byte, []byte)
	}{
		{"creation: audit cleared", tpm2.TPMCCCreate, cmdBit(0x80, 0)},
		{"creation: continueSession cleared", tpm2.TPMCCCreate, cmdBit(0x01, 0)},
		{"creation: encrypt set", tpm2.TPMCCCreate, cmdBit(0, 0x40)},
		{"creation: decrypt and audit cleared", tpm2.TPMCCCreate, cmdBit(0xa0, 0)},
		{"unseal: encrypt cleared", tpm2.TPMCCUnseal, cmdBit(0x40, 0)},
		{"unseal: encrypt and audit cleared", tpm2.TPMCCUnseal, cmdBit(0xc0, 0)},
		{"unseal answer: encrypt cleared", tpm2.TPMCCUnseal, func(cmd, rsp []byte) ([]byte, []byte) {
			if rsp == nil {
				return nil, nil
			}
			r := bytes.Clone(rsp)
			if len(r) > 10 && r[6]|r[7]|r[8]|r[9] == 0 {
				r[rspGuardAttrs(r)] &^= 0x40
			}
			return nil, r
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newSharedGuardEnv(t)
			auth := []byte("review guard: authValue 0123456")
			data := []byte("review guard: THE SEALED DATA 0123456789abcdef")
			ran := false
			e.bus.Set(swtpmtest.Tamper(func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == c.cc }, c.tamper, &ran))
			e.rec.Reset()
			out, err := e.sealAndUnseal(t, auth, data)
			e.bus.Set(nil)
			if !ran {
				t.Fatal("the attack did not run")
			}
			if err == nil {
				t.Fatalf("the tampered operation worked (gave %q)", out)
			}
			t.Logf("refused: %v (forged: %v)", err, errors.Is(err, tpm.ErrResponseForged))
			e.afterRefusal(t, out, auth, data)
		})
	}
}

// Review of the guard role: nested use. Inside WithEncryptSession's fn
// (the shared session in the command's guard role, in use), an
// authenticated read and a creation (WithEncryptSession again) take
// sessions of their own; inside a shared read nothing changes either.
// Behind swtpmtest.SessionLimit nothing is refused for want of a slot,
// the secrets stay off the bus, and nothing is left.
func TestReviewGuardNestedUse(t *testing.T) {
	l := &swtpmtest.SessionLimit{}
	rec := &swtpmtest.Recorder{}
	env := swtpmtest.Start(t, swtpmtest.WithRecorder(rec), swtpmtest.WithWrap(l.Wrap))
	tp := env.TPM
	srk, _, _ := pinnedGateBlob(t, tp)
	outer := []byte("review nested: OUTER SECRET 0123456789abcdef")
	inner := []byte("review nested: INNER SECRET 0123456789abcdef")
	l.Take()
	rec.Reset()
	err := tp.Share(func() error {
		if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
			return err
		}
		return tp.WithEncryptSession(tpm.EncryptIn, func(enc tpm2.Session) error {
			if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
				return err
			}
			if _, err := tp.Create(srk, nil, tpm.SealTemplate(nil), tpm.Sensitive{Data: inner}); err != nil {
				return err
			}
			_, err := (tpm2.Create{
				ParentHandle: tpm2.AuthHandle{Handle: srk.Handle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)},
				InPublic:     tpm2.New2B(tpm.SealTemplate(nil)),
				InSensitive:  tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: outer})}},
			}).Execute(tp, enc)
			return err
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if refused, cmds := l.Take(); refused > 0 {
		t.Errorf("%d refusals for want of a slot: %v", refused, cmds)
	}
	for name, v := range map[string][]byte{"outer": outer, "inner": inner} {
		if off := rec.Leak(v); off >= 0 {
			t.Errorf("the %s secret crossed the bus in plaintext (from byte %d)", name, off)
		}
	}
	nothingLeft(t, tp, "after Share")
}

// Review of the guard role (fails on 4a84356): A1 clears every bit that
// gives the shared session a role in the guarded creation (decrypt and
// audit; encrypt is clear already). The TPM refuses the session with
// TPM_RC_ATTRIBUTES before it checks any HMAC, and provd reports that as
// a plain TPM error: a command changed on the bus that is not
// tpm_response_forged (exit 15). Nothing leaks (the TPM never decrypts),
// but the error says the wrong thing. The same holds for the salted
// session of its own this role replaced (its decrypt bit cleared), so it
// predates fcb5300.
func TestReviewGuardRoleBitsClearedIsForged(t *testing.T) {
	e := newSharedGuardEnv(t)
	auth := []byte("review guard: authValue 0123456")
	data := []byte("review guard: THE SEALED DATA 0123456789abcdef")
	ran := false
	e.bus.Set(swtpmtest.Tamper(func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == tpm2.TPMCCCreate },
		func(cmd, rsp []byte) ([]byte, []byte) {
			if rsp != nil {
				return nil, rsp
			}
			c := bytes.Clone(cmd)
			c[swtpmtest.SessionAttrOffset(c, 1, 1)] &^= 0xa0 // decrypt, audit
			return c, nil
		}, &ran))
	_, err := e.sealAndUnseal(t, auth, data)
	e.bus.Set(nil)
	if !ran {
		t.Fatal("the attack did not run")
	}
	sweptAsAsked(t, e.tp)
	if !errors.Is(err, tpm.ErrResponseForged) {
		t.Fatalf("err = %v, want tpm_response_forged", err)
	}
}
