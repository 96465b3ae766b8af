// Package softhsm_test holds provd's key backups against another HSM:
// SoftHSM2 (Debian softhsm2), driven through PKCS#11 as an HSM custodian
// would, takes the same KEK from the same components, unwraps what provd
// exports with CKM_AES_KEY_WRAP_PAD and signs with it; and what SoftHSM
// wraps imports into provd. OpenSC's pkcs11-tool 0.23 unwraps only secret
// keys, so the test is its own PKCS#11 client (github.com/miekg/pkcs11,
// which dlopens the module; cgo).
package softhsm_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/keywrap"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// module is where Debian's softhsm2 puts the PKCS#11 module.
const module = "/usr/lib/softhsm/libsofthsm2.so"

// token is a SoftHSM2 token of the test's own (its own config and token
// directory), logged in as the user.
type token struct {
	p *pkcs11.Ctx
	s pkcs11.SessionHandle
}

func newToken(t *testing.T) *token {
	t.Helper()
	if _, err := os.Stat(module); err != nil {
		t.Fatalf("SoftHSM2's PKCS#11 module: %v (make test installs softhsm2)", err)
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.MkdirAll(filepath.Join(dir, "tokens"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(dir, "tokens")+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	if out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", "provd-test", "--pin", "1234", "--so-pin", "5678").CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	p := pkcs11.New(module)
	if p == nil {
		t.Fatalf("cannot load %s", module)
	}
	if err := p.Initialize(); err != nil {
		t.Fatal(err)
	}
	slots, err := p.GetSlotList(true)
	if err != nil || len(slots) == 0 {
		t.Fatalf("slots: %v %v", slots, err)
	}
	s, err := p.OpenSession(slots[0], pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Login(s, pkcs11.CKU_USER, "1234"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Logout(s)
		p.CloseSession(s)
		p.Finalize()
		p.Destroy()
	})
	return &token{p, s}
}

// importKEK creates the AES KEK from the combined components in the token
// (wrap and unwrap only, not extractable) and returns the token's own KCV
// of it: AES-ECB of a zero block, as HSMs compute it.
func (tk *token) importKEK(t *testing.T, key []byte) (pkcs11.ObjectHandle, string) {
	t.Helper()
	h, err := tk.p.CreateObject(tk.s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, key),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true), // for the KCV
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, "kek"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tk.p.EncryptInit(tk.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB, nil)}, h); err != nil {
		t.Fatal(err)
	}
	block, err := tk.p.Encrypt(tk.s, make([]byte, 16))
	if err != nil {
		t.Fatal(err)
	}
	return h, hex.EncodeToString(block[:3])
}

var kwp = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}

// sign has the token sign digest with key (RSA PKCS#1 v1.5 over SHA-256,
// or ECDSA), returning an ASN.1 ECDSA signature for ECC.
func (tk *token) sign(t *testing.T, key pkcs11.ObjectHandle, ecc bool, msg []byte) []byte {
	t.Helper()
	d := sha256.Sum256(msg)
	mech, in := pkcs11.CKM_SHA256_RSA_PKCS, msg
	if ecc {
		mech, in = pkcs11.CKM_ECDSA, d[:]
	}
	if err := tk.p.SignInit(tk.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(uint(mech), nil)}, key); err != nil {
		t.Fatal(err)
	}
	sig, err := tk.p.Sign(tk.s, in)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

