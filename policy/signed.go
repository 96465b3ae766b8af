package policy

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"strconv"
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/catalog"
)

// ApprovedPolicyAlg is the hash algorithm of approved-policy digests, and so
// of the policy sessions that use signed policies: provd's keys have nameAlg
// SHA-256, and a session's digest must have the authPolicy's size.
const ApprovedPolicyAlg = tpm2.TPMAlgSHA256

// SignedPolicyFormat is the "format" value of the policy.json this package
// writes and the only one it reads.
const SignedPolicyFormat = 1

// NVCounterRef names the NV counter index whose value revokes old signed
// policies. Provisioning creates the counter; the handle is where it lives
// and the name is what policy digests bind to. The signature does not cover
// the handle, and need not: an NV name hashes the index's TPMS_NV_PUBLIC,
// which contains its handle, so a policy.json edited to point at another
// index fails in the TPM (PolicyNV extends the name of the index it read).
type NVCounterRef struct {
	Handle tpm2.TPMHandle
	Name   []byte
}

// Validate checks that Handle is an NV index handle and Name a well-formed
// SHA-256/SHA-384 TPM name.
func (r NVCounterRef) Validate() error {
	if err := checkNVHandle(r.Handle); err != nil {
		return fmt.Errorf("policy: NV counter: %w", err)
	}
	if err := checkName(r.Name, false); err != nil {
		return fmt.Errorf("policy: NV counter name: %w", err)
	}
	return nil
}

// ApprovedPolicy is the policy a signer approves for version: the PCRs must
// hold values, and the NV counter must be <= version (TPM_EO_UNSIGNED_LE on
// its 8-byte big-endian value). Incrementing the counter to version+1 thus
// revokes every signed policy up to version inside the TPM itself, with no
// list to keep on the device.
//
// The counter must have been incremented at least once (PolicyNV on an
// unwritten index fails), and TPM counters start at the highest value any
// counter ever had, so versions must be chosen at or above the counter's
// value after provisioning.
func ApprovedPolicy(values PCRValues, version uint64, counter NVCounterRef) Policy {
	return Policy{
		PCR{Values: values},
		NV{
			IndexName: counter.Name,
			Index:     counter.Handle,
			OperandB:  binary.BigEndian.AppendUint64(nil, version),
			Offset:    0,
			Op:        tpm2.TPMEOUnsignedLE,
		},
	}
}

// SignedPolicy is an approved policy for one version, signed for
// TPM2_PolicyAuthorize.
type SignedPolicy struct {
	Version   uint64
	PolicyRef []byte
	Values    PCRValues
	Counter   NVCounterRef
	// ApprovedPolicy is ApprovedPolicy(Values, Version, Counter).Digest(SHA-256).
	ApprovedPolicy []byte
	// Signer is the public key that signed; SignerName is its TPM name.
	Signer     crypto.PublicKey
	SignerName []byte
	// Signature is over aHash = SHA-256(ApprovedPolicy || PolicyRef), in the
	// form TPM2_VerifySignature takes.
	Signature tpm2.TPMTSignature
}

// Policy returns the approved policy expression this signature covers.
func (sp *SignedPolicy) Policy() Policy {
	return ApprovedPolicy(sp.Values, sp.Version, sp.Counter)
}

// aHash is the digest the TPM verifies the signature over (Part 3, 23.16),
// with the signer's nameAlg.
func aHash(approvedPolicy, policyRef []byte) []byte {
	h := sha256.New()
	h.Write(approvedPolicy)
	h.Write(policyRef)
	return h.Sum(nil)
}

