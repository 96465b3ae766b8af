package policy

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// Policy is an ordered list of policy steps: the TPM's policy digest is the
// hash chain of the steps in this order, and Apply sends them in this order.
//
// Or and Authorize may only be the first step of a Policy (or of an Or
// branch). Both replace the session digest with one derived from a list of
// digests or a signed approval that were computed from an empty session, so a
// step before them could never be satisfied; write "A then Or(B, C)" as
// Or(A+B, A+C), which is what the TPM evaluates anyway.
type Policy []Step

// Step is one policy command. Update extends an offline policy calculator the
// way the TPM extends a session's policyDigest; the unexported execute sends
// the command to a Session. The interface is sealed: every step must be
// executable through Session and checked by Recorder, so new kinds are added
// here, next to their tests.
type Step interface {
	// Update extends c as the TPM would extend policyDigest when the step is
	// executed in a session whose hash algorithm is c's.
	Update(c *tpm2.PolicyCalculator) error

	execute(s Session, x *executor) error
}

// ErrNoSignedPolicy is returned by Apply when an Authorize step has no
// SignedPolicy for its signer and policyRef in ApplyOptions.Signed.
var ErrNoSignedPolicy = errors.New("policy: no signed policy for this signer and policyRef")

// ErrBadSignature: ParseSignedPolicy read a well-formed signed policy that
// does not verify (its signature, or the approved digest it signs, does not
// match its contents).
var ErrBadSignature = errors.New("policy: signed policy does not verify")

// ApplyOptions carry what executing a policy needs beyond the expression
// itself. The zero value suits a policy without Or or Authorize steps in a
// SHA-256 session.
type ApplyOptions struct {
	// HashAlg is the policy session's hash algorithm. Zero means: the
	// session's HashAlg() if it implements SessionHashAlg, else SHA-256.
	HashAlg tpm2.TPMIAlgHash

	// Branches chooses the branch of every Or step met while executing, in
	// execution order: the first Or executed takes branch Branches[0], an Or
	// nested inside that branch takes Branches[1], and so on. Apply fails if
	// an Or finds no index left, or if indices are left over, because either
	// means the caller and the policy disagree about its shape.
	Branches []int

	// Signed are the signed policies available to Authorize steps. An
	// Authorize step uses the one with its signer's name and policyRef; if
	// several match it uses the highest Version, the one most likely to pass
	// the NV counter check.
	Signed []*SignedPolicy

	// Approved are the other approvals available to Authorize steps (a crypto
	// officer's, for example), each with the expression it approves. An
	// Authorize step with no matching signed policy uses the one with its
	// signer's name and policyRef.
	Approved []Approved
}

// executor is the state of one Apply call.
type executor struct {
	alg      tpm2.TPMIAlgHash
	branches []int
	signed   []*SignedPolicy
	approved []Approved
}

func (x *executor) nextBranch(n int) (int, error) {
	if len(x.branches) == 0 {
		return 0, fmt.Errorf("policy: Or with %d branches: no branch chosen (ApplyOptions.Branches exhausted)", n)
	}
	b := x.branches[0]
	x.branches = x.branches[1:]
	if b < 0 || b >= n {
		return 0, fmt.Errorf("policy: Or branch %d chosen, but it has branches 0..%d", b, n-1)
	}
	return b, nil
}

// Digest returns the policy digest that a session with hash algorithm alg
// holds after the steps are executed: the value to put in an object's
// authPolicy (whose nameAlg must then be alg).
func (p Policy) Digest(alg tpm2.TPMIAlgHash) ([]byte, error) {
	if _, err := sessionHash(alg); err != nil {
		return nil, err
	}
	c, err := tpm2.NewPolicyCalculator(alg)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if err := p.Update(c); err != nil {
		return nil, err
	}
	return c.Hash().Digest, nil
}

// Update extends c with every step, after checking the policy's shape.
func (p Policy) Update(c *tpm2.PolicyCalculator) error {
	if err := p.checkShape(); err != nil {
		return err
	}
	for i, st := range p {
		if err := st.Update(c); err != nil {
			return fmt.Errorf("policy: step %d (%s): %w", i, stepName(st), err)
		}
	}
	return nil
}

