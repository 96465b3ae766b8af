package tpm

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"
)

// Sentinels for the states callers decide on with errors.Is. Each names what
// happened in the user's terms; the CLI maps each to a documented exit code.
var (
	// ErrNoTPM: no TPM could be reached (no device, swtpm not listening).
	ErrNoTPM = errors.New("no TPM reachable")
	// ErrFailureMode: the TPM failed its self-test or is in failure mode; it
	// must not be used until it is reset or replaced.
	ErrFailureMode = errors.New("TPM is in failure mode")
	// ErrIntegrity: a TPM-wrapped object (a blob, a sealed secret) failed the
	// TPM's integrity check at load: it was changed, or it was wrapped under
	// another parent (another PK, another TPM).
	ErrIntegrity = errors.New("a TPM-wrapped object failed the TPM's integrity check: it was changed, or wrapped under another parent")
	// ErrCommandFailed: one command answered TPM_RC_FAILURE while the TPM's
	// self-test result says it is not in failure mode (swtpm answers a bad
	// RSA-OAEP ciphertext so): that command's input, not the TPM.
	ErrCommandFailed = errors.New("the TPM could not complete the command (its self-test passes: this is not failure mode)")
	// ErrPolicyNotSatisfied: the object's policy (PCR values, signed policy) is
	// not met on this platform now.
	ErrPolicyNotSatisfied = errors.New("TPM policy not satisfied")
	// ErrLockout: the dictionary-attack protection is locked out; wait for the
	// recovery interval or reset it with the lockout authorization.
	ErrLockout = errors.New("TPM dictionary-attack lockout")
	// ErrBadAuth: an authorization value was wrong (or the command was
	// changed on the bus: the TPM's refusal cannot tell). provd never
	// retries it. It does not count against the dictionary-attack lockout:
	// every object and index provd creates is noDA, and the TPM exempts its
	// hierarchies, every permanent handle but the lockout authorization
	// (TestWrongValuesDoNotCountAgainstLockout); a value of another's object
	// without noDA would count.
	ErrBadAuth = errors.New("TPM authorization failed")
	// ErrNoMemory: the TPM has no free object or session slot. On a TPM without
	// a resource manager this means some client left handles behind.
	ErrNoMemory = errors.New("TPM out of object or session memory")
	// ErrNotFound: a handle or NV index does not exist.
	ErrNotFound = errors.New("TPM object not found")
	// ErrUnsupported: the TPM does not implement an algorithm, curve or
	// command provd asked for.
	ErrUnsupported = errors.New("not supported by this TPM")
	// ErrSRKMismatch: the persistent handle 0x81000001 holds a key that is not
	// the TCG ECC P-256 SRK; provd refuses to build on a foreign key.
	ErrSRKMismatch = errors.New("persistent SRK handle holds a foreign key")
	// ErrIdentityMismatch: the TPM is not the one provd pinned (its SRK has
	// another name), or something on the bus answers for it.
	ErrIdentityMismatch = errors.New("the TPM is not the one provd was provisioned on, it was cleared (TPM2_Clear: a new owner seed, so a new SRK), or something on the bus is lying")
	// ErrResponseForged: a response failed its session's HMAC check or
	// lacks a session's entry, the TPM refused a command's HMAC in a
	// session salted to the SRK, or an answer named a handle its command
	// does not make (madeHandle): what crossed the bus is not what one end
	// sent (something between them changed or invented it).
	ErrResponseForged = errors.New("a TPM command or response was changed between provd and the TPM (a session HMAC failed, an answer lacks a session's entry, or an answer named a handle its command does not make)")
)

// goTPMBadResponseHMAC is how go-tpm v0.9.8 reports a response whose HMAC
// does not verify; it has no sentinel for it. The forged-response test fails
// if a new go-tpm words it otherwise.
const goTPMBadResponseHMAC = "incorrect authorization HMAC"

// goTPMForgedAnswers are how go-tpm v0.9.8 reports an answer that is not
// the TPM's: a response HMAC that does not verify, and a sessions area of a
// successful answer that does not hold one entry for each session of its
// command (a session's entry missing or cut short, or bytes after the
// last; a TPM answers each session of a command it ran: found by review,
// A1 took the guard out of a guarded load and passed the TPM's answer on,
// one entry short).
var goTPMForgedAnswers = []string{goTPMBadResponseHMAC, "reading auth session", "unaccounted-for bytes at the end of the TPM response"}

// Error is a failure the TPM reported for one command. It unwraps to the kind
// sentinel above (when one applies) and to the raw tpm2.TPMRC, so both
// errors.Is(err, tpm.ErrLockout) and errors.Is(err, tpm2.TPMRCLockout) work.
type Error struct {
	Command string     // e.g. "TPM2_Load"
	RC      tpm2.TPMRC // the response code as returned
	Kind    error      // one of the sentinels, or nil
}