// SignPolicy signs the approved policy for version. The signer must be an
// approved policy signer (see SignerPublic); its signature is checked before
// returning, so a faulty signer (a token, a KMS) is caught here and not by
// the TPM in the field.
//
// The signed digest is always a SHA-256 aHash, also for P-384 keys (whose
// TPMT_SIGNATURE still names SHA-384, the key's scheme hash): the signer is
// called with crypto.SHA256 and a 32-byte digest.
func SignPolicy(signer crypto.Signer, values PCRValues, version uint64, policyRef []byte, counter NVCounterRef) (*SignedPolicy, error) {
	if err := counter.Validate(); err != nil {
		return nil, err
	}
	sp := &SignedPolicy{
		Version:   version,
		PolicyRef: bytes.Clone(policyRef),
		Values:    values.clone(),
		Counter:   NVCounterRef{Handle: counter.Handle, Name: bytes.Clone(counter.Name)},
	}
	d, err := sp.Policy().Digest(ApprovedPolicyAlg)
	if err != nil {
		return nil, err
	}
	ap, err := ApproveDigest(signer, d, policyRef)
	if err != nil {
		return nil, err
	}
	sp.ApprovedPolicy, sp.Signer, sp.SignerName, sp.Signature = ap.ApprovedPolicy, ap.Signer, ap.SignerName, ap.Signature
	pub := ap.Signer
	if err := sp.Verify(pub); err != nil {
		return nil, fmt.Errorf("policy: signer produced a signature that does not verify: %w", err)
	}
	return sp, nil
}

// signAHash signs an aHash (SHA-256) with signer, in the TPMT_SIGNATURE form
// TPM2_VerifySignature takes for the signer's scheme sch.
func signAHash(signer crypto.Signer, sch signerScheme, digest []byte) (tpm2.TPMTSignature, error) {
	switch sch.sigAlg {
	case tpm2.TPMAlgECDSA:
		der, err := signer.Sign(rand.Reader, digest, crypto.SHA256)
		if err != nil {
			return tpm2.TPMTSignature{}, fmt.Errorf("policy: sign: %w", err)
		}
		var rs struct{ R, S *big.Int }
		rest, err := asn1.Unmarshal(der, &rs)
		if err != nil || len(rest) != 0 || rs.R == nil || rs.S == nil || rs.R.Sign() <= 0 || rs.S.Sign() <= 0 ||
			rs.R.BitLen() > sch.coordSize*8 || rs.S.BitLen() > sch.coordSize*8 {
			return tpm2.TPMTSignature{}, fmt.Errorf("policy: sign: signer returned a malformed ECDSA signature")
		}
		return ecdsaSignature(sch.hash, rs.R.FillBytes(make([]byte, sch.coordSize)), rs.S.FillBytes(make([]byte, sch.coordSize))), nil
	case tpm2.TPMAlgRSAPSS:
		sig, err := signer.Sign(rand.Reader, digest, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
		if err != nil {
			return tpm2.TPMTSignature{}, fmt.Errorf("policy: sign: %w", err)
		}
		return rsapssSignature(sch.hash, sig), nil
	}
	return tpm2.TPMTSignature{}, fmt.Errorf("policy: signature algorithm 0x%04x: %w", uint16(sch.sigAlg), catalog.ErrNotApproved)
}

func ecdsaSignature(hash tpm2.TPMIAlgHash, r, s []byte) tpm2.TPMTSignature {
	return tpm2.TPMTSignature{
		SigAlg: tpm2.TPMAlgECDSA,
		Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
			Hash:       hash,
			SignatureR: tpm2.TPM2BECCParameter{Buffer: r},
			SignatureS: tpm2.TPM2BECCParameter{Buffer: s},
		}),
	}
}

func rsapssSignature(hash tpm2.TPMIAlgHash, sig []byte) tpm2.TPMTSignature {
	return tpm2.TPMTSignature{
		SigAlg: tpm2.TPMAlgRSAPSS,
		Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgRSAPSS, &tpm2.TPMSSignatureRSA{
			Hash: hash,
			Sig:  tpm2.TPM2BPublicKeyRSA{Buffer: sig},
		}),
	}
}