func (p Policy) checkShape() error {
	if len(p) == 0 {
		// An empty policy has the all-zero digest, which any fresh session
		// has: as an Or branch or authPolicy it would authorize everyone.
		return fmt.Errorf("policy: empty policy")
	}
	for i, st := range p {
		switch st.(type) {
		case nil:
			return fmt.Errorf("policy: step %d is nil", i)
		case Or, *Or, Authorize, *Authorize:
			if i != 0 {
				return fmt.Errorf("policy: step %d (%s) must be the first step of its policy", i, stepName(st))
			}
		}
	}
	return nil
}

// Apply executes the policy on s, so that s's policyDigest ends equal to
// p.Digest(alg). The digest is computed first, so a malformed policy fails
// before any command is sent.
func (p Policy) Apply(s Session, opts ApplyOptions) error {
	alg := opts.HashAlg
	if sh, ok := s.(SessionHashAlg); ok {
		if alg == 0 {
			alg = sh.HashAlg()
		} else if alg != sh.HashAlg() {
			return fmt.Errorf("policy: ApplyOptions.HashAlg 0x%04x differs from the session's 0x%04x", uint16(alg), uint16(sh.HashAlg()))
		}
	}
	if alg == 0 {
		alg = tpm2.TPMAlgSHA256
	}
	if _, err := p.Digest(alg); err != nil {
		return err
	}
	x := &executor{alg: alg, branches: opts.Branches, signed: opts.Signed, approved: opts.Approved}
	if err := p.execute(s, x); err != nil {
		return err
	}
	if len(x.branches) != 0 {
		return fmt.Errorf("policy: %d Or branch choices left unused", len(x.branches))
	}
	return nil
}

func (p Policy) execute(s Session, x *executor) error {
	if err := p.checkShape(); err != nil {
		return err
	}
	for i, st := range p {
		if err := st.execute(s, x); err != nil {
			return fmt.Errorf("policy: step %d (%s): %w", i, stepName(st), err)
		}
	}
	return nil
}

func stepName(st Step) string {
	switch st.(type) {
	case PCR, *PCR:
		return "PolicyPCR"
	case Or, *Or:
		return "PolicyOR"
	case CommandCode, *CommandCode:
		return "PolicyCommandCode"
	case DuplicationSelect, *DuplicationSelect:
		return "PolicyDuplicationSelect"
	case NV, *NV:
		return "PolicyNV"
	case Authorize, *Authorize:
		return "PolicyAuthorize"
	case Template, *Template:
		return "PolicyTemplate"
	case AuthValue, *AuthValue:
		return "PolicyAuthValue"
	}
	return fmt.Sprintf("%T", st)
}

// calcAlg returns the hash algorithm of a calculator. go-tpm does not export
// it, but Hash() reports it.
func calcAlg(c *tpm2.PolicyCalculator) tpm2.TPMIAlgHash { return c.Hash().HashAlg }

// PCR is TPM2_PolicyPCR: the selected PCRs must hold Values when the policy is
// executed. The TPM checks the composite of the current values against the
// pcrDigest given, so a mismatch is reported at this step, not at use.
type PCR struct {
	Values PCRValues
}

// Update implements Step.
func (st PCR) Update(c *tpm2.PolicyCalculator) error {
	d, err := st.Values.CompositeDigest(calcAlg(c))
	if err != nil {
		return err
	}
	return tpm2.PolicyPCR{
		PcrDigest: tpm2.TPM2BDigest{Buffer: d},
		Pcrs:      st.Values.Selection(),
	}.Update(c)
}

func (st PCR) execute(s Session, x *executor) error {
	d, err := st.Values.CompositeDigest(x.alg)
	if err != nil {
		return err
	}
	return s.PolicyPCR(st.Values.Selection(), d)
}

// Or is TPM2_PolicyOR over 2 to 8 branches, each a complete Policy. Apply
// executes the branch chosen through ApplyOptions.Branches, then PolicyOR
// with the digests of all branches.
type Or struct {
	Branches []Policy
}

func (st Or) digests(alg tpm2.TPMIAlgHash) ([][]byte, error) {
	if n := len(st.Branches); n < 2 || n > 8 {
		// TPML_DIGEST in PolicyOR holds 2..8 digests (Part 3, 23.6).
		return nil, fmt.Errorf("%d branches, the TPM takes 2 to 8", n)
	}
	out := make([][]byte, len(st.Branches))
	for i, b := range st.Branches {
		d, err := b.Digest(alg)
		if err != nil {
			return nil, fmt.Errorf("branch %d: %w", i, err)
		}
		out[i] = d
	}
	return out, nil
}

