package policy

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// ApprovalFormat is the "format" value of the approval files this package
// writes and the only one it reads.
const ApprovalFormat = 1

// Approval is a signer's approval of one policy digest for
// TPM2_PolicyAuthorize, for what is not a PK policy (those are SignedPolicy,
// which carry their PCR values and version): a crypto officer approving one
// derivation recipe, or one duplication. The file does not say what the
// digest means; whoever uses an approval rebuilds the approved expression
// from what it asks for, and Approved refuses a digest that differs, so an
// approval for one thing cannot be passed off as one for another.
type Approval struct {
	ApprovedPolicy []byte
	PolicyRef      []byte
	Signer         crypto.PublicKey
	SignerName     []byte
	// Signature is over aHash = SHA-256(ApprovedPolicy || PolicyRef).
	Signature tpm2.TPMTSignature
}

// Approve signs approved (its SHA-256 digest) with policyRef ref. The signer
// must be an approved policy signer (SignerPublic); the signature is checked
// before returning.
func Approve(signer crypto.Signer, approved Policy, ref []byte) (*Approval, error) {
	d, err := approved.Digest(ApprovedPolicyAlg)
	if err != nil {
		return nil, err
	}
	return ApproveDigest(signer, d, ref)
}

// ApproveDigest is Approve for a policy known by its SHA-256 digest only.
func ApproveDigest(signer crypto.Signer, approved, ref []byte) (*Approval, error) {
	if len(approved) != 32 {
		return nil, fmt.Errorf("policy: approved policy is %d bytes, want a SHA-256 digest", len(approved))
	}
	if signer == nil {
		return nil, fmt.Errorf("policy: nil signer")
	}
	pub := signer.Public()
	sch, err := schemeFor(pub)
	if err != nil {
		return nil, err
	}
	name, err := SignerName(pub)
	if err != nil {
		return nil, err
	}
	if len(ref) > maxPolicyRef {
		return nil, fmt.Errorf("policy: policyRef is %d bytes, at most %d", len(ref), maxPolicyRef)
	}
	ap := &Approval{ApprovedPolicy: bytes.Clone(approved), PolicyRef: bytes.Clone(ref), Signer: pub, SignerName: name}
	if ap.Signature, err = signAHash(signer, sch, aHash(ap.ApprovedPolicy, ap.PolicyRef)); err != nil {
		return nil, err
	}
	if err := ap.Verify(pub); err != nil {
		return nil, fmt.Errorf("policy: signer produced a signature that does not verify: %w", err)
	}
	return ap, nil
}

// Verify checks, offline, that pub (from the caller's trust configuration,
// never from the file) made the approval.
func (ap *Approval) Verify(pub crypto.PublicKey) error {
	name, err := SignerName(pub)
	if err != nil {
		return err
	}
	if !bytes.Equal(name, ap.SignerName) {
		return fmt.Errorf("policy: approval is from signer %x, not %x", ap.SignerName, name)
	}
	if len(ap.PolicyRef) > maxPolicyRef {
		return fmt.Errorf("policy: policyRef is %d bytes, at most %d", len(ap.PolicyRef), maxPolicyRef)
	}
	if len(ap.ApprovedPolicy) != 32 {
		return fmt.Errorf("policy: approved policy is %d bytes, want a SHA-256 digest", len(ap.ApprovedPolicy))
	}
	return verifyTPMSignature(pub, aHash(ap.ApprovedPolicy, ap.PolicyRef), ap.Signature)
}

// Approved pairs an approval with the expression it approves, for
// ApplyOptions.Approved.
type Approved struct {
	Policy   Policy
	Approval *Approval
}

// check verifies that a.Policy is what a.Approval signed, by signer.
func (a Approved) check(signer crypto.PublicKey) error {
	if a.Approval == nil {
		return fmt.Errorf("policy: no approval")
	}
	if err := a.Approval.Verify(signer); err != nil {
		return err
	}
	d, err := a.Policy.Digest(ApprovedPolicyAlg)
	if err != nil {
		return err
	}
	if !bytes.Equal(d, a.Approval.ApprovedPolicy) {
		return fmt.Errorf("policy: the approval is for policy %x, not for this one (%x)", a.Approval.ApprovedPolicy, d)
	}
	return nil
}

// The file form; see docs/formats.md.
type approvalJSON struct {
	Format         int            `json:"format"`
	ApprovedPolicy string         `json:"approved_policy"`
	PolicyRef      *string        `json:"policy_ref"`
	Signer         *signerJSON    `json:"signer"`
	Signature      *signatureJSON `json:"signature"`
}

// MarshalJSON writes the form UnmarshalJSON reads.
func (ap *Approval) MarshalJSON() ([]byte, error) {
	pemKey, err := MarshalPublicKeyPEM(ap.Signer)
	if err != nil {
		return nil, err
	}
	sig, err := signatureToJSON(ap.Signature)
	if err != nil {
		return nil, err
	}
	ref := hex.EncodeToString(ap.PolicyRef)
	return json.Marshal(approvalJSON{
		Format:         ApprovalFormat,
		ApprovedPolicy: hex.EncodeToString(ap.ApprovedPolicy),
		PolicyRef:      &ref,
		Signer:         &signerJSON{PublicKey: string(pemKey), Name: hex.EncodeToString(ap.SignerName)},
		Signature:      sig,
	})
}

// UnmarshalJSON parses an approval strictly (format 1, every field, no
// unknown or duplicate ones) and verifies it against its embedded key. That
// proves the file intact, not its signer trusted: Authorize decides that.
func (ap *Approval) UnmarshalJSON(data []byte) error {
	var raw approvalJSON
	if err := decodeStrict(data, &raw); err != nil {
		return fmt.Errorf("policy: approval: %w", err)
	}
	if raw.Format != ApprovalFormat {
		return fmt.Errorf("policy: approval format %d, this provd reads format %d", raw.Format, ApprovalFormat)
	}
	if raw.PolicyRef == nil || raw.Signer == nil || raw.Signature == nil {
		return fmt.Errorf("policy: approval: policy_ref, signer and signature are required")
	}
	var out Approval
	var err error
	if out.ApprovedPolicy, err = decodeHex(raw.ApprovedPolicy); err != nil {
		return fmt.Errorf("policy: approval: approved_policy: %w", err)
	}
	if out.PolicyRef, err = hex.DecodeString(*raw.PolicyRef); err != nil {
		return fmt.Errorf("policy: approval: policy_ref: %w", err)
	}
	if out.Signer, err = ParsePublicKeyPEM([]byte(raw.Signer.PublicKey)); err != nil {
		return fmt.Errorf("policy: approval: signer: %w", err)
	}
	if out.SignerName, err = decodeHex(raw.Signer.Name); err != nil {
		return fmt.Errorf("policy: approval: signer name: %w", err)
	}
	if out.Signature, err = raw.Signature.toTPM(); err != nil {
		return fmt.Errorf("policy: approval: signature: %w", err)
	}
	if err := out.Verify(out.Signer); err != nil {
		return fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	*ap = out
	return nil
}