// Verify checks, offline, everything the TPM will check and more: that pub is
// the signer (by TPM name), that ApprovedPolicy is the digest of the policy
// the other fields describe, and that the signature over aHash is valid.
// pub must come from the caller's trust configuration; verifying against the
// key embedded in the file only proves the file is self-consistent.
func (sp *SignedPolicy) Verify(pub crypto.PublicKey) error {
	name, err := SignerName(pub)
	if err != nil {
		return err
	}
	if !bytes.Equal(name, sp.SignerName) {
		return fmt.Errorf("policy: signed policy is from signer %x, not %x", sp.SignerName, name)
	}
	if len(sp.PolicyRef) > maxPolicyRef {
		return fmt.Errorf("policy: policyRef is %d bytes, at most %d", len(sp.PolicyRef), maxPolicyRef)
	}
	if err := sp.Counter.Validate(); err != nil {
		return err
	}
	want, err := sp.Policy().Digest(ApprovedPolicyAlg)
	if err != nil {
		return err
	}
	if !bytes.Equal(want, sp.ApprovedPolicy) {
		return fmt.Errorf("policy: approved policy digest %x does not match its contents (%x)", sp.ApprovedPolicy, want)
	}
	return verifyTPMSignature(pub, aHash(sp.ApprovedPolicy, sp.PolicyRef), sp.Signature)
}

// verifyTPMSignature checks a TPMT_SIGNATURE over digest the way
// TPM2_VerifySignature would, with the scheme and hash the key implies.
func verifyTPMSignature(pub crypto.PublicKey, digest []byte, sig tpm2.TPMTSignature) error {
	sch, err := schemeFor(pub)
	if err != nil {
		return err
	}
	if sig.SigAlg != sch.sigAlg {
		return fmt.Errorf("policy: signature algorithm 0x%04x, key needs 0x%04x", uint16(sig.SigAlg), uint16(sch.sigAlg))
	}
	switch sch.sigAlg {
	case tpm2.TPMAlgECDSA:
		e, err := sig.Signature.ECDSA()
		if err != nil {
			return fmt.Errorf("policy: signature: %w", err)
		}
		if e.Hash != sch.hash {
			return fmt.Errorf("policy: signature hash 0x%04x, key scheme uses 0x%04x", uint16(e.Hash), uint16(sch.hash))
		}
		r, s := e.SignatureR.Buffer, e.SignatureS.Buffer
		if len(r) == 0 || len(s) == 0 || len(r) > sch.coordSize || len(s) > sch.coordSize {
			return fmt.Errorf("policy: ECDSA signature has malformed r or s")
		}
		if !ecdsa.Verify(pub.(*ecdsa.PublicKey), digest, new(big.Int).SetBytes(r), new(big.Int).SetBytes(s)) {
			return fmt.Errorf("policy: ECDSA signature does not verify")
		}
	case tpm2.TPMAlgRSAPSS:
		p, err := sig.Signature.RSAPSS()
		if err != nil {
			return fmt.Errorf("policy: signature: %w", err)
		}
		if p.Hash != sch.hash {
			return fmt.Errorf("policy: signature hash 0x%04x, key scheme uses 0x%04x", uint16(p.Hash), uint16(sch.hash))
		}
		k := pub.(*rsa.PublicKey)
		if len(p.Sig.Buffer) != k.Size() {
			return fmt.Errorf("policy: RSA-PSS signature is %d bytes, want %d", len(p.Sig.Buffer), k.Size())
		}
		if err := rsa.VerifyPSS(k, crypto.SHA256, digest, p.Sig.Buffer, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}); err != nil {
			return fmt.Errorf("policy: RSA-PSS signature does not verify: %w", err)
		}
	}
	return nil
}

// The file form (policy.json); see docs/policy.md.
type signedPolicyJSON struct {
	Format         int            `json:"format"`
	Version        *uint64        `json:"version"`
	PolicyRef      *string        `json:"policy_ref"`
	PCRValues      *pcrValuesJSON `json:"pcr_values"`
	Counter        *counterJSON   `json:"counter"`
	ApprovedPolicy string         `json:"approved_policy"`
	Signer         *signerJSON    `json:"signer"`
	Signature      *signatureJSON `json:"signature"`
}

