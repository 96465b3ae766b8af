package tpm_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// sharedGuardEnv is a TPM behind a bus and a recorder, with the SRK
// pinned: what the shared session's guard role needs.
type sharedGuardEnv struct {
	bus *swtpmtest.Bus
	rec *swtpmtest.Recorder
	tp  *tpm.TPM
	srk tpm.Object
}

func newSharedGuardEnv(t *testing.T) *sharedGuardEnv {
	t.Helper()
	e := &sharedGuardEnv{bus: &swtpmtest.Bus{}, rec: &swtpmtest.Recorder{}}
	env := swtpmtest.Start(t, swtpmtest.WithRecorder(e.rec), swtpmtest.WithBus(e.bus))
	e.tp = env.TPM
	e.srk, _, _ = pinnedGateBlob(t, e.tp)
	return e
}

// sealAndUnseal runs, in one Share, what a seal and an unseal send with a
// secret in them: an authenticated read (the shared session starts), the
// creation of a sealed object whose authValue and data are secrets, its
// load, and its unseal authorized by its authValue in an HMAC session of
// the test's (which encrypts nothing). It returns what the unseal gave.
func (e *sharedGuardEnv) sealAndUnseal(t *testing.T, auth, data []byte) ([]byte, error) {
	t.Helper()
	var out []byte
	err := e.tp.Share(func() error {
		if _, err := e.tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
			return err
		}
		blob, err := e.tp.Create(e.srk, nil, tpm.SealTemplate(nil), tpm.Sensitive{UserAuth: auth, Data: data})
		if err != nil {
			return err
		}
		obj, err := e.tp.Load(e.srk, nil, blob)
		if err != nil {
			return err
		}
		defer e.tp.Flush(obj.Handle)
		s, closer, err := tpm2.HMACSession(e.tp, tpm2.TPMAlgSHA256, 16, tpm2.Auth(auth))
		if err != nil {
			return err
		}
		defer closer()
		out, err = e.tp.Unseal(obj, s)
		return err
	})
	return out, err
}

// afterRefusal checks what a refused sealAndUnseal left: nothing given
// (out), neither secret on the bus, nothing loaded without a sweep asked
// for, and the next operation works.
func (e *sharedGuardEnv) afterRefusal(t *testing.T, out, auth, data []byte) {
	t.Helper()
	if out != nil {
		t.Fatalf("the unseal gave %q", out)
	}
	for name, v := range map[string][]byte{"authValue": auth, "data": data} {
		if off := e.rec.Leak(v); off >= 0 {
			t.Errorf("the %s crossed the bus in plaintext (from byte %d)", name, off)
		}
	}
	sweptAsAsked(t, e.tp)
	if out, err := e.sealAndUnseal(t, auth, data); err != nil || !bytes.Equal(out, data) {
		t.Fatalf("the next operation: %q, %v", out, err)
	}
	nothingLeft(t, e.tp, "after the next operation")
}

// A secret that crosses the bus in an audited operation (a creation's
// sensitive area in, an unseal's secret out) is encrypted by the
// operation's shared session, salted to the pinned SRK, where each started
// and flushed a session of its own (issue 14: a StartAuthSession and a
// FlushContext fewer each): the TPM decrypts what provd encrypted (the
// unseal gives the data back, under the authValue given), neither secret
// appears on the bus, and the operation starts two sessions, the shared
// one and the test's HMAC session, where it started four.
func TestSharedSessionEncryptsSecrets(t *testing.T) {
	e := newSharedGuardEnv(t)
	auth := []byte("shared guard test: authValue 3f9") // 32 bytes: the nameAlg's size at most
	data := []byte("shared guard test: THE SEALED DATA, 64 bytes of it 0123456789ab")
	log := &swtpmtest.CommandLog{}
	e.bus.Set(log.Hook)
	log.Start()
	e.rec.Reset()
	out, err := e.sealAndUnseal(t, auth, data)
	cmds := log.Stop()
	e.bus.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, data) {
		t.Fatalf("the unseal gave %q, want %q", out, data)
	}
	if n := swtpmtest.Count(cmds, tpm2.TPMCCStartAuthSession); n != 2 {
		t.Errorf("%d StartAuthSessions, want 2 (the shared session encrypting both secrets): %v", n, cmds)
	}
	for name, v := range map[string][]byte{"authValue": auth, "data": data} {
		if off := e.rec.Leak(v); off >= 0 {
			t.Errorf("the %s crossed the bus in plaintext (from byte %d)", name, off)
		}
	}
	nothingLeft(t, e.tp, "after Share")
}

