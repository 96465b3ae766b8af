package agent

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
)

// forgedPeer is peer with its transfer key replaced by a software key of
// the caller's (its private key returned), with the policy a transfer key
// of the peer's PK has: a file that passes every check a file allows.
func forgedPeer(t *testing.T, peer api.PeerIdentity) (api.PeerIdentity, *ecdh.PrivateKey) {
	t.Helper()
	evil, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pt := evil.PublicKey().Bytes()
	pkName, _ := hex.DecodeString(peer.PKName)
	pub := catalog.TransferTemplate(catalog.TransferPolicy(pkName))
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: pt[1:33]}, Y: tpm2.TPM2BECCParameter{Buffer: pt[33:]}})
	name, err := tpm2.ObjectName(&pub)
	if err != nil {
		t.Fatal(err)
	}
	forged := peer
	forged.Parent, forged.ParentName = tpm2.Marshal(tpm2.New2B(pub)), hex.EncodeToString(name.Buffer)
	if _, _, err := checkPeer(forged); err != nil {
		t.Fatalf("the forged file should pass the file's own checks: %v", err)
	}
	return forged, evil
}

// TestPeerProveAnswersOnlyItsOwnChallenges (from the second review of the
// residency proof, what held): B answers no duplicate's credential, no
// challenge for a software transfer key (even with its name rewritten to
// B's), none for an EK it does not hold, and nothing on a bad boot; its
// answer proves its own transfer key and no other.
func TestPeerProveAnswersOnlyItsOwnChallenges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	envB, b, _, peerB, dup := movedKey(t)
	rootsB := caBundle(t, envB)
	if _, err := b.PeerProve(ctx, api.PeerChallenge{Format: api.ChallengeFormat, ParentName: dup.ParentName,
		EKCertSHA256: dup.EKCertSHA256, CredentialBlob: dup.CredentialBlob, CredentialSecret: dup.CredentialSecret}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("a duplicate's credential: %v", err)
	}
	forged, _ := forgedPeer(t, peerB)
	c, err := NewPeerChallenge(forged, rootsB, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.PeerProve(ctx, c); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("a challenge for a software transfer key: %v", err)
	}
	c.ParentName = peerB.ParentName
	if p, err := b.PeerProve(ctx, c); err == nil {
		t.Fatalf("answered a credential for another name: %x", p.Answer)
	}
	c2, err := NewPeerChallenge(peerB, rootsB, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	other := c2
	other.EKCertSHA256 = hex.EncodeToString(make([]byte, 32))
	if _, err := b.PeerProve(ctx, other); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("another EK: %v", err)
	}
	p, err := b.PeerProve(ctx, c2)
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.Proven(p, forged); err == nil {
		t.Fatal("B's proof proved a software transfer key")
	}
	if err := c2.Proven(p, peerB); err != nil {
		t.Fatalf("control: %v", err)
	}
	m := sha256.Sum256([]byte("bad boot"))
	if err := envB.TPM.PCRExtend(7, tpm2.TPMAlgSHA256, m[:]); err != nil {
		t.Fatal(err)
	}
	if _, err := b.PeerProve(ctx, c2); err == nil {
		t.Fatal("answered on a bad boot")
	}
}