type counterJSON struct {
	Handle string `json:"handle"`
	Name   string `json:"name"`
}

type signerJSON struct {
	PublicKey string `json:"public_key"`
	Name      string `json:"name"`
}

type signatureJSON struct {
	Alg  string `json:"alg"`
	Hash string `json:"hash"`
	R    string `json:"r,omitempty"`
	S    string `json:"s,omitempty"`
	Sig  string `json:"sig,omitempty"`
}

// MarshalJSON writes the policy.json form that ParseSignedPolicy reads.
func (sp *SignedPolicy) MarshalJSON() ([]byte, error) {
	vals, err := sp.Values.toJSON()
	if err != nil {
		return nil, err
	}
	pemKey, err := MarshalPublicKeyPEM(sp.Signer)
	if err != nil {
		return nil, err
	}
	sig, err := signatureToJSON(sp.Signature)
	if err != nil {
		return nil, err
	}
	ref := hex.EncodeToString(sp.PolicyRef)
	version := sp.Version
	return json.Marshal(signedPolicyJSON{
		Format:         SignedPolicyFormat,
		Version:        &version,
		PolicyRef:      &ref,
		PCRValues:      &vals,
		Counter:        &counterJSON{Handle: fmt.Sprintf("0x%08x", uint32(sp.Counter.Handle)), Name: hex.EncodeToString(sp.Counter.Name)},
		ApprovedPolicy: hex.EncodeToString(sp.ApprovedPolicy),
		Signer:         &signerJSON{PublicKey: string(pemKey), Name: hex.EncodeToString(sp.SignerName)},
		Signature:      sig,
	})
}

// signatureToJSON is the file form of a TPMT_SIGNATURE (signatureJSON.toTPM
// reads it back).
func signatureToJSON(s tpm2.TPMTSignature) (*signatureJSON, error) {
	switch s.SigAlg {
	case tpm2.TPMAlgECDSA:
		e, err := s.Signature.ECDSA()
		if err != nil {
			return nil, fmt.Errorf("policy: signature: %w", err)
		}
		return &signatureJSON{Alg: "ecdsa", Hash: catalog.HashName(e.Hash), R: hex.EncodeToString(e.SignatureR.Buffer), S: hex.EncodeToString(e.SignatureS.Buffer)}, nil
	case tpm2.TPMAlgRSAPSS:
		p, err := s.Signature.RSAPSS()
		if err != nil {
			return nil, fmt.Errorf("policy: signature: %w", err)
		}
		return &signatureJSON{Alg: "rsapss", Hash: catalog.HashName(p.Hash), Sig: hex.EncodeToString(p.Sig.Buffer)}, nil
	}
	return nil, fmt.Errorf("policy: signature algorithm 0x%04x: %w", uint16(s.SigAlg), catalog.ErrNotApproved)
}