func (e *Error) Error() string {
	if e.Kind != nil {
		return fmt.Sprintf("%s: %v (%v)", e.Command, e.Kind, e.RC)
	}
	return fmt.Sprintf("%s: %v", e.Command, e.RC)
}

// Unwrap exposes the kind and the response code.
func (e *Error) Unwrap() []error {
	if e.Kind != nil {
		return []error{e.Kind, e.RC}
	}
	return []error{e.RC}
}

// Wrap names the command that failed and classifies a TPM response code. Errors
// that are not response codes (transport failures) are wrapped as they are.
func Wrap(command string, err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	var rc tpm2.TPMRC
	if !errors.As(err, &rc) {
		msg := err.Error()
		if slices.ContainsFunc(goTPMForgedAnswers, func(e string) bool { return strings.Contains(msg, e) }) {
			return fmt.Errorf("%s: %w: %w", command, ErrResponseForged, err)
		}
		return fmt.Errorf("%s: %w", command, err)
	}
	return &Error{Command: command, RC: rc, Kind: classify(rc)}
}

// classify maps a response code to a kind. Format-1 codes compare by their
// canonical value (errors.Is on tpm2.TPMRC strips the handle/parameter index).
func classify(rc tpm2.TPMRC) error {
	is := func(codes ...tpm2.TPMRC) bool {
		for _, c := range codes {
			if errors.Is(rc, c) {
				return true
			}
		}
		return false
	}
	switch {
	case is(tpm2.TPMRCPolicyFail, tpm2.TPMRCPCRChanged, tpm2.TPMRCPolicyCC, tpm2.TPMRCExpired):
		return ErrPolicyNotSatisfied
	case is(tpm2.TPMRCLockout):
		return ErrLockout
	case is(tpm2.TPMRCAuthFail, tpm2.TPMRCBadAuth):
		return ErrBadAuth
	case is(tpm2.TPMRCObjectMemory, tpm2.TPMRCSessionMemory, tpm2.TPMRCMemory,
		tpm2.TPMRCObjectHandles, tpm2.TPMRCSessionHandles):
		return ErrNoMemory
	case is(tpm2.TPMRCHandle, tpm2.TPMRCReferenceH0, tpm2.TPMRCReferenceH1, tpm2.TPMRCReferenceH2):
		return ErrNotFound
	case is(tpm2.TPMRCFailure):
		return ErrFailureMode
	case is(tpm2.TPMRCIntegrity):
		return ErrIntegrity
	case is(tpm2.TPMRCCurve, tpm2.TPMRCAsymmetric, tpm2.TPMRCHash, tpm2.TPMRCScheme, tpm2.TPMRCKDF,
		tpm2.TPMRCCommandCode, tpm2.TPMRCKeySize, tpm2.TPMRCMode):
		return ErrUnsupported
	}
	return nil
}

// notFailureMode decides TPM_RC_FAILURE by the TPM's own test result
// (TPM2_GetTestResult), not by one command's code: when the TPM says it is
// fine, err is ErrCommandFailed instead of ErrFailureMode.
func (t *TPM) notFailureMode(err error) error {
	var e *Error
	if !errors.Is(err, ErrFailureMode) || !errors.As(err, &e) {
		return err
	}
	rc, terr := t.TestResult()
	if terr != nil || rc != tpm2.TPMRCSuccess {
		return err
	}
	c := *e
	c.Kind = ErrCommandFailed
	return &c
}

// guarded maps the TPM's refusal of a command HMAC in the session salted to
// the SRK (a guard session: provd's own key, which a caller never mistypes)
// to ErrResponseForged: the command was changed on its way. So is its
// refusal of the session's attributes (TPM_RC_ATTRIBUTES), which the TPM
// checks before the HMAC: provd sends a guard's attributes consistent
// with its command, so A1 changed them (found by review: the shared
// session's decrypt and audit bits cleared in a creation, a plain TPM
// error), and its refusal of the session's cipher (TPM_RC_SYMMETRIC: a
// guard always has one, so the session at its number is not provd's;
// found by review 11, A1's own session in place of the daemon's kept
// one). index is the guard session's position among the command's
// sessions (1-based); a command whose every session is a guard names each.
func guarded(command string, err error, index ...int) error {
	var f1 tpm2.TPMFmt1Error
	if (errors.Is(err, tpm2.TPMRCBadAuth) || errors.Is(err, tpm2.TPMRCAttributes) || errors.Is(err, tpm2.TPMRCSymmetric)) && errors.As(err, &f1) {
		if ok, i := f1.Session(); ok && slices.Contains(index, i) {
			return fmt.Errorf("%s: %w: %w", command, ErrResponseForged, Wrap(command, err))
		}
	}
	return Wrap(command, err)
}
