package tpm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// PolicySession is a TPM policy session (or a trial session, which only
// computes the digest). Its Policy* methods are the commands of provd's
// policy.Session interface, which it satisfies structurally, so a policy
// expression can be applied to it: policy.Policy.Apply(s, ...). Use Session()
// as the authorization of the command the policy permits, and Close on every
// path.
//
// A step that the platform does not meet (PCR values that differ, an NV
// comparison that fails, a signature the TPM refuses) fails with a *tpm.Error
// that names the step's command and wraps ErrPolicyNotSatisfied; failures that
// mean a caller's bug do not.
type PolicySession struct {
	t      *TPM
	s      tpm2.Session
	closer func() error
	alg    tpm2.TPMIAlgHash
	trial  bool
	closed bool
	// salted: the session's key came from a salt only the pinned SRK
	// decrypts, so its response HMACs are the TPM's own word (Session marks
	// it: authenticated).
	salted bool
	// auth is the session's own copy of the authValue it is keyed with
	// (go-tpm keeps the slice it is given), cleared at Close: a caller's
	// buffer cleared under a live session would key its next HMAC with
	// zeros (found by the review of issue 14: the daemon's kept session
	// failed with TPM_RC_BAD_AUTH after another process's commit).
	auth []byte
	// start is the handle the session started with; proofUntil, once a
	// gate's proof went into it (PolicySecret), is when that proof has
	// surely expired (spend).
	start      tpm2.TPMHandle
	proofUntil time.Time
	// keyed is the session of StartSaltedPolicySession,
	// StartGuardingPolicySession and StartSecretPolicySession (provd's own
	// type); those started with a cipher (the last two) can guard a
	// command they do not authorize (Guard). nil for the others.
	keyed *keyedPolicy
	// gen and started are the TPM's generation and the time before the
	// session's start (keyed sessions and gate sessions): a gate's proof
	// with a nonce expires counting from the start (Spare, GatedExtend).
	gen     uint64
	started time.Time
	// stepUses is Uses when the last policy step was sent (stepHandle):
	// a step after the session's last use is in its digest (Spare).
	stepUses int
}

// saltedAuth marks a session salted to the SRK when it authorizes a
// command: the command's response HMAC is then keyed by a secret only the
// TPM that holds the SRK shares, so the answer needs no second session to be
// authenticated (Load, issue 14: two TPM commands fewer per load).
type saltedAuth struct{ tpm2.Session }

// authenticated reports whether s is a session salted to the SRK
// (PolicySession.Session of a salted session).
func authenticated(s tpm2.Session) bool {
	_, ok := s.(saltedAuth)
	return ok
}

// policyNonceSize is the size of nonceCaller: the session hash's digest size,
// as Part 1 recommends.
const policyNonceSize = 32

// StartPolicySession starts a SHA-256 policy session, or a trial session when
// trial is true. SHA-256 is the nameAlg of provd's keys, and a session's
// digest must have the size of the authPolicy it is checked against. It takes
// one of the TPM's session slots until Close.
func (t *TPM) StartPolicySession(trial bool) (*PolicySession, error) {
	var opts []tpm2.AuthOption
	if trial {
		opts = append(opts, tpm2.Trial())
	}
	// tpm2.PolicySession, not tpm2.Policy: the latter runs the policy in a
	// callback and leaks the session when a step fails.
	s, _, err := tpm2.PolicySession(t, tpm2.TPMAlgSHA256, policyNonceSize, opts...)
	if err != nil {
		return nil, Wrap("TPM2_StartAuthSession", err)
	}
	return &PolicySession{t: t, s: s, closer: t.sessionCloser(s), alg: tpm2.TPMAlgSHA256, trial: trial}, nil
}

// StartAuthPolicySession starts a SHA-256 policy session for an object whose
// policy holds PolicyAuthValue: auth (the object's authValue) keys the
// command and response HMACs, so whoever does not know it can neither use
// the object through such a session nor forge its answers.
func (t *TPM) StartAuthPolicySession(auth []byte) (*PolicySession, error) {
	s, _, err := tpm2.PolicySession(t, tpm2.TPMAlgSHA256, policyNonceSize, tpm2.Auth(auth))
	if err != nil {
		return nil, Wrap("TPM2_StartAuthSession", err)
	}
	return &PolicySession{t: t, s: s, closer: t.sessionCloser(s), alg: tpm2.TPMAlgSHA256}, nil
}

