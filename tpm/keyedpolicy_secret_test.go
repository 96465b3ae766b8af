package tpm_test

// The secret session (StartSecretPolicySession as provd's own keyedPolicy,
// which encrypts in its authorizing role), from its review: A1 on the
// encrypt and decrypt bits, the CFB key for a nil and an empty authValue,
// and a creation's sensitive area on the bus.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// ccPolicyDigest is PolicyCommandCode(cc)'s digest from a fresh session.
func ccPolicyDigest(cc tpm2.TPMCC) []byte {
	var b []byte
	b = append(b, make([]byte, 32)...)
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMCCPolicyCommandCode))
	b = binary.BigEndian.AppendUint32(b, uint32(cc))
	d := sha256.Sum256(b)
	return d[:]
}

// sealedUnder creates, under a PolicyAuthValue parent keyed by parentAuth
// (loaded), a sealed object with authPolicy and authValue objAuth holding
// secret, through a secret session (EncryptIn) keyed by parentAuth, and
// loads it (a salted session keyed by parentAuth).
func sealedUnder(t *testing.T, tp *tpm.TPM, parent tpm.Object, parentAuth, authPolicy, objAuth, secret []byte) tpm.Object {
	t.Helper()
	ps, err := tp.StartSecretPolicySession(tpm.EncryptIn, parentAuth)
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	if err := ps.PolicyAuthValue(); err != nil {
		t.Fatal(err)
	}
	blob, err := tp.Create(parent, ps.Session(), tpm.SealTemplate(authPolicy), tpm.Sensitive{UserAuth: objAuth, Data: secret})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := ps.PolicyAuthValue(); err != nil {
		t.Fatal(err)
	}
	obj, err := tp.Load(parent, ps.Session(), blob)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { tp.Flush(obj.Handle) })
	return obj
}

// The secret session keys its CFB by the session key and, when it was
// given one, the authValue; the TPM keys the answer's encryption by the
// session key and the authorized entity's authValue. A session started
// with nil or an empty authValue (fleet.go: a delivered secret, whose
// policy holds no PolicyAuthValue) decrypts the secret of an object whose
// authValue is empty. (An object with an authValue its policy does not
// check needs that authValue given: keyedPolicy; provd has none.)
func TestSecretSessionWithNoAuthValue(t *testing.T) {
	rec := &swtpmtest.Recorder{}
	env := swtpmtest.Start(t, swtpmtest.WithRecorder(rec))
	tp := env.TPM
	parent, parentAuth := policyAuthValueParent(t, tp)
	secret := []byte("a delivered secret, 32 bytes long")
	for name, objAuth := range map[string][]byte{
		"no authValue (fleet's objects)": nil,
	} {
		t.Run(name, func(t *testing.T) {
			obj := sealedUnder(t, tp, parent, parentAuth, ccPolicyDigest(tpm2.TPMCCUnseal), objAuth, secret)
			for _, auth := range [][]byte{nil, {}} {
				rec.Reset()
				ps, err := tp.StartSecretPolicySession(tpm.EncryptOut, auth)
				if err != nil {
					t.Fatal(err)
				}
				if err := ps.PolicyCommandCode(tpm2.TPMCCUnseal); err != nil {
					t.Fatal(err)
				}
				got, err := tp.UnsealWith(obj, ps.Session())
				ps.Close()
				if off := rec.Leak(secret); off >= 0 {
					t.Errorf("auth %v: the secret crossed the bus in the clear at %d", auth, off)
				}
				if err != nil || !bytes.Equal(got, secret) {
					t.Errorf("auth %#v: unseal answered %x, %v; want %x", auth, got, err, secret)
				}
			}
		})
	}
}

