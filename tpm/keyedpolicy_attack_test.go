package tpm_test

// A1 on the bus against one guarded TPM2_Load under the SRK (keyedPolicy,
// LoadGuarded): the attacks of the guard's adversarial review.

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// rawSession is one entry of a command's (or answer's) authorization area.
type rawSession struct {
	handle uint32 // 0 in an answer
	nonce  []byte
	attrs  byte
	hmac   []byte
}

func (s rawSession) marshal(cmd bool) []byte {
	var b []byte
	if cmd {
		b = binary.BigEndian.AppendUint32(b, s.handle)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(s.nonce)))
	b = append(b, s.nonce...)
	b = append(b, s.attrs)
	b = binary.BigEndian.AppendUint16(b, uint16(len(s.hmac)))
	return append(b, s.hmac...)
}

// splitCmd splits a command with nh handles and sessions into its
// handles, sessions and parameters.
func splitCmd(cmd []byte, nh int) (handles []byte, sess []rawSession, params []byte) {
	off := 10 + 4*nh
	handles = cmd[10:off]
	size := int(binary.BigEndian.Uint32(cmd[off:]))
	area := cmd[off+4 : off+4+size]
	params = cmd[off+4+size:]
	for len(area) > 0 {
		var s rawSession
		s.handle = binary.BigEndian.Uint32(area)
		n := int(binary.BigEndian.Uint16(area[4:]))
		s.nonce = area[6 : 6+n]
		s.attrs = area[6+n]
		area = area[7+n:]
		h := int(binary.BigEndian.Uint16(area))
		s.hmac = area[2 : 2+h]
		area = area[2+h:]
		sess = append(sess, s)
	}
	return handles, sess, params
}

func joinCmd(cc tpm2.TPMCC, handles []byte, sess []rawSession, params []byte) []byte {
	var area []byte
	for _, s := range sess {
		area = append(area, s.marshal(true)...)
	}
	var b []byte
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMSTSessions))
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(cc))
	b = append(b, handles...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(area)))
	b = append(b, area...)
	b = append(b, params...)
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	return b
}

// splitLoadRsp splits a successful TPM2_Load answer (sessions) into its
// handle, parameters and sessions.
func splitLoadRsp(rsp []byte) (handle uint32, params []byte, sess []rawSession) {
	handle = binary.BigEndian.Uint32(rsp[10:])
	size := int(binary.BigEndian.Uint32(rsp[14:]))
	params = rsp[18 : 18+size]
	area := rsp[18+size:]
	for len(area) > 0 {
		var s rawSession
		n := int(binary.BigEndian.Uint16(area))
		s.nonce = area[2 : 2+n]
		s.attrs = area[2+n]
		area = area[3+n:]
		h := int(binary.BigEndian.Uint16(area))
		s.hmac = area[2 : 2+h]
		area = area[2+h:]
		sess = append(sess, s)
	}
	return handle, params, sess
}

func joinLoadRsp(handle uint32, params []byte, sess []rawSession) []byte {
	var b []byte
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMSTSessions))
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, handle)
	b = binary.BigEndian.AppendUint32(b, uint32(len(params)))
	b = append(b, params...)
	for _, s := range sess {
		b = append(b, s.marshal(false)...)
	}
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	return b
}

func rc(rsp []byte) tpm2.TPMRC { return tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10])) }

// guardedLoadUnder runs one LoadGuarded of parentBlob with hook on the bus
// for its TPM2_Load, and returns what LoadGuarded returned.
func guardedLoadUnder(t *testing.T, bus *swtpmtest.Bus, tp *tpm.TPM, srk tpm.Object, blob tpm.Blob, auth []byte, hook swtpmtest.Hook) (tpm.Object, *tpm.PolicySession, error) {
	t.Helper()
	ps, err := tp.StartGuardingPolicySession(auth)
	if err != nil {
		t.Fatal(err)
	}
	ran := false
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCLoad {
			return nil, nil, false
		}
		ran = true
		return hook(next, cmd)
	})
	obj, err := tp.LoadGuarded(srk, blob, ps.Guard())
	bus.Set(nil)
	if !ran {
		t.Fatal("the attack did not run")
	}
	return obj, ps, err
}