// StartSecretPolicySession starts a SHA-256 policy session that is also
// salted with the SRK and encrypts parameters in direction dir, so one session
// both authorizes a command that carries a secret and protects the secret on
// the bus: it saves the separate encryption session (2 commands) on unseal.
// auth is the authValue of the objects it authorizes (their policies hold
// PolicyAuthValue), nil only for objects whose authValue is empty: the TPM
// keys the encryption with the authorized object's authValue even where
// its policy does not check it (keyedPolicy).
//
// It is provd's own session type (keyedPolicy), so that it can also guard
// the PK's load before it authorizes anything (Guard, as a session of
// StartGuardingPolicySession: an unseal, issue 14).
func (t *TPM) StartSecretPolicySession(dir Direction, auth []byte) (*PolicySession, error) {
	if dir == 0 {
		return nil, errors.New("StartSecretPolicySession: no direction")
	}
	return t.startSaltedPolicy(auth, true, dir)
}

// StartSaltedPolicySession starts a SHA-256 policy session salted to the
// SRK, of provd's own making (keyedPolicy): its HMAC key is secret, so a
// session satisfied now and used a few commands later is of no use to
// whoever watched it being satisfied (found by review: an unsalted one was
// used first by a command of the attacker's), and its answers cannot be
// forged. auth is the authValue of the objects it authorizes when their
// policies hold PolicyAuthValue (it then keys the HMACs with the session
// key, which the salt gives), nil when they do not. Authorizing, it
// encrypts nothing: the TPM keys a policy session's parameter encryption
// with the authorized object's authValue even when the policy has no
// PolicyAuthValue, and its HMAC without it (measured on swtpm:
// TPM_RC_SIZE on the encrypted parameter); use an extra encryption
// session.
func (t *TPM) StartSaltedPolicySession(auth []byte) (*PolicySession, error) {
	return t.startSaltedPolicy(auth, false, 0)
}

// StartGuardingPolicySession is StartSaltedPolicySession for a session that
// can also guard a command it does not authorize, as its extra session
// (Guard: the PK's load under the SRK, before the session authorizes the
// loads and uses under the PK). It is started with a cipher, which the
// guard role needs.
func (t *TPM) StartGuardingPolicySession(auth []byte) (*PolicySession, error) {
	return t.startSaltedPolicy(auth, true, 0)
}

func (t *TPM) startSaltedPolicy(auth []byte, guard bool, dir Direction) (*PolicySession, error) {
	srk, err := t.SRK()
	if err != nil {
		return nil, err
	}
	own := bytes.Clone(auth)
	gen, started := t.Generation(), time.Now()
	k, err := t.startKeyedPolicy(srk, own, guard, dir)
	if err != nil {
		clear(own)
		return nil, err
	}
	s := policyAuth{k}
	return &PolicySession{t: t, s: s, closer: t.sessionCloser(s), alg: tpm2.TPMAlgSHA256, salted: true, auth: own, keyed: k, gen: gen, started: started}, nil
}

// stepHandle is p's handle for a policy step sent now, which it notes:
// every command that changes the session's policy takes the handle here.
func (p *PolicySession) stepHandle() tpm2.TPMHandle {
	p.stepUses = p.Uses()
	return p.s.Handle()
}

// Uses is the number of commands p authorized that the TPM answered with
// success, the answer's HMAC checked (after each the TPM resets the
// session's policy); 0 for a session not of provd's own type (keyed).
func (p *PolicySession) Uses() int {
	if p.keyed == nil {
		return 0
	}
	return p.keyed.uses
}

// Guard returns the session for use as a command's extra session, which
// guards a command it does not authorize: its HMACs, keyed by the session
// key alone in that role, bind the command and its answer, and it encrypts
// the command's first parameter (keyedPolicy). Only a session of
// StartGuardingPolicySession or StartSecretPolicySession has one: nil for
// the others.
func (p *PolicySession) Guard() tpm2.Session {
	if p.keyed == nil || !p.keyed.guard {
		return nil
	}
	return policyGuard{p.keyed}
}

// Close flushes the session. It is safe to call more than once.
func (p *PolicySession) Close() error {
	if p.closed {
		return nil
	}
	defer p.forget()
	return p.closer()
}

// forget closes p without a FlushContext (Close, after its flush): its
// number may be another's session now (the TPM's generation moved since
// it started). The caller asks for the sweep.
func (p *PolicySession) forget() {
	if p.closed {
		return
	}
	p.closed = true
	clear(p.auth)
	if p.keyed != nil {
		p.keyed.end()
	}
}