// nil and empty authValues key the session alike: a creation under the
// parent with an empty authValue, and its unseal, work either way, and the
// sensitive area's data and authValue cross the bus encrypted.
func TestSecretSessionNilAndEmptyAuth(t *testing.T) {
	rec := &swtpmtest.Recorder{}
	env := swtpmtest.Start(t, swtpmtest.WithRecorder(rec))
	tp := env.TPM
	srk, _, _ := pinnedGateBlob(t, tp)
	pb, err := tp.Create(srk, nil, policyAuthValueTemplate(), tpm.Sensitive{UserAuth: []byte{}})
	if err != nil {
		t.Fatal(err)
	}
	parent, err := tp.Load(srk, nil, pb)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Flush(parent.Handle)
	pav := policyAuthValueTemplate().AuthPolicy.Buffer
	for _, in := range [][]byte{nil, {}} {
		for _, out := range [][]byte{nil, {}} {
			secret := []byte("a secret sealed with an empty authValue")
			userAuth := []byte("the child's authValue, 29 B...")[:0] // empty too
			rec.Reset()
			ps, err := tp.StartSecretPolicySession(tpm.EncryptIn, in)
			if err != nil {
				t.Fatal(err)
			}
			if err := ps.PolicyAuthValue(); err != nil {
				t.Fatal(err)
			}
			blob, err := tp.Create(parent, ps.Session(), tpm.SealTemplate(pav), tpm.Sensitive{UserAuth: userAuth, Data: secret})
			if err != nil {
				ps.Close()
				t.Fatalf("in %#v: create: %v", in, err)
			}
			if off := rec.Leak(secret); off >= 0 {
				t.Errorf("in %#v: the secret crossed the bus in the clear at %d", in, off)
			}
			if err := ps.PolicyAuthValue(); err != nil {
				t.Fatal(err)
			}
			obj, err := tp.Load(parent, ps.Session(), blob)
			ps.Close()
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			ps, err = tp.StartSecretPolicySession(tpm.EncryptOut, out)
			if err != nil {
				t.Fatal(err)
			}
			if err := ps.PolicyAuthValue(); err != nil {
				t.Fatal(err)
			}
			got, err := tp.UnsealWith(obj, ps.Session())
			ps.Close()
			tp.Flush(obj.Handle)
			if err != nil || !bytes.Equal(got, secret) {
				t.Errorf("in %#v out %#v: unseal %q, %v", in, out, got, err)
			}
			if off := rec.Leak(secret); off >= 0 {
				t.Errorf("in %#v out %#v: the secret crossed the bus in the clear at %d", in, out, off)
			}
		}
	}
}

// A creation's sensitive area in a secret session (EncryptIn): both the
// new object's authValue and its data cross the bus encrypted.
func TestSecretSessionCreateHidesTheSensitiveArea(t *testing.T) {
	rec := &swtpmtest.Recorder{}
	env := swtpmtest.Start(t, swtpmtest.WithRecorder(rec))
	tp := env.TPM
	parent, parentAuth := policyAuthValueParent(t, tp)
	childAuth := []byte("the new object's own authValue.")
	secret := []byte("the data sealed in the new object")
	rec.Reset()
	sealedUnder(t, tp, parent, parentAuth, ccPolicyDigest(tpm2.TPMCCUnseal), childAuth, secret)
	for what, b := range map[string][]byte{"the data": secret, "the authValue": childAuth, "the parent's authValue": parentAuth} {
		if off := rec.Leak(b); off >= 0 {
			t.Errorf("%s crossed the bus in the clear at %d", what, off)
		}
	}
}