// Update implements Step.
func (st Or) Update(c *tpm2.PolicyCalculator) error {
	ds, err := st.digests(calcAlg(c))
	if err != nil {
		return err
	}
	list := make([]tpm2.TPM2BDigest, len(ds))
	for i, d := range ds {
		list[i] = tpm2.TPM2BDigest{Buffer: d}
	}
	return tpm2.PolicyOr{PHashList: tpm2.TPMLDigest{Digests: list}}.Update(c)
}

func (st Or) execute(s Session, x *executor) error {
	ds, err := st.digests(x.alg)
	if err != nil {
		return err
	}
	b, err := x.nextBranch(len(st.Branches))
	if err != nil {
		return err
	}
	if err := st.Branches[b].execute(s, x); err != nil {
		return fmt.Errorf("branch %d: %w", b, err)
	}
	return s.PolicyOR(ds)
}

// CommandCode is TPM2_PolicyCommandCode: the session may only authorize
// command CC (for example TPM_CC_Duplicate in a duplication branch).
type CommandCode struct {
	CC tpm2.TPMCC
}

func (st CommandCode) check() error {
	if st.CC == 0 {
		return fmt.Errorf("command code is zero")
	}
	return nil
}

// Update implements Step.
func (st CommandCode) Update(c *tpm2.PolicyCalculator) error {
	if err := st.check(); err != nil {
		return err
	}
	return tpm2.PolicyCommandCode{Code: st.CC}.Update(c)
}

func (st CommandCode) execute(s Session, _ *executor) error {
	if err := st.check(); err != nil {
		return err
	}
	return s.PolicyCommandCode(st.CC)
}

// DuplicationSelect is TPM2_PolicyDuplicationSelect: duplication only to the
// parent named NewParentName (and, with IncludeObject, only of ObjectName).
//
// IncludeObject is usually false, because an object's authPolicy cannot
// contain its own name; ObjectName may then be empty for Digest. Apply still
// needs ObjectName, because the TPM binds the session to
// H(objectName || newParentName) and checks both at TPM2_Duplicate.
type DuplicationSelect struct {
	NewParentName []byte
	ObjectName    []byte
	IncludeObject bool
}

func (st DuplicationSelect) check(executing bool) error {
	if err := checkName(st.NewParentName, true); err != nil {
		return fmt.Errorf("new parent name: %w", err)
	}
	if st.IncludeObject || executing || len(st.ObjectName) != 0 {
		if err := checkName(st.ObjectName, false); err != nil {
			return fmt.Errorf("object name: %w", err)
		}
	}
	return nil
}

// Update implements Step.
func (st DuplicationSelect) Update(c *tpm2.PolicyCalculator) error {
	if err := st.check(false); err != nil {
		return err
	}
	return tpm2.PolicyDuplicationSelect{
		ObjectName:    tpm2.TPM2BName{Buffer: st.ObjectName},
		NewParentName: tpm2.TPM2BName{Buffer: st.NewParentName},
		IncludeObject: st.IncludeObject,
	}.Update(c)
}

func (st DuplicationSelect) execute(s Session, _ *executor) error {
	if err := st.check(true); err != nil {
		return err
	}
	return s.PolicyDuplicationSelect(st.ObjectName, st.NewParentName, st.IncludeObject)
}

// AuthValue is TPM2_PolicyAuthValue: the session's HMAC must be keyed with
// the authorized object's authValue as well, so only who knows it can use
// the object, whatever else of the policy anyone on the bus can satisfy (a
// PCR policy says what the platform is, not who is asking).
type AuthValue struct{}

// Update implements Step.
func (AuthValue) Update(c *tpm2.PolicyCalculator) error {
	return c.Update(tpm2.TPMCCPolicyAuthValue)
}

func (AuthValue) execute(s Session, _ *executor) error { return s.PolicyAuthValue() }