// A1 changes what the shared session encrypts or the attributes that say
// it does: the creation's encrypted sensitive area, its decrypt bit
// (cleared, the TPM would take the ciphertext as the authValue and data),
// or the unseal's encrypted answer. The TPM refuses the changed command by
// the session's HMAC, and provd the changed answer by the TPM's; each is
// tpm_response_forged, nothing is created or given, nothing is left
// without a sweep asked for, and the next operation works.
func TestSharedSessionEncryptionTamperedIsRefused(t *testing.T) {
	flipCmd := func(at func(cmd []byte) int) func(cmd, rsp []byte) ([]byte, []byte) {
		return func(cmd, rsp []byte) ([]byte, []byte) {
			if rsp != nil {
				return nil, rsp
			}
			c := bytes.Clone(cmd)
			c[at(c)] ^= 0x01
			return c, nil
		}
	}
	cases := []struct {
		name   string
		cc     tpm2.TPMCC
		tamper func(cmd, rsp []byte) ([]byte, []byte)
	}{
		{"the creation's sensitive area", tpm2.TPMCCCreate, flipCmd(func(c []byte) int { return swtpmtest.ParamsOffset(c, 1) + 4 })},
		{"the creation's decrypt bit", tpm2.TPMCCCreate, func(cmd, rsp []byte) ([]byte, []byte) {
			if rsp != nil {
				return nil, rsp
			}
			c := bytes.Clone(cmd)
			c[swtpmtest.SessionAttrOffset(c, 1, 1)] &^= 0x20 // decrypt
			return c, nil
		}},
		{"the unseal's answer", tpm2.TPMCCUnseal, func(cmd, rsp []byte) ([]byte, []byte) {
			if rsp == nil {
				return nil, nil
			}
			r := bytes.Clone(rsp)
			r[10+4+2+3] ^= 0x01 // header, parameterSize, outData's size
			return nil, r
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newSharedGuardEnv(t)
			auth := []byte("shared guard test: authValue 3f9") // 32 bytes: the nameAlg's size at most
			data := []byte("shared guard test: THE SEALED DATA 0123456789")
			ran := false
			e.bus.Set(swtpmtest.Tamper(func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == c.cc }, c.tamper, &ran))
			out, err := e.sealAndUnseal(t, auth, data)
			e.bus.Set(nil)
			if !ran {
				t.Fatal("the attack did not run")
			}
			if !errors.Is(err, tpm.ErrResponseForged) {
				t.Fatalf("err = %v, want tpm_response_forged", err)
			}
			e.afterRefusal(t, out, auth, data)
		})
	}
}

// PinSeenSRK takes the caller's word that the pinned SRK is at the
// persistent handle (first contact read it there), as SRK would take the
// bus's. A1 answering that read with the pinned name while another key is
// at the handle gains nothing: the salt is encrypted to the pinned key, so
// the key there derives another session key; the first command in the
// session is refused (its HMAC), the secret the next would have carried is
// never sent, and nothing is left without a sweep asked for.
func TestPinSeenSRKWithAnotherKeyThere(t *testing.T) {
	rec := &swtpmtest.Recorder{}
	env := swtpmtest.Start(t, swtpmtest.WithRecorder(rec))
	tp := env.TPM
	srk := persistForeignSRK(t, tp)
	env.Reopen() // a new process
	tp = env.TPM
	if err := tp.PinSeenSRK(srk.Public); err != nil {
		t.Fatal(err)
	}
	secret := []byte("pin seen test: THE SEALED DATA 0123456789")
	rec.Reset()
	err := tp.Share(func() error {
		if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
			return err
		}
		_, err := tp.Create(srk, nil, tpm.SealTemplate(nil), tpm.Sensitive{Data: secret})
		return err
	})
	if err == nil {
		t.Fatal("the session salted to the pinned SRK worked with another key at its handle")
	}
	t.Logf("refused: %v", err)
	if rec.Sent(tpm2.TPMCCCreate) {
		t.Error("the creation was sent after the session failed")
	}
	if off := rec.Leak(secret); off >= 0 {
		t.Errorf("the secret crossed the bus in plaintext (from byte %d)", off)
	}
	sweptAsAsked(t, tp)
}
