package api

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/provd/provd/catalog"
	"github.com/provd/provd/internal/strictjson"
)

// Proof that a peer's transfer key lives in its TPM (docs/transfer.md,
// "Proven residency"). A peer identity file is not authenticated: a
// transfer key in it could be a software key whose private part someone
// holds, with the peer's genuine EK certificates and PK name around it. When
// provd makes a duplicate itself, that key gets nothing (the inner
// wrapper's key is a credential only the peer's TPM opens); but a binding
// in a policy (key create or provision --duplicable-to) or an approval (key
// approve --dup-to) lets anyone who can run TPM2_Duplicate on the sender
// choose the inner key, and then such a key opens the duplicate (found by
// review). So a destination is bound or approved only once proven: the
// verifier makes a credential to the peer's EK for the transfer key's name
// (provd peer challenge), the peer's provd activates it (provd peer prove:
// only the TPM holding that EK, with that transfer key loaded and
// authorized by the holder of the PK it names, can), and the answer matches
// what the verifier committed to.

// PeerChallenge is a challenge to prove a transfer key resident: a
// credential whose secret is ChallengePrefix then the answer, and the
// SHA-256 of the answer. The verifier keeps its own copy: a challenge given
// back by someone else proves nothing.
type PeerChallenge struct {
	Format           int       `json:"format"`
	ParentName       string    `json:"parent_name"`    // the transfer key's name
	EKCertSHA256     string    `json:"ek_cert_sha256"` // the EK certificate the credential is to
	CredentialBlob   []byte    `json:"credential_blob"`
	CredentialSecret []byte    `json:"credential_secret"`
	Commitment       string    `json:"commitment"` // hex SHA-256 of the answer
	CreatedAt        time.Time `json:"created_at"`
}

// PeerProof is the peer's answer to a PeerChallenge.
type PeerProof struct {
	Format     int    `json:"format"`
	ParentName string `json:"parent_name"`
	Answer     []byte `json:"answer"`
}

// ChallengeFormat is PeerChallenge's and PeerProof's format number.
const ChallengeFormat = 1

// ChallengePrefix and ChallengeAnswerSize are catalog's (the fleet
// endpoint makes challenges too, without api).
var ChallengePrefix = catalog.ChallengePrefix

// ChallengeAnswerSize is catalog.ChallengeAnswerSize.
const ChallengeAnswerSize = catalog.ChallengeAnswerSize

// Proven checks that p answers c for peer: c and p name the peer's
// transfer key, c's credential was to one of the peer's EK certificates,
// and p's answer is the one c committed to. c must be the verifier's own.
func (c PeerChallenge) Proven(p PeerProof, peer PeerIdentity) error {
	bad := func(what string) error {
		return fmt.Errorf("%w: the peer's transfer key is not proven resident in its TPM: %s", ErrNotPermitted, what)
	}
	if c.Format != ChallengeFormat || p.Format != ChallengeFormat {
		return bad("a challenge or proof of another format")
	}
	if c.ParentName != peer.ParentName || p.ParentName != peer.ParentName {
		return bad("the challenge or the proof is for another transfer key")
	}
	found := false
	for _, der := range peer.EKCertificates {
		if s := sha256.Sum256(der); hex.EncodeToString(s[:]) == c.EKCertSHA256 {
			found = true
		}
	}
	if !found {
		return bad("the challenge was made to an EK certificate the peer file does not hold")
	}
	want, err := hex.DecodeString(c.Commitment)
	if err != nil || len(want) != sha256.Size {
		return fmt.Errorf("%w: the challenge's commitment", ErrBadInput)
	}
	got := sha256.Sum256(p.Answer)
	if len(p.Answer) != ChallengeAnswerSize || subtle.ConstantTimeCompare(got[:], want) != 1 {
		return bad("the answer is not the one the challenge holds (made by another TPM, or for another challenge)")
	}
	return nil
}

// IsChallenge reports whether a credential's secret is a challenge's.
func IsChallenge(secret []byte) bool {
	return len(secret) == len(ChallengePrefix)+ChallengeAnswerSize && bytes.HasPrefix(secret, ChallengePrefix)
}

// ParsePeerChallenge reads a challenge file (provd peer challenge) strictly.
func ParsePeerChallenge(b []byte) (PeerChallenge, error) {
	var c PeerChallenge
	if len(b) > maxTransferFile {
		return c, fmt.Errorf("%w: a challenge of %d bytes (at most %d)", ErrBadInput, len(b), maxTransferFile)
	}
	if err := strictjson.Decode(b, &c); err != nil {
		return c, fmt.Errorf("%w: challenge: %v", ErrBadInput, err)
	}
	return c, c.Check()
}

// Check refuses a challenge of another format or with a field that is not
// hex, where a file is read and where the daemon takes one.
func (c PeerChallenge) Check() error {
	if c.Format != ChallengeFormat {
		return fmt.Errorf("%w: challenge format %d, this provd reads %d", ErrBadInput, c.Format, ChallengeFormat)
	}
	return CheckHexFields("challenge", map[string]string{"parent_name": c.ParentName, "ek_cert_sha256": c.EKCertSHA256, "commitment": c.Commitment})
}

// ParsePeerProof reads a proof file (provd peer prove) strictly.
func ParsePeerProof(b []byte) (PeerProof, error) {
	var p PeerProof
	if len(b) > maxTransferFile {
		return p, fmt.Errorf("%w: a proof of %d bytes (at most %d)", ErrBadInput, len(b), maxTransferFile)
	}
	if err := strictjson.Decode(b, &p); err != nil {
		return p, fmt.Errorf("%w: proof: %v", ErrBadInput, err)
	}
	return p, p.Check()
}

// Check refuses a proof of another format or with a field that is not hex.
func (p PeerProof) Check() error {
	if p.Format != ChallengeFormat {
		return fmt.Errorf("%w: proof format %d, this provd reads %d", ErrBadInput, p.Format, ChallengeFormat)
	}
	return CheckHexFields("proof", map[string]string{"parent_name": p.ParentName})
}

// Residency is a verifier's challenge and the peer's proof, as a request
// that binds or approves a destination carries them.
type Residency struct {
	Challenge PeerChallenge `json:"challenge"`
	Proof     PeerProof     `json:"proof"`
}

// CheckHexFields refuses, where a file is read, any of fields (name: value)
// that is not hex (empty passes: whether a field may be empty is its
// reader's rule). Names, digests and hashes in peer, challenge, proof,
// duplicate and sealed files are compared with this device's; a value that
// is no hex would only fail the comparison, and its text would reach the
// refusal (found by review 53: terminal control characters in a field,
// quoted into the error): it is refused here, naming the field only.
func CheckHexFields(what string, fields map[string]string) error {
	for _, name := range slices.Sorted(maps.Keys(fields)) {
		v := fields[name]
		if len(v)%2 != 0 || strings.IndexFunc(v, func(r rune) bool {
			return !('0' <= r && r <= '9' || 'a' <= r && r <= 'f' || 'A' <= r && r <= 'F')
		}) >= 0 {
			return fmt.Errorf("%w: %s: %s is not hex", ErrBadInput, what, name)
		}
	}
	return nil
}