// ceremony enters a random 3-component AES-256 KEK "kek" of usage (wrap
// or unwrap) on ag and returns the combined key.
func ceremony(t *testing.T, ag *agent.Agent, usage string) []byte {
	t.Helper()
	comps := make([][]byte, 3)
	req := api.KEKImportRequest{Name: "kek", Usage: usage}
	for i := range comps {
		comps[i] = make([]byte, 32)
		rand.Read(comps[i])
		k, _ := keywrap.KCV(comps[i])
		req.Components = append(req.Components, bytes.Clone(comps[i]))
		req.KCVs = append(req.KCVs, hex.EncodeToString(k[:]))
	}
	key, err := keywrap.Combine(comps)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := keywrap.KCV(key)
	req.KCV = hex.EncodeToString(k[:])
	if _, err := ag.ImportKEK(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	return key
}

// TestSoftHSMTakesProvdsBackup: provd's export of an extractable RSA-2048
// and P-256 key, unwrapped by SoftHSM2 under the same KEK
// (CKM_AES_KEY_WRAP_PAD), signs what provd's public key verifies.
func TestSoftHSMTakesProvdsBackup(t *testing.T) {
	ctx := context.Background()
	ag := provisioned(t)
	key := ceremony(t, ag, "wrap")
	tk := newToken(t)
	kek, kcv := tk.importKEK(t, key)
	if info, err := ag.ListKeys(ctx); err != nil || info[0].KCV != kcv {
		t.Fatalf("provd's KEK %+v, SoftHSM's KCV %s: %v", info, kcv, err)
	}
	msg := []byte("signed by SoftHSM with provd's key")
	for _, typ := range []string{"rsa-2048", "ecc-p256"} {
		if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: typ, Type: typ, Extractable: true}); err != nil {
			t.Fatal(err)
		}
		wrapped, err := ag.ExportKey(ctx, api.KeyExportRequest{Name: typ, KEK: "kek", Approval: officertest.ApproveExport(t, ctx, ag, typ, "kek")})
		if err != nil {
			t.Fatal(err)
		}
		ecc := typ == "ecc-p256"
		keyType := uint(pkcs11.CKK_RSA)
		if ecc {
			keyType = pkcs11.CKK_EC
		}
		h, err := tk.p.UnwrapKey(tk.s, kwp, kek, wrapped, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		})
		if err != nil {
			t.Fatalf("%s: SoftHSM C_UnwrapKey(CKM_AES_KEY_WRAP_PAD) of provd's export: %v", typ, err)
		}
		sig := tk.sign(t, h, ecc, msg)
		pub, _, err := ag.KeyPublic(ctx, typ)
		if err != nil {
			t.Fatal(err)
		}
		d := sha256.Sum256(msg)
		switch p := pub.(type) {
		case *rsa.PublicKey:
			if err := rsa.VerifyPKCS1v15(p, crypto.SHA256, d[:], sig); err != nil {
				t.Fatalf("SoftHSM's signature with the unwrapped key does not verify with provd key pub: %v", err)
			}
		case *ecdsa.PublicKey:
			n := len(sig) / 2
			if !ecdsa.Verify(p, d[:], new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:])) {
				t.Fatal("SoftHSM's signature with the unwrapped key does not verify with provd key pub")
			}
		}
	}
}

// TestProvdTakesSoftHSMsBackup: an RSA-2048 key generated on SoftHSM2 as
// extractable and wrapped there (C_WrapKey, CKM_AES_KEY_WRAP_PAD) imports
// with provd key import, and provd's signature verifies with SoftHSM's
// public key; a key SoftHSM wrapped under another KEK imports nothing.
func TestProvdTakesSoftHSMsBackup(t *testing.T) {
	ctx := context.Background()
	ag := provisioned(t)
	key := ceremony(t, ag, "unwrap")
	tk := newToken(t)
	kek, _ := tk.importKEK(t, key)
	pubH, privH, err := tk.p.GenerateKeyPair(tk.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, 2048),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
		},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		})
	if err != nil {
		t.Fatal(err)
	}
	wrapped, err := tk.p.WrapKey(tk.s, kwp, kek, privH)
	if err != nil {
		t.Fatalf("SoftHSM C_WrapKey(CKM_AES_KEY_WRAP_PAD): %v", err)
	}
	attrs, err := tk.p.GetAttributeValue(tk.s, pubH, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil)})
	if err != nil {
		t.Fatal(err)
	}
	hsmPub := &rsa.PublicKey{N: new(big.Int).SetBytes(attrs[0].Value), E: int(new(big.Int).SetBytes(attrs[1].Value).Int64())}

	// Under another KEK: the wrap's integrity check fails in the TPM.
	other, _ := tk.importKEK(t, bytes.Repeat([]byte{7}, 32))
	foreign, err := tk.p.WrapKey(tk.s, kwp, other, privH)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ag.ImportKey(ctx, api.KeyImportRequest{Name: "hsm", KEK: "kek", Wrapped: foreign}); api.ExitCode(err) != api.ExitTampered {
		t.Fatalf("a backup under another KEK: %v", err)
	}

	if _, err := ag.ImportKey(ctx, api.KeyImportRequest{Name: "hsm", KEK: "kek", Wrapped: wrapped}); err != nil {
		t.Fatalf("provd key import of SoftHSM's wrap: %v", err)
	}
	pub, _, err := ag.KeyPublic(ctx, "hsm")
	if err != nil {
		t.Fatal(err)
	}
	if !hsmPub.Equal(pub) {
		t.Fatal("the imported key's public key is not SoftHSM's")
	}
	d := sha256.Sum256([]byte("signed by provd with SoftHSM's key"))
	sig, err := ag.Sign(ctx, "hsm", d[:], api.SignOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rsa.VerifyPKCS1v15(hsmPub, crypto.SHA256, d[:], sig); err != nil {
		t.Fatalf("provd's signature does not verify with SoftHSM's public key: %v", err)
	}
}

// provisioned is an agent on a fresh swtpm, provisioned with the test
// officer and PCR 7.
func provisioned(t *testing.T) *agent.Agent {
	t.Helper()
	env := swtpmtest.Start(t)
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: t.TempDir() + "/state"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ag.Close() })
	if _, err := ag.Provision(context.Background(), api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	return ag
}