// ParseSignedPolicy parses policy.json strictly: only format 1, no unknown or
// duplicate fields, every field present, the signer's name matching its key,
// the approved policy digest recomputed from the values, version and counter,
// and the signature verified against the embedded key. That proves the file
// is intact, not that its signer is trusted: an Authorize step (or Verify
// with a trusted key) decides that.
func ParseSignedPolicy(data []byte) (*SignedPolicy, error) {
	var raw signedPolicyJSON
	if err := decodeStrict(data, &raw); err != nil {
		return nil, fmt.Errorf("policy: signed policy: %w", err)
	}
	if raw.Format != SignedPolicyFormat {
		return nil, fmt.Errorf("policy: signed policy format %d, this provd reads format %d", raw.Format, SignedPolicyFormat)
	}
	switch {
	case raw.Version == nil:
		return nil, fmt.Errorf("policy: signed policy: missing version")
	case raw.PolicyRef == nil:
		return nil, fmt.Errorf("policy: signed policy: missing policy_ref")
	case raw.PCRValues == nil:
		return nil, fmt.Errorf("policy: signed policy: missing pcr_values")
	case raw.Counter == nil:
		return nil, fmt.Errorf("policy: signed policy: missing counter")
	case raw.Signer == nil:
		return nil, fmt.Errorf("policy: signed policy: missing signer")
	case raw.Signature == nil:
		return nil, fmt.Errorf("policy: signed policy: missing signature")
	}
	sp := &SignedPolicy{Version: *raw.Version}
	var err error
	if sp.PolicyRef, err = hex.DecodeString(*raw.PolicyRef); err != nil {
		return nil, fmt.Errorf("policy: signed policy: policy_ref: %w", err)
	}
	if sp.Values, err = raw.PCRValues.values(); err != nil {
		return nil, err
	}
	if sp.Counter.Handle, err = parseHandle(raw.Counter.Handle); err != nil {
		return nil, fmt.Errorf("policy: signed policy: counter handle: %w", err)
	}
	if sp.Counter.Name, err = decodeHex(raw.Counter.Name); err != nil {
		return nil, fmt.Errorf("policy: signed policy: counter name: %w", err)
	}
	if sp.ApprovedPolicy, err = decodeHex(raw.ApprovedPolicy); err != nil {
		return nil, fmt.Errorf("policy: signed policy: approved_policy: %w", err)
	}
	if sp.Signer, err = ParsePublicKeyPEM([]byte(raw.Signer.PublicKey)); err != nil {
		return nil, fmt.Errorf("policy: signed policy: signer: %w", err)
	}
	if sp.SignerName, err = decodeHex(raw.Signer.Name); err != nil {
		return nil, fmt.Errorf("policy: signed policy: signer name: %w", err)
	}
	if sp.Signature, err = raw.Signature.toTPM(); err != nil {
		return nil, fmt.Errorf("policy: signed policy: signature: %w", err)
	}
	if err := sp.Verify(sp.Signer); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	return sp, nil
}

func (s signatureJSON) toTPM() (tpm2.TPMTSignature, error) {
	h, err := catalog.HashByName(s.Hash)
	if err != nil {
		return tpm2.TPMTSignature{}, fmt.Errorf("hash %q: %w", s.Hash, catalog.ErrNotApproved)
	}
	hash := h.Alg
	switch s.Alg {
	case "ecdsa":
		if s.Sig != "" {
			return tpm2.TPMTSignature{}, fmt.Errorf("ecdsa signature with a sig field")
		}
		r, err := decodeHex(s.R)
		if err != nil {
			return tpm2.TPMTSignature{}, fmt.Errorf("r: %w", err)
		}
		ss, err := decodeHex(s.S)
		if err != nil {
			return tpm2.TPMTSignature{}, fmt.Errorf("s: %w", err)
		}
		return ecdsaSignature(hash, r, ss), nil
	case "rsapss":
		if s.R != "" || s.S != "" {
			return tpm2.TPMTSignature{}, fmt.Errorf("rsapss signature with r or s fields")
		}
		sig, err := decodeHex(s.Sig)
		if err != nil {
			return tpm2.TPMTSignature{}, fmt.Errorf("sig: %w", err)
		}
		return rsapssSignature(hash, sig), nil
	}
	return tpm2.TPMTSignature{}, fmt.Errorf("algorithm %q: %w", s.Alg, catalog.ErrNotApproved)
}

// parseHandle reads a handle written as "0x" and exactly 8 hex digits.
func parseHandle(s string) (tpm2.TPMHandle, error) {
	hx, ok := strings.CutPrefix(s, "0x")
	if !ok || len(hx) != 8 {
		return 0, fmt.Errorf("%q: want 0x followed by 8 hex digits", s)
	}
	v, err := strconv.ParseUint(hx, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("%q: want 0x followed by 8 hex digits", s)
	}
	return tpm2.TPMHandle(v), nil
}
