package policy

import (
	"bytes"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// Recorder is a software Session: it records the commands sent and keeps the
// policy digest a TPM trial session would, using go-tpm's calculator for the
// extends. Beyond a trial session it checks what a real session checks
// without PCRs or NV: PolicyOR needs the current digest in its list, and
// PolicyAuthorize needs a valid signature and the approved policy as the
// current digest. Tests use it to show that Apply and Digest agree.
type Recorder struct {
	alg  tpm2.TPMIAlgHash
	calc *tpm2.PolicyCalculator
	// Calls are the command codes sent, in order.
	Calls []tpm2.TPMCC
}

var (
	_ Session        = (*Recorder)(nil)
	_ SessionHashAlg = (*Recorder)(nil)
)

// NewRecorder returns a Recorder for a session with hash algorithm alg
// (SHA-256 or SHA-384).
func NewRecorder(alg tpm2.TPMIAlgHash) (*Recorder, error) {
	if _, err := sessionHash(alg); err != nil {
		return nil, err
	}
	c, err := tpm2.NewPolicyCalculator(alg)
	if err != nil {
		return nil, err
	}
	return &Recorder{alg: alg, calc: c}, nil
}

// HashAlg implements SessionHashAlg.
func (r *Recorder) HashAlg() tpm2.TPMIAlgHash { return r.alg }

// Digest returns the current policy digest (TPM2_PolicyGetDigest).
func (r *Recorder) Digest() []byte { return r.calc.Hash().Digest }

func (r *Recorder) size() int {
	h, _ := sessionHash(r.alg)
	return h.Size()
}

// PolicyPCR implements Session. It cannot read PCRs, so it checks only the
// shape of its input.
func (r *Recorder) PolicyPCR(sel tpm2.TPMLPCRSelection, pcrDigest []byte) error {
	r.Calls = append(r.Calls, tpm2.TPMCCPolicyPCR)
	if len(pcrDigest) != r.size() {
		return fmt.Errorf("recorder: PolicyPCR digest is %d bytes, session hash needs %d", len(pcrDigest), r.size())
	}
	return tpm2.PolicyPCR{PcrDigest: tpm2.TPM2BDigest{Buffer: pcrDigest}, Pcrs: sel}.Update(r.calc)
}

// PolicyOR implements Session.
func (r *Recorder) PolicyOR(digests [][]byte) error {
	r.Calls = append(r.Calls, tpm2.TPMCCPolicyOR)
	if len(digests) < 2 || len(digests) > 8 {
		return fmt.Errorf("recorder: PolicyOR with %d digests", len(digests))
	}
	cur := r.Digest()
	found := false
	list := make([]tpm2.TPM2BDigest, len(digests))
	for i, d := range digests {
		found = found || bytes.Equal(d, cur)
		list[i] = tpm2.TPM2BDigest{Buffer: d}
	}
	if !found {
		return fmt.Errorf("recorder: PolicyOR: current digest %x not in the list (TPM_RC_VALUE)", cur)
	}
	return tpm2.PolicyOr{PHashList: tpm2.TPMLDigest{Digests: list}}.Update(r.calc)
}

// PolicyCommandCode implements Session.
func (r *Recorder) PolicyCommandCode(cc tpm2.TPMCC) error {
	r.Calls = append(r.Calls, tpm2.TPMCCPolicyCommandCode)
	return tpm2.PolicyCommandCode{Code: cc}.Update(r.calc)
}

// PolicyDuplicationSelect implements Session.
func (r *Recorder) PolicyDuplicationSelect(objectName, newParentName []byte, includeObject bool) error {
	r.Calls = append(r.Calls, tpm2.TPMCCPolicyDuplicationSelect)
	return tpm2.PolicyDuplicationSelect{
		ObjectName:    tpm2.TPM2BName{Buffer: objectName},
		NewParentName: tpm2.TPM2BName{Buffer: newParentName},
		IncludeObject: includeObject,
	}.Update(r.calc)
}

// PolicyAuthValue implements Session.
func (r *Recorder) PolicyAuthValue() error {
	r.Calls = append(r.Calls, tpm2.TPMCCPolicyAuthValue)
	return r.calc.Update(tpm2.TPMCCPolicyAuthValue)
}

// PolicyTemplate implements Session.
func (r *Recorder) PolicyTemplate(templateHash []byte) error {
	r.Calls = append(r.Calls, tpm2.TPMCCPolicyTemplate)
	return r.calc.Update(tpm2.TPMCCPolicyTemplate, templateHash)
}

// PolicyNV implements Session. It cannot read NV, so the comparison is
// assumed to hold.
func (r *Recorder) PolicyNV(index tpm2.TPMHandle, indexName []byte, operandB []byte, offset uint16, op tpm2.TPMEO) error {
	r.Calls = append(r.Calls, tpm2.TPMCCPolicyNV)
	return tpm2.PolicyNV{
		NVIndex:   tpm2.NamedHandle{Handle: index, Name: tpm2.TPM2BName{Buffer: indexName}},
		OperandB:  tpm2.TPM2BOperand{Buffer: operandB},
		Offset:    offset,
		Operation: op,
	}.Update(r.calc)
}

// PolicyAuthorize implements Session: it verifies sig over
// aHash = H_nameAlg(approvedPolicy || policyRef) with the key in signer (as
// TPM2_VerifySignature would), requires the current digest to equal
// approvedPolicy (as TPM2_PolicyAuthorize does), then resets and extends.
func (r *Recorder) PolicyAuthorize(signer tpm2.TPMTPublic, approvedPolicy, policyRef []byte, sig tpm2.TPMTSignature) error {
	r.Calls = append(r.Calls, tpm2.TPMCCPolicyAuthorize)
	if signer.NameAlg != signerNameAlg {
		return fmt.Errorf("recorder: signer nameAlg 0x%04x", uint16(signer.NameAlg))
	}
	pub, err := tpm2.Pub(signer)
	if err != nil {
		return fmt.Errorf("recorder: signer: %w", err)
	}
	name, err := tpm2.ObjectName(&signer)
	if err != nil {
		return fmt.Errorf("recorder: signer name: %w", err)
	}
	if err := verifyTPMSignature(pub, aHash(approvedPolicy, policyRef), sig); err != nil {
		return fmt.Errorf("recorder: VerifySignature: %w", err)
	}
	if cur := r.Digest(); !bytes.Equal(cur, approvedPolicy) {
		return fmt.Errorf("recorder: PolicyAuthorize: current digest %x is not the approved policy %x (TPM_RC_VALUE)", cur, approvedPolicy)
	}
	r.calc.Reset()
	return tpm2.PolicyAuthorize{
		KeySign:   *name,
		PolicyRef: tpm2.TPM2BDigest{Buffer: policyRef},
	}.Update(r.calc)
}