// Session returns the session for use as the authorization of a go-tpm command
// (tpm.Object.Auth(p.Session())). The TPM resets the session's digest after a
// command it authorized succeeds; apply the policy again for the next one.
func (p *PolicySession) Session() tpm2.Session {
	if p.salted {
		return saltedAuth{p.s}
	}
	return p.s
}

// Handle returns the session's handle.
func (p *PolicySession) Handle() tpm2.TPMHandle { return p.s.Handle() }

// HashAlg returns the session's hash algorithm (policy.SessionHashAlg).
func (p *PolicySession) HashAlg() tpm2.TPMIAlgHash { return p.alg }

// Trial reports whether this is a trial session.
func (p *PolicySession) Trial() bool { return p.trial }

// Digest returns the session's current policy digest (TPM2_PolicyGetDigest).
func (p *PolicySession) Digest() ([]byte, error) {
	rsp, err := (tpm2.PolicyGetDigest{PolicySession: p.s.Handle()}).Execute(p.t)
	if err != nil {
		return nil, Wrap("TPM2_PolicyGetDigest", err)
	}
	return rsp.PolicyDigest.Buffer, nil
}

// notSatisfied wraps err for command and, when the response code is one of
// those listed, marks it as ErrPolicyNotSatisfied: these codes mean "the
// platform does not meet this step" for this command, not a malformed command.
func notSatisfied(command string, err error, codes ...tpm2.TPMRC) error {
	err = nvWrap(command, err)
	var e *Error
	if !errors.As(err, &e) || e.Kind != nil {
		return err
	}
	for _, c := range codes {
		if errors.Is(e.RC, c) {
			e.Kind = ErrPolicyNotSatisfied
			break
		}
	}
	return err
}

// PolicyPCR runs TPM2_PolicyPCR. In a real session the TPM compares pcrDigest
// with the current PCR values at once and answers TPM_RC_VALUE when they
// differ: reported as ErrPolicyNotSatisfied.
func (p *PolicySession) PolicyPCR(sel tpm2.TPMLPCRSelection, pcrDigest []byte) error {
	_, err := (tpm2.PolicyPCR{
		PolicySession: p.stepHandle(),
		PcrDigest:     tpm2.TPM2BDigest{Buffer: pcrDigest},
		Pcrs:          sel,
	}).Execute(p.t)
	if err != nil {
		return notSatisfied("TPM2_PolicyPCR", err, tpm2.TPMRCValue)
	}
	return nil
}

// PolicyOR runs TPM2_PolicyOR. TPM_RC_VALUE (the current digest is in none of
// the branches) is not ErrPolicyNotSatisfied: the branch's own steps passed,
// so the branch list and the branch executed disagree, which is a bug.
func (p *PolicySession) PolicyOR(digests [][]byte) error {
	list := make([]tpm2.TPM2BDigest, len(digests))
	for i, d := range digests {
		list[i] = tpm2.TPM2BDigest{Buffer: d}
	}
	_, err := (tpm2.PolicyOr{
		PolicySession: p.stepHandle(),
		PHashList:     tpm2.TPMLDigest{Digests: list},
	}).Execute(p.t)
	if err != nil {
		return Wrap("TPM2_PolicyOR", err)
	}
	return nil
}

// PolicyCommandCode runs TPM2_PolicyCommandCode.
func (p *PolicySession) PolicyCommandCode(cc tpm2.TPMCC) error {
	_, err := (tpm2.PolicyCommandCode{PolicySession: p.stepHandle(), Code: cc}).Execute(p.t)
	return Wrap("TPM2_PolicyCommandCode", err)
}

// PolicyDuplicationSelect runs TPM2_PolicyDuplicationSelect.
func (p *PolicySession) PolicyDuplicationSelect(objectName, newParentName []byte, includeObject bool) error {
	_, err := (tpm2.PolicyDuplicationSelect{
		PolicySession: p.stepHandle(),
		ObjectName:    tpm2.TPM2BName{Buffer: objectName},
		NewParentName: tpm2.TPM2BName{Buffer: newParentName},
		IncludeObject: tpm2.TPMIYesNo(includeObject),
	}).Execute(p.t)
	return Wrap("TPM2_PolicyDuplicationSelect", err)
}

// PolicyAuthValue runs TPM2_PolicyAuthValue. The session must have been
// started with the object's authValue (StartAuthPolicySession), which keys
// its HMACs from then on.
func (p *PolicySession) PolicyAuthValue() error {
	_, err := (tpm2.PolicyAuthValue{PolicySession: p.stepHandle()}).Execute(p.t)
	return Wrap("TPM2_PolicyAuthValue", err)
}