// A1 swaps the two sessions of the guarded load: the guard first (as if
// it authorized the SRK), the SRK's password second. And A1 moves the
// guard's decrypt bit to nothing else. Each is refused by the TPM; no
// object is left without a sweep asked for.
func TestGuardSwappedIntoSlot1IsRefused(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	srk, parentBlob, _, auth := guardedSetup(t, tp)
	obj, ps, err := guardedLoadUnder(t, bus, tp, srk, parentBlob, auth, func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		h, s, p := splitCmd(cmd, 1)
		if len(s) != 2 {
			t.Errorf("%d sessions in the guarded load", len(s))
		}
		s[0], s[1] = s[1], s[0]
		rsp, err := next.Send(joinCmd(tpm2.TPMCCLoad, h, s, p))
		if err == nil {
			t.Logf("TPM answered the swapped load: %v", rc(rsp))
			if rc(rsp) == tpm2.TPMRCSuccess {
				t.Errorf("the TPM loaded with the guard in slot 1")
			}
		}
		return rsp, err, true
	})
	if err == nil {
		t.Errorf("loaded 0x%08x with the sessions swapped", uint32(obj.Handle))
	}
	t.Logf("LoadGuarded: %v (forged: %v)", err, errors.Is(err, tpm.ErrResponseForged))
	ps.Close()
	sweptAsAsked(t, tp)
}

// A1 with the PK's blob from the state (A4) takes the guard out of the
// load, puts the blob's own private area back in place of the encrypted
// one, and passes the TPM's answer on: with one session (as the TPM gave
// it), or with a guard entry of its own making. The TPM loads it; provd
// must not take the answer, and the object must be swept.
func TestGuardStrippedFromTheLoadIsForged(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	srk, parentBlob, _, auth := guardedSetup(t, tp)
	plainPriv := tpm2.Marshal(parentBlob.Private)
	for _, withFakeGuard := range []bool{false, true} {
		name := "the answer as the TPM gave it"
		if withFakeGuard {
			name = "a guard entry of A1's own in the answer"
		}
		t.Run(name, func(t *testing.T) {
			obj, ps, err := guardedLoadUnder(t, bus, tp, srk, parentBlob, auth, func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				h, s, p := splitCmd(cmd, 1)
				// Parameters: TPM2B_PRIVATE (encrypted), then TPM2B_PUBLIC.
				privLen := 2 + int(binary.BigEndian.Uint16(p))
				params := append(bytes.Clone(plainPriv), p[privLen:]...)
				rsp, err := next.Send(joinCmd(tpm2.TPMCCLoad, h, s[:1], params))
				if err != nil || rc(rsp) != tpm2.TPMRCSuccess {
					t.Errorf("the unguarded load: %v %v", err, rc(rsp))
					return rsp, err, true
				}
				if !withFakeGuard {
					return rsp, nil, true
				}
				hd, rp, rs := splitLoadRsp(rsp)
				n := make([]byte, 32)
				rand.Read(n)
				mac := make([]byte, 32)
				rand.Read(mac)
				rs = append(rs, rawSession{nonce: n, attrs: 0x01, hmac: mac})
				return joinLoadRsp(hd, rp, rs), nil, true
			})
			if err == nil {
				t.Errorf("took an unguarded load's answer: 0x%08x", uint32(obj.Handle))
				tp.Flush(obj.Handle)
			}
			if !errors.Is(err, tpm.ErrResponseForged) {
				t.Errorf("LoadGuarded: %v, want forged: an answer without the guard's entry, or with one the TPM did not make, is not the TPM's", err)
			}
			ps.Close()
			sweptAsAsked(t, tp)
		})
	}
}

// A1 replaces the SRK's handle in the guarded load with another
// persistent key's (the EK's): the names in the guard's cpHash differ.
func TestGuardedLoadUnderAnotherParentIsRefused(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	srk, parentBlob, _, auth := guardedSetup(t, tp)
	obj, ps, err := guardedLoadUnder(t, bus, tp, srk, parentBlob, auth, func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		c := bytes.Clone(cmd)
		binary.BigEndian.PutUint32(c[10:], 0x81010001)
		rsp, err := next.Send(c)
		return rsp, err, true
	})
	if err == nil {
		t.Errorf("loaded 0x%08x under another parent", uint32(obj.Handle))
	}
	// Refused either way; the TPM checks the EK's authorization (policy
	// only: TPM_RC_AUTH_UNAVAILABLE) before the guard's HMAC, so it is
	// not called forged.
	t.Logf("LoadGuarded: %v (forged: %v)", err, errors.Is(err, tpm.ErrResponseForged))
	ps.Close()
	sweptAsAsked(t, tp)
}

