package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/provd/provd/api"
)

// NewPeerChallenge makes a challenge for the peer to prove its transfer
// key resident (api.PeerChallenge): offline, no TPM and no state. The
// peer's EK certificate must chain to roots; the credential is to that EK,
// for the transfer key's name, and carries api.ChallengePrefix and a random
// answer, of which only the SHA-256 is kept.
func NewPeerChallenge(peer api.PeerIdentity, roots []byte, now func() time.Time) (api.PeerChallenge, error) {
	_, name, err := checkPeer(peer)
	if err != nil {
		return api.PeerChallenge{}, err
	}
	ekPub, sum, err := peerEK(peer.EKCertificates, roots, now)
	if err != nil {
		return api.PeerChallenge{}, err
	}
	secret := make([]byte, len(api.ChallengePrefix)+api.ChallengeAnswerSize)
	copy(secret, api.ChallengePrefix)
	if _, err := rand.Read(secret[len(api.ChallengePrefix):]); err != nil {
		return api.PeerChallenge{}, err
	}
	defer clear(secret)
	commit := sha256.Sum256(secret[len(api.ChallengePrefix):])
	idObject, encSecret, err := credentialTo(ekPub, name, secret)
	if err != nil {
		return api.PeerChallenge{}, err
	}
	return api.PeerChallenge{Format: api.ChallengeFormat, ParentName: peer.ParentName, EKCertSHA256: sum,
		CredentialBlob: idObject, CredentialSecret: encSecret, Commitment: hex.EncodeToString(commit[:]),
		CreatedAt: now().UTC()}, nil
}

// PeerProve answers a residency challenge for this device's transfer key:
// the credential activated with the EK and T (as a duplicate's), and its
// answer returned, only when the secret is a challenge's.
func (a *Agent) PeerProve(ctx context.Context, c api.PeerChallenge) (api.PeerProof, error) {
	defer a.lock()()
	objects := map[string]string{"transfer_key": c.ParentName}
	return auditedResult(ctx, a, "peer-prove", objects, func() (api.PeerProof, error) {
		return a.peerProve(ctx, c)
	})
}

func (a *Agent) peerProve(ctx context.Context, c api.PeerChallenge) (api.PeerProof, error) {
	if err := c.Check(); err != nil {
		return api.PeerProof{}, err
	}
	pk, tr, traw, ok, err := a.readTransfer(ctx)
	if err != nil {
		return api.PeerProof{}, err
	}
	if !ok {
		return api.PeerProof{}, fmt.Errorf("%w: this device has no transfer key: run provd peer identity first", api.ErrNotFound)
	}
	if c.ParentName != tr.Name {
		return api.PeerProof{}, fmt.Errorf("%w: the challenge is for another transfer key (%.16s…), this device's is %.16s…", api.ErrNotPermitted, c.ParentName, tr.Name)
	}
	cert, err := a.ekCertBySum(ctx, c.EKCertSHA256)
	if err != nil {
		return api.PeerProof{}, err
	}
	ekHandle, ekPub, ekTmpl, _, err := ekPublic(cert)
	if err != nil {
		return api.PeerProof{}, err
	}
	if err := a.keys.EvictResident(); err != nil {
		return api.PeerProof{}, err
	}
	var answer []byte
	err = a.withTransfer(pk, tr, traw, true, func(l *loadedPK, t transferKey) error {
		secret, err := a.activate(l, t, ekHandle, ekPub, ekTmpl, api.DupFile{CredentialBlob: c.CredentialBlob, CredentialSecret: c.CredentialSecret})
		defer clear(secret)
		if err != nil {
			return err
		}
		if !api.IsChallenge(secret) {
			// A duplicate's credential (an inner key, an authValue):
			// never answered.
			return fmt.Errorf("%w: the credential is not a residency challenge", api.ErrNotPermitted)
		}
		answer = bytes.Clone(secret[len(api.ChallengePrefix):])
		return nil
	})
	if err != nil {
		return api.PeerProof{}, err
	}
	return api.PeerProof{Format: api.ChallengeFormat, ParentName: tr.Name, Answer: answer}, nil
}