// PolicyTemplate runs TPM2_PolicyTemplate (sent raw: go-tpm v0.9.8 lacks
// it). The session then authorizes only a Create, CreatePrimary or
// CreateLoaded whose template hashes to templateHash; any other template, or
// any other command, fails in the TPM (TPM_RC_POLICY_FAIL).
func (p *PolicySession) PolicyTemplate(templateHash []byte) error {
	params := binary.BigEndian.AppendUint16(nil, uint16(len(templateHash)))
	params = append(params, templateHash...)
	_, err := rawCommand{cc: ccPolicyTemplate, handles: []tpm2.TPMHandle{p.stepHandle()}, params: params}.run(p.t)
	return Wrap("TPM2_PolicyTemplate", err)
}

// PolicyNV runs TPM2_PolicyNV, reading the index with its own (empty)
// password. A comparison that does not hold (TPM_RC_POLICY; for provd's
// signed policies: revoked by the counter) is ErrPolicyNotSatisfied; an index
// never written is ErrNVUninitialized. The TPM extends the name of the index
// it actually read, so a wrong indexName shows only in the digest.
func (p *PolicySession) PolicyNV(index tpm2.TPMHandle, indexName []byte, operandB []byte, offset uint16, op tpm2.TPMEO) error {
	name := tpm2.TPM2BName{Buffer: indexName}
	_, err := (tpm2.PolicyNV{
		AuthHandle:    tpm2.AuthHandle{Handle: index, Name: name, Auth: tpm2.PasswordAuth(nil)},
		NVIndex:       tpm2.NamedHandle{Handle: index, Name: name},
		PolicySession: p.stepHandle(),
		OperandB:      tpm2.TPM2BOperand{Buffer: operandB},
		Offset:        offset,
		Operation:     op,
	}).Execute(p.t)
	if err != nil {
		return notSatisfied("TPM2_PolicyNV", err, tpm2.TPMRCPolicy)
	}
	return nil
}

// PolicyAuthorize loads signer's public key into the owner hierarchy (the TPM
// refuses a ticket from the NULL hierarchy), has the TPM verify sig over
// aHash = H_nameAlg(approvedPolicy || policyRef), runs TPM2_PolicyAuthorize
// with the resulting ticket, and flushes the key on every path. A signature
// the TPM rejects (TPM_RC_SIGNATURE) or a ticket it does not accept
// (TPM_RC_POLICY_FAIL) is ErrPolicyNotSatisfied. TPM_RC_VALUE is not: it
// means that approvedPolicy is not the session's digest although its steps
// passed, or a ticket from the wrong hierarchy, both bugs. It needs one free
// object slot.
func (p *PolicySession) PolicyAuthorize(signer tpm2.TPMTPublic, approvedPolicy, policyRef []byte, sig tpm2.TPMTSignature) (err error) {
	h, err := signer.NameAlg.Hash()
	if err != nil {
		return fmt.Errorf("PolicyAuthorize: signer nameAlg %v: %w", signer.NameAlg, ErrUnsupported)
	}
	hh := h.New()
	hh.Write(approvedPolicy)
	hh.Write(policyRef)
	aHash := hh.Sum(nil)

	key, err := (tpm2.LoadExternal{
		InPublic:  tpm2.New2B(signer),
		Hierarchy: tpm2.TPMRHOwner,
	}).Execute(p.t)
	if err != nil {
		p.t.unheld()
		return Wrap("TPM2_LoadExternal", err)
	}
	defer p.t.flushInto(&err, key.ObjectHandle)

	ver, err := (tpm2.VerifySignature{
		KeyHandle: tpm2.NamedHandle{Handle: key.ObjectHandle, Name: key.Name},
		Digest:    tpm2.TPM2BDigest{Buffer: aHash},
		Signature: sig,
	}).Execute(p.t)
	if err != nil {
		return notSatisfied("TPM2_VerifySignature", err, tpm2.TPMRCSignature)
	}
	_, err = (tpm2.PolicyAuthorize{
		PolicySession:  p.stepHandle(),
		ApprovedPolicy: tpm2.TPM2BDigest{Buffer: approvedPolicy},
		PolicyRef:      tpm2.TPM2BDigest{Buffer: policyRef},
		KeySign:        key.Name,
		CheckTicket:    ver.Validation,
	}).Execute(p.t)
	if err != nil {
		return Wrap("TPM2_PolicyAuthorize", err)
	}
	return nil
}