// cfbXOR encrypts data in place as a session whose session key is key
// does a command's first parameter (Part 1, 21): A1's own session.
func cfbXOR(key, nonceNewer, nonceOlder, data []byte) {
	kiv := tpm2.KDFa(crypto.SHA256, key, "CFB", nonceNewer, nonceOlder, (16+16)*8)
	b, _ := aes.NewCipher(kiv[:16])
	//lint:ignore SA1019 the TPM's parameter encryption is AES-CFB: A1 encrypts as the TPM decrypts
	cipher.NewCFBEncrypter(b, kiv[16:]).XORKeyStream(data, data)
}

func cmdHMAC(key []byte, cc tpm2.TPMCC, names [][]byte, params, nonceCaller, nonceTPM []byte, attrs byte) []byte {
	h := sha256.New()
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(cc)))
	for _, n := range names {
		h.Write(n)
	}
	h.Write(params)
	m := hmac.New(sha256.New, key)
	m.Write(h.Sum(nil))
	m.Write(nonceCaller)
	m.Write(nonceTPM)
	m.Write([]byte{attrs})
	return m.Sum(nil)
}

// A1 answers the guarding StartAuthSession with a session of its own
// (unsalted, so its session key is empty, but with AES-CFB so it may
// decrypt), and on the load rewrites the guard entry for its session:
// the private area from the state (A4) encrypted under its key, its
// nonces, an HMAC it computes. The TPM loads; the answer's guard HMAC is
// keyed by A1's session key, not provd's: provd must refuse it.
func TestGuardSessionOfA1sOwnIsForged(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	srk, parentBlob, _, auth := guardedSetup(t, tp)
	var own tpm2.TPMHandle
	var ownNonceTPM []byte
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCStartAuthSession || own != 0 {
			return nil, nil, false
		}
		nc := make([]byte, 16)
		rand.Read(nc)
		r, err := (tpm2.StartAuthSession{TPMKey: tpm2.TPMRHNull, Bind: tpm2.TPMRHNull, NonceCaller: tpm2.TPM2BNonce{Buffer: nc},
			SessionType: tpm2.TPMSEPolicy, AuthHash: tpm2.TPMAlgSHA256,
			Symmetric: tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgAES, KeyBits: tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(128)),
				Mode: tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB)}}).Execute(next)
		if err != nil {
			return nil, err, true
		}
		own, ownNonceTPM = r.SessionHandle, r.NonceTPM.Buffer
		var b []byte
		b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMSTNoSessions))
		b = binary.BigEndian.AppendUint32(b, 0)
		b = binary.BigEndian.AppendUint32(b, 0)
		b = binary.BigEndian.AppendUint32(b, uint32(own))
		b = binary.BigEndian.AppendUint16(b, uint16(len(ownNonceTPM)))
		b = append(b, ownNonceTPM...)
		binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
		return b, nil, true
	})
	ps, err := tp.StartGuardingPolicySession(auth)
	if err != nil {
		t.Fatal(err)
	}
	if ps.Handle() != own {
		t.Fatalf("the thief did not run: 0x%08x", uint32(ps.Handle()))
	}
	loaded := false
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCLoad {
			return nil, nil, false
		}
		h, s, p := splitCmd(cmd, 1)
		privLen := 2 + int(binary.BigEndian.Uint16(p))
		priv := tpm2.Marshal(parentBlob.Private)
		cfbXOR(nil, s[1].nonce, ownNonceTPM, priv[2:])
		params := append(priv, p[privLen:]...)
		s[1].hmac = cmdHMAC(nil, tpm2.TPMCCLoad, [][]byte{srk.Name.Buffer}, params, s[1].nonce, ownNonceTPM, s[1].attrs)
		rsp, err := next.Send(joinCmd(tpm2.TPMCCLoad, h, s, params))
		if err == nil {
			loaded = rc(rsp) == tpm2.TPMRCSuccess
			t.Logf("the TPM answered A1's load: %v", rc(rsp))
		}
		return rsp, err, true
	})
	obj, err := tp.LoadGuarded(srk, parentBlob, ps.Guard())
	bus.Set(nil)
	if !loaded {
		t.Error("the TPM did not load A1's rewrite: the attack did not run as meant")
	}
	if err == nil {
		t.Errorf("took the answer of A1's session: 0x%08x", uint32(obj.Handle))
	} else if !errors.Is(err, tpm.ErrResponseForged) {
		t.Errorf("LoadGuarded: %v, want forged", err)
	}
	ps.Close()
	sweptAsAsked(t, tp)
}