// Template is TPM2_PolicyTemplate: the session may only authorize
// TPM2_Create, CreatePrimary or CreateLoaded of the one template whose digest
// is Hash (TemplateHash: the session's hash over the marshalled TPMT_PUBLIC
// or TPMT_TEMPLATE sent, its unique field included). Under a derivation
// parent that is the one key type, attribute set, policy, label and context
// the digest was made of: the TPM derives nothing else through this session.
type Template struct {
	Hash []byte
}

func (st Template) check(alg tpm2.TPMIAlgHash) error {
	h, err := sessionHash(alg)
	if err != nil {
		return err
	}
	if len(st.Hash) != h.Size() {
		return fmt.Errorf("template hash is %d bytes, the session's hash has %d", len(st.Hash), h.Size())
	}
	return nil
}

// Update implements Step.
func (st Template) Update(c *tpm2.PolicyCalculator) error {
	if err := st.check(calcAlg(c)); err != nil {
		return err
	}
	return c.Update(tpm2.TPMCCPolicyTemplate, st.Hash)
}

func (st Template) execute(s Session, x *executor) error {
	if err := st.check(x.alg); err != nil {
		return err
	}
	return s.PolicyTemplate(st.Hash)
}

// TemplateHash is the digest TPM2_PolicyTemplate binds for a template sent
// as tmpl (a tpm2.TPMTPublic, or a tpm2.TPMTTemplate for a derived object):
// the hash over its marshalled bytes, as the TPM hashes the command's
// inPublic.
func TemplateHash(alg tpm2.TPMIAlgHash, tmpl tpm2.Marshallable) ([]byte, error) {
	h, err := sessionHash(alg)
	if err != nil {
		return nil, err
	}
	d := h.New()
	d.Write(tpm2.Marshal(tmpl))
	return d.Sum(nil), nil
}

// NV is TPM2_PolicyNV: the NV index's contents at Offset, compared with
// OperandB by Op, must hold. The digest depends on the index's name (and so on
// its attributes), not on its handle; the handle is needed to execute.
type NV struct {
	IndexName []byte
	Index     tpm2.TPMHandle
	OperandB  []byte
	Offset    uint16
	Op        tpm2.TPMEO
}

// maxNVOperand bounds operandB: TPM2B_OPERAND is a digest-sized buffer.
const maxNVOperand = 64

func (st NV) check() error {
	if err := checkNVHandle(st.Index); err != nil {
		return err
	}
	if err := checkName(st.IndexName, false); err != nil {
		return fmt.Errorf("index name: %w", err)
	}
	if n := len(st.OperandB); n == 0 || n > maxNVOperand {
		return fmt.Errorf("operandB is %d bytes, want 1..%d", n, maxNVOperand)
	}
	if st.Op > tpm2.TPMEOBitClear {
		return fmt.Errorf("unknown operation 0x%04x", uint16(st.Op))
	}
	return nil
}

// Update implements Step.
func (st NV) Update(c *tpm2.PolicyCalculator) error {
	if err := st.check(); err != nil {
		return err
	}
	return tpm2.PolicyNV{
		NVIndex:   tpm2.NamedHandle{Handle: st.Index, Name: tpm2.TPM2BName{Buffer: st.IndexName}},
		OperandB:  tpm2.TPM2BOperand{Buffer: st.OperandB},
		Offset:    st.Offset,
		Operation: st.Op,
	}.Update(c)
}

func (st NV) execute(s Session, _ *executor) error {
	if err := st.check(); err != nil {
		return err
	}
	return s.PolicyNV(st.Index, st.IndexName, st.OperandB, st.Offset, st.Op)
}

// Authorize is TPM2_PolicyAuthorize: any policy signed by Signer for
// PolicyRef is accepted. The digest depends only on the signer's TPM name and
// PolicyRef, so golden values can change (a firmware update) without
// re-creating the objects that carry this digest.
//
// Apply needs a matching SignedPolicy in ApplyOptions.Signed: it executes the
// signed (approved) policy, then PolicyAuthorize with its signature.
type Authorize struct {
	Signer    crypto.PublicKey
	PolicyRef []byte
}

// maxPolicyRef bounds policyRef to the signer nameAlg's digest size (the
// TPM refuses a larger TPM2B_NONCE there).
const maxPolicyRef = 32

func (st Authorize) signerName() ([]byte, error) {
	if len(st.PolicyRef) > maxPolicyRef {
		return nil, fmt.Errorf("policyRef is %d bytes, at most %d", len(st.PolicyRef), maxPolicyRef)
	}
	return SignerName(st.Signer)
}

