// Package attest verifies TPM evidence without a TPM: endorsement key (EK)
// certificate chains, TPM2_Certify and TPM2_Quote attestation structures, and
// TCG PC Client event logs replayed to PCR values.
//
// It exists because provd trusts nothing that arrives over the TPM bus, or from
// a remote device, until it is authenticated, and because the code that decides
// trust must be usable where there is no TPM at all: the fleet endpoint, an
// offline tool, the check of a peer TPM before a key is transferred to it. So the
// package sends no TPM command and imports nothing of provd's TPM or agent code;
// it takes bytes (as a TPM or a device produced them) and returns either an
// error or facts that every check has passed.
//
// Every function is strict by default. The zero Options refuse SHA-1, trust no
// EK root (the system roots are never consulted), and accept only the approved
// algorithms (RSA >= 2048, ECC P-256/P-384, SHA-256/384). Errors wrap the
// sentinels below, so callers decide with errors.Is, never by message.
//
// What each verifier proves, and what it leaves to the caller:
//
//   - VerifyEKCertificate: the EK public key was certified by a trusted
//     manufacturer chain. Whether the key is resident in the TPM being talked to
//     is for the caller to establish (a session salted to it, or credential
//     activation).
//   - VerifyCertify, VerifyQuote: a restricted signing key (an AK) that lives in a
//     TPM signed the structure, freshly (the nonce). The caller must already
//     trust the AK's public area, for example through credential activation
//     against a verified EK.
//   - EventLog.Replay with ComparePCRs: the log's digests account exactly for the
//     quoted PCR values. What the measured events mean is policy, decided by the
//     caller on the replayed log.
package attest

import (
	"crypto"
	"crypto/rand"
	_ "crypto/sha1" // crypto.SHA1.New, for the SHA-1 bank when allowed
	_ "crypto/sha256"
	_ "crypto/sha512"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/catalog"
)

// Sentinel errors. Every error of a verifier or parser wraps at least one of
// them (CertPoolFromPEM and NewNonce fail on configuration and randomness,
// not evidence, and do not).
var (
	// ErrUntrustedEK: the EK certificate does not chain to a trusted root, is
	// outside its validity period, or carries a critical extension this
	// package does not understand.
	ErrUntrustedEK = errors.New("attest: EK certificate not trusted")
	// ErrBadEvidence: the evidence is malformed: it does not parse strictly, is
	// too large, or is not the kind of structure asked for.
	ErrBadEvidence = errors.New("attest: malformed evidence")
	// ErrUnsupportedAlgorithm: a key, hash or scheme outside the approved set
	// (RSA >= 2048, ECC P-256/P-384, SHA-256/384; SHA-1 only where
	// Options.AllowSHA1 says so).
	ErrUnsupportedAlgorithm = errors.New("attest: algorithm not approved")
	// ErrSignature: the signature does not verify under the given key.
	ErrSignature = errors.New("attest: signature does not verify")
	// ErrNonce: the attestation's extraData is not the expected nonce, so the
	// evidence is not fresh (a replay, or an answer to another challenge).
	ErrNonce = errors.New("attest: nonce mismatch")
	// ErrNameMismatch: the certified object is not the one whose public area
	// the caller holds.
	ErrNameMismatch = errors.New("attest: certified name mismatch")
	// ErrPCRMismatch: PCR values do not match the quote's digest, or the
	// replayed event log does not match the quoted PCR values.
	ErrPCRMismatch = errors.New("attest: PCR mismatch")
	// ErrKeyAttributes: the signing key is not an attestation key: it lacks one
	// of restricted, sign, fixedTPM, fixedParent, sensitiveDataOrigin, or it
	// can decrypt.
	ErrKeyAttributes = errors.New("attest: signing key attributes")
)

// Options carries the trust anchors, the clock and the randomness of a
// verification. The zero value is the strict choice: no EK root is trusted,
// SHA-1 is refused, the clock is time.Now and randomness is crypto/rand.
type Options struct {
	// Now returns the time at which certificates must be valid; nil means
	// time.Now. Tests inject a fixed clock.
	Now func() time.Time
	// Rand is the source of nonces; nil means crypto/rand.Reader.
	Rand io.Reader
	// Roots are the trusted EK manufacturer roots. nil trusts nothing: the
	// system roots are for TLS and never vouch for a TPM.
	Roots *x509.CertPool
	// Intermediates are untrusted certificates that may complete an EK chain
	// (a manufacturer's issuing CAs).
	Intermediates *x509.CertPool
	// AllowSHA1 lets event-log replay use the SHA-1 bank and quotes select
	// SHA-1 PCRs. Signatures and names never use SHA-1, whatever this says.
	AllowSHA1 bool
	// RequirePCRs are the PCRs, bank by bank, that a quote must cover for
	// VerifyQuote to accept it. The device chooses what it quotes; a
	// verifier that relies on PCR 7 requires PCR 7, or a quote of PCR 23
	// alone would vouch for a log that claims anything about PCR 7.
	RequirePCRs map[tpm2.TPMIAlgHash][]int
}

func (o Options) now() time.Time {
	if o.Now == nil {
		return time.Now()
	}
	return o.Now()
}

func (o Options) rand() io.Reader {
	if o.Rand == nil {
		return rand.Reader
	}
	return o.Rand
}

// NonceSize is the size of the nonces NewNonce makes; MinNonceSize is the
// shortest nonce a verifier accepts, so that a guessed or reused challenge
// cannot make old evidence look fresh. The TPM takes at most MaxNonceSize
// bytes (TPM2B_DATA is sized for the largest digest).
const (
	NonceSize    = 32
	MinNonceSize = 16
	MaxNonceSize = 64
)

// NewNonce returns a fresh challenge for a quote or certification, read from
// opts.Rand.
func NewNonce(opts Options) ([]byte, error) {
	n := make([]byte, NonceSize)
	if _, err := io.ReadFull(opts.rand(), n); err != nil {
		return nil, fmt.Errorf("attest: nonce: %w", err)
	}
	return n, nil
}

// PCRValues holds PCR values by bank, then by PCR index.
type PCRValues map[tpm2.TPMIAlgHash]map[int][]byte

// numPCRs is the number of PCRs of a PC Client TPM (0..23); the PCR
// selections and event logs this package accepts name no others.
const numPCRs = 24

// bankHash maps an approved PCR bank or signature hash to its crypto.Hash.
// SHA-1 passes only when allowSHA1 is set (event-log and PCR banks, never
// signatures or names).
func bankHash(alg tpm2.TPMIAlgHash, allowSHA1 bool) (crypto.Hash, error) {
	if alg == tpm2.TPMAlgSHA1 && allowSHA1 {
		return crypto.SHA1, nil
	}
	h, err := catalog.HashByAlg(alg)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrUnsupportedAlgorithm, err)
	}
	return h.Crypto, nil
}