// A1 records a guarded load that succeeded and replays it, in the same
// session (still open: the daemon keeps it) for the next guarded load.
func TestGuardedLoadReplayedIsForged(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	srk, parentBlob, _, auth := guardedSetup(t, tp)
	ps, err := tp.StartGuardingPolicySession(auth)
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	var first []byte
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) == tpm2.TPMCCLoad {
			first = bytes.Clone(cmd)
		}
		return nil, nil, false
	})
	obj, err := tp.LoadGuarded(srk, parentBlob, ps.Guard())
	bus.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	tp.Flush(obj.Handle)
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCLoad {
			return nil, nil, false
		}
		rsp, err := next.Send(first)
		return rsp, err, true
	})
	obj, err = tp.LoadGuarded(srk, parentBlob, ps.Guard())
	bus.Set(nil)
	if err == nil {
		t.Errorf("a replayed load was taken: 0x%08x", uint32(obj.Handle))
	} else if !errors.Is(err, tpm.ErrResponseForged) {
		t.Errorf("LoadGuarded: %v, want forged", err)
	}
	sweptAsAsked(t, tp, ps.Handle())
}

// authValues with zeros: trailing (stripped by the TPM), inside (go-tpm
// v0.9.8 cuts at the last zero), all zero, and an empty non-nil one. The
// auth role's HMACs must be the TPM's in each case; and a session keyed
// with the wrong value must not work.
func TestKeyedPolicyOddAuthValues(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	srk, _, _ := pinnedGateBlob(t, tp)
	for name, auth := range map[string][]byte{
		"trailing zeros": {1, 2, 3, 0, 0},
		"a zero inside":  {1, 0, 2, 3},
		"all zeros":      {0, 0, 0},
		"empty":          {},
	} {
		t.Run(name, func(t *testing.T) {
			blob, err := tp.Create(srk, nil, policyAuthValueTemplate(), tpm.Sensitive{UserAuth: auth})
			if err != nil {
				t.Fatal(err)
			}
			ps, err := tp.StartGuardingPolicySession(auth)
			if err != nil {
				t.Fatal(err)
			}
			defer ps.Close()
			p, err := tp.LoadGuarded(srk, blob, ps.Guard())
			if err != nil {
				t.Fatalf("guarded load: %v", err)
			}
			defer tp.Flush(p.Handle)
			if err := ps.PolicyAuthValue(); err != nil {
				t.Fatal(err)
			}
			// A child made with the session: the auth role's HMAC.
			if _, err := tp.Create(p, ps.Session(), tpm.SRKTemplate, tpm.Sensitive{}); err != nil {
				t.Errorf("create in the auth role: %v", err)
			}
		})
	}
}

// After Close, a guard still authorizes: its session key is cleared to
// zeros, not dropped, and an HMAC keyed by 32 zero bytes is the HMAC keyed
// by the empty key (HMAC pads keys with zeros), the key of an unsalted,
// unbound session, which anyone can start at the freed handle. A command
// in a closed guard would be A1's to rewrite and answer.
func TestAClosedSessionAuthorizesNothing(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	_, _, _, auth := guardedSetup(t, tp)
	ps, err := tp.StartGuardingPolicySession(auth)
	if err != nil {
		t.Fatal(err)
	}
	g := ps.Guard()
	if err := ps.Close(); err != nil {
		t.Fatal(err)
	}
	if err := g.NewNonceCaller(); err != nil {
		t.Fatal(err)
	}
	params := []byte("anything")
	names := []tpm2.TPM2BName{{Buffer: []byte("parent")}}
	if a, err := g.Authorize(tpm2.TPMCCLoad, params, nil, names, 1); err == nil {
		want := cmdHMAC(nil, tpm2.TPMCCLoad, [][]byte{[]byte("parent")}, params, a.Nonce.Buffer, g.NonceTPM().Buffer, 0x21)
		t.Errorf("a closed guard still authorizes (handle 0x%08x; keyed by nothing: %v)", uint32(a.Handle), hmac.Equal(a.Authorization.Buffer, want))
	}
	// The auth role too.
	if b, err := ps.Session().Authorize(tpm2.TPMCCSign, params, nil, names, 0); err == nil {
		t.Errorf("a closed session still authorizes in the auth role (handle 0x%08x)", uint32(b.Handle))
	}
}
