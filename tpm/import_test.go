package tpm_test

import (
	"bytes"
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

// importable is a data object made in software, as ImportSensitive takes
// one: fixedTPM and fixedParent clear, its unique the hash of its seed and
// data.
func importable(t *testing.T) (tpm2.TPMTPublic, *tpm2.TPMTSensitive) {
	t.Helper()
	seed, data := make([]byte, 32), make([]byte, 32)
	if _, err := rand.Read(seed); err != nil {
		t.Fatal(err)
	}
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	unique := sha256.Sum256(append(bytes.Clone(seed), data...))
	pub := tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgKeyedHash,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{UserWithAuth: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash,
			&tpm2.TPMSKeyedHashParms{Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull}}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: unique[:]}),
	}
	sens := &tpm2.TPMTSensitive{
		SensitiveType: tpm2.TPMAlgKeyedHash,
		SeedValue:     tpm2.TPM2BDigest{Buffer: seed},
		Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BSensitiveData{Buffer: data}),
	}
	return pub, sens
}

// policyAuthValueTemplate is a storage key's template whose policy is
// PolicyAuthValue alone, and which only a policy authorizes (a PK's policy
// ends in PolicyAuthValue; userWithAuth clear).
func policyAuthValueTemplate() tpm2.TPMTPublic {
	var cc [4]byte
	binary.BigEndian.PutUint32(cc[:], uint32(tpm2.TPMCCPolicyAuthValue))
	d := sha256.Sum256(append(make([]byte, 32), cc[:]...))
	tmpl := tpm.SRKTemplate
	tmpl.AuthPolicy = tpm2.TPM2BDigest{Buffer: d[:]}
	tmpl.ObjectAttributes.UserWithAuth = false
	return tmpl
}

// policyAuthValueParent is a storage key under the pinned SRK whose
// policy is PolicyAuthValue, as the PK's policies end: its uses go in a
// policy session salted to the SRK and keyed by auth (key import's case).
func policyAuthValueParent(t *testing.T, tp *tpm.TPM) (tpm.Object, []byte) {
	t.Helper()
	srk, _, _ := pinnedGateBlob(t, tp)
	auth := newGateAuth(t)
	pb, err := tp.Create(srk, nil, policyAuthValueTemplate(), tpm.Sensitive{UserAuth: auth})
	if err != nil {
		t.Fatal(err)
	}
	parent, err := tp.Load(srk, nil, pb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Flush(parent.Handle) })
	return parent, auth
}

// authValueSession is a policy session salted to the pinned SRK that has
// run PolicyAuthValue, keyed by auth.
func authValueSession(t *testing.T, tp *tpm.TPM, auth []byte) *tpm.PolicySession {
	t.Helper()
	ps, err := tp.StartSaltedPolicySession(auth)
	if err != nil {
		t.Fatal(err)
	}
	if err := ps.PolicyAuthValue(); err != nil {
		t.Fatal(err)
	}
	return ps
}

// persistedEK is the swtpm's persistent RSA EK, loaded as tpm.EK does.
func persistedEK(t *testing.T, tp *tpm.TPM) tpm.Object {
	t.Helper()
	persisted, err := tp.ReadPublic(tpm.RSAEKHandle)
	if err != nil {
		t.Fatal(err)
	}
	ek, flush, err := tp.EK(tpm.RSAEKHandle, persisted.Public, rsaEKTemplate())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { flush() })
	return ek
}