// Update implements Step. The TPM resets policyDigest before extending it
// here (Part 3, 23.16); go-tpm's PolicyAuthorize.Update does not, so the reset
// is done explicitly.
func (st Authorize) Update(c *tpm2.PolicyCalculator) error {
	name, err := st.signerName()
	if err != nil {
		return err
	}
	c.Reset()
	return tpm2.PolicyAuthorize{
		KeySign:   tpm2.TPM2BName{Buffer: name},
		PolicyRef: tpm2.TPM2BDigest{Buffer: st.PolicyRef},
	}.Update(c)
}

func (st Authorize) execute(s Session, x *executor) error {
	name, err := st.signerName()
	if err != nil {
		return err
	}
	var sp *SignedPolicy
	for _, cand := range x.signed {
		if cand == nil || !bytes.Equal(cand.SignerName, name) || !bytes.Equal(cand.PolicyRef, st.PolicyRef) {
			continue
		}
		if sp == nil || cand.Version > sp.Version {
			sp = cand
		}
	}
	if sp == nil {
		return st.executeApproved(s, x, name)
	}
	// Check offline first: a bad signature or a policy that does not match
	// its digest is our error to report, not a TPM_RC_SIGNATURE to decode.
	if err := sp.Verify(st.Signer); err != nil {
		return err
	}
	if x.alg != ApprovedPolicyAlg {
		return fmt.Errorf("signed policies are approved for SHA-256 sessions, session uses 0x%04x", uint16(x.alg))
	}
	pub, err := SignerPublic(st.Signer)
	if err != nil {
		return err
	}
	if err := sp.Policy().execute(s, x); err != nil {
		return fmt.Errorf("approved policy version %d: %w", sp.Version, err)
	}
	return s.PolicyAuthorize(pub, bytes.Clone(sp.ApprovedPolicy), bytes.Clone(st.PolicyRef), sp.Signature)
}

// executeApproved runs the Approved entry for this step's signer and
// policyRef: its expression, then PolicyAuthorize with its signature.
func (st Authorize) executeApproved(s Session, x *executor, name []byte) error {
	for _, a := range x.approved {
		if a.Approval == nil || !bytes.Equal(a.Approval.SignerName, name) || !bytes.Equal(a.Approval.PolicyRef, st.PolicyRef) {
			continue
		}
		if err := a.check(st.Signer); err != nil {
			return err
		}
		if x.alg != ApprovedPolicyAlg {
			return fmt.Errorf("approvals are for SHA-256 sessions, session uses 0x%04x", uint16(x.alg))
		}
		pub, err := SignerPublic(st.Signer)
		if err != nil {
			return err
		}
		if err := a.Policy.execute(s, x); err != nil {
			return fmt.Errorf("approved policy: %w", err)
		}
		return s.PolicyAuthorize(pub, bytes.Clone(a.Approval.ApprovedPolicy), bytes.Clone(st.PolicyRef), a.Approval.Signature)
	}
	return ErrNoSignedPolicy
}

// checkName accepts a TPM name: nameAlg (SHA-256 or SHA-384) followed by a
// digest of that size, or, when handleOK, the 4-byte name of a permanent
// handle (TPM_RH_NULL as the new parent of an inner-wrapped-only duplicate).
func checkName(name []byte, handleOK bool) error {
	if handleOK && len(name) == 4 {
		return nil
	}
	if len(name) < 2 {
		return fmt.Errorf("name is %d bytes", len(name))
	}
	alg := tpm2.TPMIAlgHash(uint16(name[0])<<8 | uint16(name[1]))
	h, err := sessionHash(alg)
	if err != nil {
		return fmt.Errorf("name algorithm: %w", err)
	}
	if len(name) != 2+h.Size() {
		return fmt.Errorf("name is %d bytes, want %d for its algorithm", len(name), 2+h.Size())
	}
	return nil
}

// checkNVHandle accepts handles of type TPM_HT_NV_INDEX (0x01xxxxxx).
func checkNVHandle(h tpm2.TPMHandle) error {
	if h>>24 != 0x01 {
		return fmt.Errorf("handle 0x%08x is not an NV index", uint32(h))
	}
	return nil
}
