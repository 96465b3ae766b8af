package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/attest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// forgeDup is a duplicate for the peer made without a TPM, from public
// information only (the peer file, and the key template any duplicate
// shows): a P-256 key of the forger's under the peer's transfer key, its
// inner key a credential to the peer's EK for the transfer key's name.
// (From the second review of the transfer issue.)
func forgeDup(t *testing.T, like api.DupFile, peer api.PeerIdentity) api.DupFile {
	t.Helper()
	p2b, err := tpm2.Unmarshal[tpm2.TPM2BPublic](like.Public)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := p2b.Contents()
	if err != nil {
		t.Fatal(err)
	}
	evil, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	evilDH, _ := evil.ECDH()
	pt := evilDH.PublicKey().Bytes()
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: pt[1:33]}, Y: tpm2.TPM2BECCParameter{Buffer: pt[33:]}})
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		t.Fatal(err)
	}
	keyAuth, err := tpm.RandomAuth(32)
	if err != nil {
		t.Fatal(err)
	}
	seedValue := make([]byte, 32)
	rand.Read(seedValue)
	sens := tpm2.TPMTSensitive{SensitiveType: tpm2.TPMAlgECC, AuthValue: tpm2.TPM2BAuth{Buffer: keyAuth},
		SeedValue: tpm2.TPM2BDigest{Buffer: seedValue},
		Sensitive: tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgECC, &tpm2.TPM2BECCParameter{Buffer: evilDH.Bytes()})}
	s2b := tpm2.Marshal(tpm2.New2B(sens))
	h := sha256.New()
	h.Write(s2b)
	h.Write(name.Buffer)
	plain := append(tpm2.Marshal(tpm2.TPM2BDigest{Buffer: h.Sum(nil)}), s2b...)
	inner := make([]byte, 16)
	rand.Read(inner)
	innerDup := cfbEncrypt(inner, plain)
	tPub, tName, err := checkPeer(peer)
	if err != nil {
		t.Fatal(err)
	}
	encap, err := tpm2.ImportEncapsulationKey(&tPub)
	if err != nil {
		t.Fatal(err)
	}
	seed, encSeed, err := encap.Encapsulate(rand.Reader, "DUPLICATE")
	if err != nil {
		t.Fatal(err)
	}
	dupSensitive := cfbEncrypt(tpm2.KDFa(crypto.SHA256, seed, "STORAGE", name.Buffer, nil, 128), innerDup)
	mac := hmac.New(sha256.New, tpm2.KDFa(crypto.SHA256, seed, "INTEGRITY", nil, nil, 256))
	mac.Write(dupSensitive)
	mac.Write(name.Buffer)
	duplicate := append(tpm2.Marshal(tpm2.TPM2BDigest{Buffer: mac.Sum(nil)}), dupSensitive...)
	var ekCert []byte
	for _, der := range peer.EKCertificates {
		if s := sha256.Sum256(der); hex.EncodeToString(s[:]) == like.EKCertSHA256 {
			ekCert = der
		}
	}
	ekc, err := attest.ParseEKCertificate(ekCert)
	if err != nil {
		t.Fatal(err)
	}
	_, ekPub, _, _, err := ekPublic(ekc.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	ekEncap, err := tpm2.ImportEncapsulationKey(&ekPub)
	if err != nil {
		t.Fatal(err)
	}
	idObject, encSecret, err := tpm2.CreateCredential(rand.Reader, ekEncap, tName, append(bytes.Clone(inner), keyAuth...))
	if err != nil {
		t.Fatal(err)
	}
	f := like
	f.Public = tpm2.Marshal(tpm2.New2B(*pub))
	f.Duplicate, f.Seed, f.CredentialBlob, f.CredentialSecret = duplicate, encSeed, idObject, encSecret
	return f
}

func cfbEncrypt(key, plain []byte) []byte {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	out := make([]byte, len(plain))
	//lint:ignore SA1019 the TPM's duplication wrappers are AES-CFB
	cipher.NewCFBEncrypter(b, make([]byte, aes.BlockSize)).XORKeyStream(out, plain)
	return out
}

// TestForgedDupIsRefused: someone between the devices replaces A's
// duplicate with one made in software of a key of their own (found by the
// second review: B imported it as the key). B takes a key only with its
// officer's approval of that very key to its transfer key: the approval the
// forged file carries is for A's key, and B refuses it; the genuine file
// imports, once (a second import of the same key under another name is
// refused).
func TestForgedDupIsRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, b, _, peer, genuine := movedKey(t)
	forged := forgeDup(t, genuine, peer)
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: forged}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("a forged duplicate: %v, want it refused", err)
	}
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: genuine}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "k2", Dup: genuine}); !errors.Is(err, api.ErrKeyExists) {
		t.Fatalf("the same key again under another name: %v", err)
	}
}

// movedKey is two provisioned agents, A and B (B's swtpm started with
// optsB), B's peer identity, and A's extractable P-256 key "k" duplicated to
// B with the officer's approval: the start of the tests that attack the
// receiving side.
func movedKey(t *testing.T, optsB ...swtpmtest.Option) (envB *swtpmtest.Env, b, a *Agent, peer api.PeerIdentity, dup api.DupFile) {
	t.Helper()
	ctx := context.Background()
	envA := swtpmtest.Start(t)
	envB = swtpmtest.Start(t, optsB...)
	a, b, peer = senderAndPeer(t, envA, envB)
	dup, err := a.DupExport(ctx, api.DupExportRequest{Name: "k", Peer: peer, Approval: approveDup(t, a, "k", peer), EKCA: caBundle(t, envB)})
	if err != nil {
		t.Fatal(err)
	}
	return envB, b, a, peer, dup
}