// A TPM2_Import of an outer wrapper (ImportWrapped: key import under the
// PK, a fleet delivery under the EK) changed by A1 on its way in, or its
// answer changed, is reported as forged (exit 15), not as an authorization
// failure (exit 11), with the sessions each caller passes: the EK's policy
// session and a salted PolicyAuthValue session as session 1 (the TPM checks
// it first, and its HMAC covers the parameters: found by review, the first
// version of this mapping looked at the encryption session only), and a
// password, where the encryption session's HMAC is the one refused. A
// change to the encryption session's own attributes is refused in it.
// Nothing stays loaded.
func TestImportChangedOnTheBusIsForged(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	pwParent, pwAuth, _ := authParent(t, tp)
	pavParent, pavAuth := policyAuthValueParent(t, tp)
	ek := persistedEK(t, tp)
	pub, sens := importable(t)
	pubBytes := tpm2.Marshal(pub)
	held := []tpm2.TPMHandle{pwParent.Handle, pavParent.Handle, ek.Handle}

	for _, pc := range []struct {
		name   string
		parent tpm.Object
		auth   func() (tpm2.Session, func())
	}{
		{"a password", pwParent, func() (tpm2.Session, func()) { return tpm2.PasswordAuth(pwAuth), func() {} }},
		{"the EK's policy session", ek, func() (tpm2.Session, func()) {
			ps, err := tp.EKPolicySession()
			if err != nil {
				t.Fatal(err)
			}
			return ps.Session(), func() { ps.Close() }
		}},
		{"a salted PolicyAuthValue session", pavParent, func() (tpm2.Session, func()) {
			ps := authValueSession(t, tp, pavAuth)
			return ps.Session(), func() { ps.Close() }
		}},
	} {
		s, done := pc.auth()
		blob, err := tp.ImportSensitive(pc.parent, s, pub, sens)
		done()
		if err != nil || len(blob.Private.Buffer) == 0 {
			t.Fatalf("%s: the honest import: %v", pc.name, err)
		}
		for what, tamper := range map[string]func(cmd, rsp []byte) (newCmd, newRsp []byte){
			"the public area changed on its way in": func(cmd, _ []byte) ([]byte, []byte) {
				cmd = bytes.Clone(cmd)
				i := bytes.Index(cmd, pubBytes)
				if i < 0 {
					t.Fatal("the public area is not in the command")
				}
				cmd[i+len(pubBytes)-1] ^= 1
				return cmd, nil
			},
			"the encryption session's continueSession cleared": func(cmd, _ []byte) ([]byte, []byte) {
				cmd = bytes.Clone(cmd)
				cmd[swtpmtest.SessionAttrOffset(cmd, 1, 1)] ^= 0x01
				return cmd, nil
			},
			"the blob changed in the answer": func(_, rsp []byte) ([]byte, []byte) {
				if rsp == nil {
					return nil, nil
				}
				rsp = bytes.Clone(rsp)
				// header, parameterSize, then outPrivate's size and first byte.
				rsp[16] ^= 1
				return nil, rsp
			},
		} {
			t.Run(pc.name+"/"+what, func(t *testing.T) {
				ran := false
				bus.Set(tamperOn(tpm2.TPMCCImport, tamper, &ran))
				s, done := pc.auth()
				_, err := tp.ImportSensitive(pc.parent, s, pub, sens)
				bus.Set(nil)
				done()
				if !ran {
					t.Fatal("no TPM2_Import went by")
				}
				if !errors.Is(err, tpm.ErrResponseForged) {
					t.Fatalf("ImportSensitive: %v, want forged", err)
				}
				sweptAsAsked(t, tp, held...)
			})
		}
	}
}

// What fails an import without the bus is not called forged: a wrong
// password (the caller's to mistype), a TPM reset between the sessions'
// start and the import; an EK re-created with an authValue (PolicySecret
// of the endorsement hierarchy does not use it) imports.
func TestImportHonestFailuresAreNotForged(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	parent, auth, _ := authParent(t, tp)
	pub, sens := importable(t)
	notForged := func(t *testing.T, err error) {
		t.Helper()
		if err == nil {
			t.Fatal("no error")
		}
		if errors.Is(err, tpm.ErrResponseForged) {
			t.Errorf("an honest failure reported as forged: %v", err)
		}
	}
	t.Run("a wrong password", func(t *testing.T) {
		wrong := bytes.Clone(auth)
		wrong[0] ^= 1
		_, err := tp.ImportSensitive(parent, tpm2.PasswordAuth(wrong), pub, sens)
		notForged(t, err)
	})
	t.Run("a TPM reset between the sessions' start and the import", func(t *testing.T) {
		ek := persistedEK(t, tp)
		ps, err := tp.EKPolicySession()
		if err != nil {
			t.Fatal(err)
		}
		defer ps.Close()
		reset := false
		bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
			if swtpmtest.CommandCode(cmd) == tpm2.TPMCCImport && !reset {
				reset = true
				env.Reset()
			}
			return nil, nil, false
		})
		_, err = tp.ImportSensitive(ek, ps.Session(), pub, sens)
		bus.Set(nil)
		if !reset {
			t.Fatal("no reset")
		}
		notForged(t, err)
	})
}

// An EK with an authValue of its own imports: its policy, PolicySecret of
// the endorsement hierarchy, does not use it, and the EK's policy session
// keys no encryption with it.
func TestImportUnderAnEKWithAnAuthValue(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	pinnedGateBlob(t, tp)
	pub, sens := importable(t)
	ek := createEK(t, tp, []byte("ek-password"))
	defer tp.Flush(ek.Handle)
	ps, err := tp.EKPolicySession()
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	if _, err := tp.ImportSensitive(ek, ps.Session(), pub, sens); err != nil {
		t.Errorf("an import under an EK with an authValue: %v", err)
	}
}

// An import with no authorization for its parent is refused with an error,
// not a panic, whatever the TPM answers.
func TestImportWithNoParentAuth(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	parent, _, _ := authParent(t, tp)
	pub, sens := importable(t)
	if _, err := tp.ImportSensitive(parent, nil, pub, sens); err == nil {
		t.Fatal("an import with no parent authorization succeeded")
	}
}