// A1 on the encrypt and decrypt bits of a secret session: the Unseal's
// encrypt bit cleared (to have the secret answered in the clear), the
// decrypt bit set too, the answer's encrypt bit cleared; a Create's
// decrypt bit cleared (to have the TPM take the ciphertext as the
// sensitive area). The TPM refuses a changed command (the bits are under
// the HMAC), provd a changed answer; the secret never crosses in the
// clear and provd never returns anything as the secret.
func TestSecretSessionBitsFlippedOnTheBus(t *testing.T) {
	bus := &swtpmtest.Bus{}
	rec := &swtpmtest.Recorder{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus), swtpmtest.WithRecorder(rec))
	tp := env.TPM
	parent, parentAuth := policyAuthValueParent(t, tp)
	secret := []byte("the secret A1 wants in the clear!")
	pav := policyAuthValueTemplate().AuthPolicy.Buffer
	obj := sealedUnder(t, tp, parent, parentAuth, pav, parentAuth, secret)
	flipCmd := func(nh int, bit byte) func(cmd, rsp []byte) ([]byte, []byte) {
		return func(cmd, rsp []byte) ([]byte, []byte) {
			if rsp != nil {
				return nil, rsp
			}
			cmd = bytes.Clone(cmd)
			cmd[swtpmtest.SessionAttrOffset(cmd, nh, 0)] ^= bit
			return cmd, nil
		}
	}
	const (
		decrypt = 1 << 5
		encrypt = 1 << 6
	)
	for name, tamper := range map[string]func(cmd, rsp []byte) ([]byte, []byte){
		"the unseal's encrypt bit cleared": flipCmd(1, encrypt),
		"the unseal's decrypt bit set":     flipCmd(1, decrypt),
		"the answer's encrypt bit cleared": func(cmd, rsp []byte) ([]byte, []byte) {
			if rsp == nil {
				return nil, nil
			}
			rsp = bytes.Clone(rsp)
			if binary.BigEndian.Uint32(rsp[6:10]) != 0 {
				return nil, rsp
			}
			// header, parameterSize, the parameters, then nonce, attributes.
			off := 14 + int(binary.BigEndian.Uint32(rsp[10:14]))
			off += 2 + int(binary.BigEndian.Uint16(rsp[off:]))
			rsp[off] &^= encrypt
			return nil, rsp
		},
	} {
		t.Run(name, func(t *testing.T) {
			ps, err := tp.StartSecretPolicySession(tpm.EncryptOut, parentAuth)
			if err != nil {
				t.Fatal(err)
			}
			defer ps.Close()
			if err := ps.PolicyAuthValue(); err != nil {
				t.Fatal(err)
			}
			ran := false
			rec.Reset()
			bus.Set(tamperOn(tpm2.TPMCCUnseal, tamper, &ran))
			got, err := tp.UnsealWith(obj, ps.Session())
			bus.Set(nil)
			if !ran {
				t.Fatal("the attack did not run")
			}
			if err == nil || got != nil {
				t.Errorf("unseal: %x, %v; want an error and nothing", got, err)
			}
			t.Logf("unseal: %v (forged: %v)", err, errors.Is(err, tpm.ErrResponseForged))
			if off := rec.Leak(secret); off >= 0 {
				t.Errorf("the secret crossed the bus in the clear at %d", off)
			}
		})
	}
	t.Run("a creation's decrypt bit cleared", func(t *testing.T) {
		ps, err := tp.StartSecretPolicySession(tpm.EncryptIn, parentAuth)
		if err != nil {
			t.Fatal(err)
		}
		defer ps.Close()
		if err := ps.PolicyAuthValue(); err != nil {
			t.Fatal(err)
		}
		ran := false
		rec.Reset()
		bus.Set(tamperOn(tpm2.TPMCCCreate, flipCmd(1, decrypt), &ran))
		blob, err := tp.Create(parent, ps.Session(), tpm.SealTemplate(pav), tpm.Sensitive{UserAuth: parentAuth, Data: secret})
		bus.Set(nil)
		if !ran {
			t.Fatal("the attack did not run")
		}
		if err == nil {
			t.Errorf("create made %x from a changed command", blob.Private.Buffer)
		}
		t.Logf("create: %v", err)
		if off := rec.Leak(secret); off >= 0 {
			t.Errorf("the secret crossed the bus in the clear at %d", off)
		}
	})
}
