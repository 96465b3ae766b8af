package tpm_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
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

// TPM2_Import's encryption session (ImportWrapped's, so ImportSensitive's,
// key import's and the fleet's deliveries under the EK) is salted to the
// pinned SRK and keyed by nothing a caller types: A1 changing the command
// on its way in, or the private blob in the answer, is reported as forged
// (exit 15), not as an authorization failure (exit 11), as TPM2_Import's
// other path (ImportAndLoad) does; nothing stays loaded.
func TestImportChangedOnTheBusIsForged(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	// A password session first, as the EK's policy session: no HMAC, so
	// the TPM's check falls to the encryption session.
	parent, auth, _ := authParent(t, tp)
	pub, sens := importable(t)
	blob, err := tp.ImportSensitive(parent, tpm2.PasswordAuth(auth), pub, sens)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := tp.LoadWithAuth(parent, auth, blob)
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.Flush(obj.Handle); err != nil {
		t.Fatal(err)
	}
	pubBytes := tpm2.Marshal(pub)

	for name, tamper := range map[string]func(cmd, rsp []byte) (newCmd, newRsp []byte){
		"the public area changed on its way in": func(cmd, _ []byte) ([]byte, []byte) {
			cmd = bytes.Clone(cmd)
			i := bytes.Index(cmd, pubBytes)
			if i < 0 {
				t.Fatal("the public area is not in the command")
			}
			cmd[i+len(pubBytes)-1] ^= 1
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
		t.Run(name, func(t *testing.T) {
			bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if swtpmtest.CommandCode(cmd) != tpm2.TPMCCImport {
					return nil, nil, false
				}
				if c, _ := tamper(cmd, nil); c != nil {
					rsp, err := next.Send(c)
					return rsp, err, true
				}
				rsp, err := next.Send(cmd)
				if err != nil {
					return rsp, err, true
				}
				_, r := tamper(cmd, rsp)
				return r, nil, true
			})
			_, err := tp.ImportSensitive(parent, tpm2.PasswordAuth(auth), pub, sens)
			bus.Set(nil)
			if !errors.Is(err, tpm.ErrResponseForged) {
				t.Fatalf("ImportSensitive: %v, want forged", err)
			}
			sweptAsAsked(t, tp, parent.Handle)
		})
	}
}
