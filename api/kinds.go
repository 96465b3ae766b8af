package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/provd/provd/audit"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/firmware"
	"github.com/provd/provd/keywrap"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// Exit codes of the CLI. They are a contract with scripts and systemd
// units: documented in docs/exit-codes.md and never renumbered. They live
// here, beside the kinds table that decides them, so that the daemon (which
// sends the code with every error) and the in-process CLI decide alike.
const (
	ExitOK             = 0
	ExitError          = 1  // anything not listed below
	ExitUsage          = 2  // bad flags, arguments or input
	ExitPolicy         = 3  // the PCRs (or signed policy) do not satisfy the key's policy
	ExitLockout        = 4  // the TPM's dictionary-attack protection is locked out
	ExitNotPermitted   = 5  // refused: not approved (FIPS mode) or not allowed for the caller's role
	ExitNoTPM          = 6  // no TPM reachable
	ExitNotFound       = 7  // a key, blob, state or TPM object does not exist
	ExitState          = 8  // the state directory or audit log is locked, changed by another provd meanwhile, corrupt or of an unknown schema
	ExitTPMFailure     = 9  // the TPM failed its self-test or is in failure mode
	ExitTPMResources   = 10 // the TPM has no free object or session slot, or the daemon's queue is full
	ExitBadAuth        = 11 // a TPM authorization value was wrong (provd's objects are noDA: it does not count against lockout)
	ExitConflict       = 12 // already exists (provisioned, key name taken); use --force where offered
	ExitNotProvisioned = 13 // `provd provision` has not run
	ExitTampered       = 14 // the audit trail or a blob failed its integrity check
	ExitIdentity       = 15 // the TPM's identity is not verified or not the pinned one, or something on the bus answered for it
	ExitKCV            = 16 // a key component or combined key does not match its key check value; nothing was imported
	ExitFWSignature    = 17 // a firmware manifest's signature does not verify, or its signer is not the anchored one
	ExitFWDigest       = 18 // a firmware image's size or digest is not the manifest's
	ExitFWMissing      = 19 // a firmware image the manifest lists is missing
	ExitFWRollback     = 20 // a firmware manifest's version is below the anti-rollback counter's
	ExitFWNoAnchor     = 21 // no firmware signer is anchored in the TPM (provd fw anchor set)
	ExitFWAnchor       = 22 // the TPM's firmware anchor or counter is not one provd defined (replaced by another process)
	ExitAttestFailed   = 23 // the fleet endpoint appraised the device's evidence and it did not pass
	ExitInterrupted    = 130
)

// ExitCodeInfo is one documented exit code: what it means in a sentence.
type ExitCodeInfo struct {
	Code    int
	Name    string
	Meaning string
}

// ExitCodes lists the documented exit codes, in order (the man page
// provd-exit-codes(7) is made from it; docs/exit-codes.md says the same at
// length).
func ExitCodes() []ExitCodeInfo {
	return []ExitCodeInfo{
		{ExitOK, "ok", "success"},
		{ExitError, "error", "anything not listed below"},
		{ExitUsage, "usage", "bad flags, arguments or input"},
		{ExitPolicy, "policy", "the PCRs (or the signed policy) do not satisfy the key's policy; the message names the PCRs that differ"},
		{ExitLockout, "lockout", "the TPM's dictionary-attack protection is locked out"},
		{ExitNotPermitted, "not permitted", "refused: not an approved algorithm, not allowed for the caller's role, or not approved by the crypto officer"},
		{ExitNoTPM, "no TPM", "no TPM reachable"},
		{ExitNotFound, "not found", "a key, blob, state or TPM object does not exist"},
		{ExitState, "state", "the state directory or audit log is locked, changed by another provd meanwhile, corrupt or of an unknown schema"},
		{ExitTPMFailure, "TPM failure", "the TPM failed its self-test or is in failure mode"},
		{ExitTPMResources, "TPM resources", "the TPM has no free object or session slot, or the daemon's queue is full"},
		{ExitBadAuth, "bad auth", "a TPM authorization value was wrong, or the command was changed on its way to the TPM; it does not count against lockout (provd's objects and indices are noDA)"},
		{ExitConflict, "conflict", "already exists (provisioned, key name taken); --force where offered"},
		{ExitNotProvisioned, "not provisioned", "provd provision has not run, or another process zeroized the state while the operation ran"},
		{ExitTampered, "tampered", "the audit trail or a blob failed its integrity check"},
		{ExitIdentity, "identity", "the TPM's identity is not verified or not the pinned one, or something on the bus answered for it"},
		{ExitKCV, "kcv", "a key component or the combined key does not match the key check value the custodians gave; nothing was imported"},
		{ExitFWSignature, "firmware signature", "a firmware manifest's signature does not verify, or its signer is not the anchored one"},
		{ExitFWDigest, "firmware digest", "a firmware image's size or digest is not the one its manifest lists"},
		{ExitFWMissing, "firmware image missing", "a firmware image its manifest lists is missing"},
		{ExitFWRollback, "firmware rollback", "a firmware manifest's version is below the lowest the TPM's anti-rollback counter accepts"},
		{ExitFWNoAnchor, "firmware anchor missing", "no firmware signer is anchored in the TPM (provd fw anchor set), or its anti-rollback counter is missing"},
		{ExitFWAnchor, "firmware anchor untrusted", "the TPM's firmware anchor or counter is not one provd defined: another process replaced it"},
		{ExitAttestFailed, "attestation failed", "the fleet endpoint appraised the device's evidence and it did not pass; the verdict's reasons say why"},
		{ExitInterrupted, "interrupted", "SIGINT or SIGTERM"},
	}
}

// Kind is one sentinel error as it travels: Name on the wire (an API
// error's kinds), Err the sentinel, Exit the CLI's exit code for it, HTTP
// the daemon's status when it is an error's first kind (for humans with
// curl: clients decide on the kinds).
type Kind struct {
	Name string
	Err  error
	Exit int
	HTTP int
}

// kinds is the one table of the sentinel errors that cross the API and
// decide exit codes and HTTP statuses, most specific first. A remote error
// carries every kind its cause matched, and the client rebuilds an error
// that errors.Is each of them again; the exit code and status are the first
// match's. A package that adds a sentinel callers must tell apart adds it
// here (the server's tests fail for an exported sentinel that is neither
// here nor deliberately left out), and docs/exit-codes.md and docs/api.md
// list it.
var kinds = []Kind{
	{"refused", ErrRefused, ExitNotPermitted, http.StatusForbidden},
	{"policy_not_satisfied", tpm.ErrPolicyNotSatisfied, ExitPolicy, http.StatusPreconditionFailed},
	{"tampered", ErrTampered, ExitTampered, http.StatusInternalServerError},
	{"untrusted_tpm", ErrUntrustedTPM, ExitIdentity, http.StatusForbidden},
	{"tpm_response_forged", tpm.ErrResponseForged, ExitIdentity, http.StatusBadGateway},
	{"tpm_identity_mismatch", tpm.ErrIdentityMismatch, ExitIdentity, http.StatusBadGateway},
	{"audit_unanchored", audit.ErrUnanchored, ExitTampered, http.StatusInternalServerError},
	{"audit_tampered", audit.ErrTampered, ExitTampered, http.StatusInternalServerError},
	{"audit_torn_tail", audit.ErrTornTail, ExitTampered, http.StatusInternalServerError},
	{"kcv_mismatch", ErrKCVMismatch, ExitKCV, http.StatusUnprocessableEntity},
	{"firmware_signature", firmware.ErrBadSignature, ExitFWSignature, http.StatusUnprocessableEntity},
	{"firmware_digest", firmware.ErrDigest, ExitFWDigest, http.StatusUnprocessableEntity},
	{"firmware_missing_image", firmware.ErrMissingImage, ExitFWMissing, http.StatusUnprocessableEntity},
	{"firmware_manifest", firmware.ErrBadManifest, ExitUsage, http.StatusBadRequest},
	{"firmware_rollback", firmware.ErrRollback, ExitFWRollback, http.StatusUnprocessableEntity},
	{"firmware_no_anchor", firmware.ErrNoAnchor, ExitFWNoAnchor, http.StatusPreconditionFailed},
	{"firmware_anchor_untrusted", firmware.ErrAnchorUntrusted, ExitFWAnchor, http.StatusUnprocessableEntity},
	{"attestation_failed", ErrAttestationFailed, ExitAttestFailed, http.StatusUnprocessableEntity},
	{"key_unwrap_integrity", keywrap.ErrIntegrity, ExitTampered, http.StatusUnprocessableEntity},
	{"not_provisioned", ErrNotProvisioned, ExitNotProvisioned, http.StatusPreconditionFailed},
	{"already_provisioned", ErrAlreadyProvisioned, ExitConflict, http.StatusConflict},
	{"key_exists", ErrKeyExists, ExitConflict, http.StatusConflict},
	{"not_extractable", ErrNotExtractable, ExitNotPermitted, http.StatusForbidden},
	{"not_derivable", catalog.ErrNotDerivable, ExitNotPermitted, http.StatusForbidden},
	{"not_creatable", catalog.ErrNotCreatable, ExitNotPermitted, http.StatusForbidden},
	{"not_permitted", ErrNotPermitted, ExitNotPermitted, http.StatusForbidden},
	{"not_approved", catalog.ErrNotApproved, ExitNotPermitted, http.StatusForbidden},
	{"not_found", ErrNotFound, ExitNotFound, http.StatusNotFound},
	{"bad_input", ErrBadInput, ExitUsage, http.StatusBadRequest},
	{"tpm_command_too_large", tpm.ErrCommandTooLarge, ExitUsage, http.StatusRequestEntityTooLarge},
	{"busy", ErrBusy, ExitTPMResources, http.StatusServiceUnavailable},
	{"state_locked", store.ErrLocked, ExitState, http.StatusServiceUnavailable},
	{"audit_locked", audit.ErrLocked, ExitState, http.StatusServiceUnavailable},
	{"audit_moved", audit.ErrMoved, ExitState, http.StatusServiceUnavailable},
	{"audit_move_unfinished", ErrAuditMoveUnfinished, ExitState, http.StatusServiceUnavailable},
	{"state_changed", ErrStateChanged, ExitState, http.StatusConflict},
	{"state_corrupt", store.ErrCorrupt, ExitState, http.StatusInternalServerError},
	{"state_unknown_schema", store.ErrUnknownSchema, ExitState, http.StatusInternalServerError},
	{"state_insecure_dir", store.ErrInsecureDir, ExitState, http.StatusInternalServerError},
	{"state_not_found", store.ErrNotFound, ExitNotFound, http.StatusNotFound},
	{"state_invalid_name", store.ErrInvalidName, ExitUsage, http.StatusBadRequest},
	{"tpm_lockout", tpm.ErrLockout, ExitLockout, http.StatusLocked},
	{"no_tpm", tpm.ErrNoTPM, ExitNoTPM, http.StatusServiceUnavailable},
	{"tpm_failure", tpm.ErrFailureMode, ExitTPMFailure, http.StatusInternalServerError},
	{"tpm_command_failed", tpm.ErrCommandFailed, ExitError, http.StatusUnprocessableEntity},
	{"tpm_integrity", tpm.ErrIntegrity, ExitTampered, http.StatusInternalServerError},
	{"tpm_no_memory", tpm.ErrNoMemory, ExitTPMResources, http.StatusServiceUnavailable},
	{"tpm_bad_auth", tpm.ErrBadAuth, ExitBadAuth, http.StatusInternalServerError},
	{"tpm_not_found", tpm.ErrNotFound, ExitNotFound, http.StatusNotFound},
	{"srk_mismatch", tpm.ErrSRKMismatch, ExitConflict, http.StatusConflict},
	{"tpm_unsupported", tpm.ErrUnsupported, ExitNotPermitted, http.StatusInternalServerError},
	{"deadline_exceeded", context.DeadlineExceeded, ExitError, http.StatusServiceUnavailable},
	{"canceled", context.Canceled, ExitInterrupted, http.StatusInternalServerError},
}

// Kinds returns a copy of the kinds table, in order.
func Kinds() []Kind { return slices.Clone(kinds) }

// ErrorKinds returns the names of every sentinel err matches, in table order.
func ErrorKinds(err error) []string {
	var names []string
	for _, k := range kinds {
		if errors.Is(err, k.Err) {
			names = append(names, k.Name)
		}
	}
	return names
}

// KindError returns the sentinel a kind names, or nil for a kind this
// version does not know (a newer daemon's).
func KindError(name string) error {
	for _, k := range kinds {
		if k.Name == name {
			return k.Err
		}
	}
	return nil
}

// ExitCode is the exit code for err: ExitOK for nil, the code the daemon
// sent for a remote *Error, else the first matching kind's code, ExitError
// when no kind matches.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var remote *Error
	if errors.As(err, &remote) {
		return remote.Code
	}
	for _, k := range kinds {
		if errors.Is(err, k.Err) {
			return k.Exit
		}
	}
	return ExitError
}

// HTTPStatus is the daemon's status for an error with these kinds: the
// first kind's, 500 for none.
func HTTPStatus(kindNames []string) int {
	if len(kindNames) > 0 {
		for _, k := range kinds {
			if k.Name == kindNames[0] {
				return k.HTTP
			}
		}
	}
	return http.StatusInternalServerError
}

// ErrorBody is every error response.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail says what failed, in words and for machines: Kinds are the
// sentinels the error matched (ErrorKinds), ExitCode the CLI's exit code for
// it, Policy the PCRs when a policy was not satisfied.
type ErrorDetail struct {
	Message  string        `json:"message"`
	Kinds    []string      `json:"kinds"`
	ExitCode int           `json:"exit_code"`
	Policy   *PolicyDetail `json:"policy,omitempty"`
}

// PolicyDetail is PolicyError on the wire.
type PolicyDetail struct {
	Differ []int  `json:"pcrs_differ,omitempty"`
	Bank   string `json:"bank,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// NewErrorBody is the wire form of err: its message, kinds, exit code
// (exitCode(err); nil: ExitCode) and policy details.
func NewErrorBody(err error, exitCode func(error) int) ErrorBody {
	if exitCode == nil {
		exitCode = ExitCode
	}
	d := ErrorDetail{Message: err.Error(), Kinds: ErrorKinds(err), ExitCode: exitCode(err)}
	if d.Kinds == nil {
		d.Kinds = []string{}
	}
	var pe *PolicyError
	if errors.As(err, &pe) {
		d.Policy = &PolicyDetail{Differ: pe.Differ, Bank: pe.Bank, Reason: pe.Reason}
	}
	return ErrorBody{Error: d}
}

// Error is an error the daemon reported, rebuilt on the caller's side: it
// errors.Is the same sentinels the daemon's error matched and carries the
// exit code the in-process CLI would have used.
type Error struct {
	Message string
	Kinds   []string
	Code    int
	// Status is the HTTP status.
	Status int
	policy *PolicyError
}

func (e *Error) Error() string { return e.Message }

// ExitCode is the exit code the daemon computed for the error.
func (e *Error) ExitCode() int { return e.Code }

// Unwrap yields the sentinels of Kinds and, for an unmet policy, a
// *PolicyError with the PCRs that differ.
func (e *Error) Unwrap() []error {
	var errs []error
	if e.policy != nil {
		errs = append(errs, e.policy)
	}
	for _, k := range e.Kinds {
		if s := KindError(k); s != nil {
			errs = append(errs, s)
		}
	}
	return errs
}

// maxErrorMessage bounds the message DecodeError keeps: the daemon's are
// a few hundred bytes.
const maxErrorMessage = 1000

// answerText is s cut to at most n bytes at a rune's start, with each rune
// that does not print but a newline or a tab (which the daemon's own
// messages hold: errors.Join; review 63), and each byte that is not
// UTF-8, written as its Go escape: the message keeps its form, and no
// terminal control in it acts.
func answerText(s string, n int) string {
	if len(s) > n {
		i := n
		for i > 0 && !utf8.RuneStart(s[i]) {
			i--
		}
		s = s[:i] + "…"
	}
	unsafe := func(r rune) bool { return r != '\n' && r != '\t' && !unicode.IsPrint(r) }
	if utf8.ValidString(s) && !strings.ContainsFunc(s, unsafe) {
		return s
	}
	var b strings.Builder
	for len(s) > 0 {
		r, size := utf8.DecodeRuneInString(s)
		switch {
		case r == utf8.RuneError && size == 1: // a byte that is not UTF-8
			fmt.Fprintf(&b, "\\x%02x", s[0])
		case unsafe(r):
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[:size])
		}
		s = s[size:]
	}
	return b.String()
}

// DecodeError rebuilds the error of a response with a non-200 status. A
// body that is not an ErrorBody (a proxy's, a crash's) is still an *Error,
// with the status and the start of the body as its message. The daemon's
// exit code is taken when it is one a process can exit with for an error
// (1..255); otherwise the kinds decide.
//
// The message is what answered on the socket said: at most
// maxErrorMessage bytes of it are kept, quoted (Go syntax) when it holds
// a character that does not print, so that an error a Go program logs or
// prints draws no terminal control and forges no line (found by review
// 62: a 4 MiB message with escapes was the error's text whole).
func DecodeError(status int, body []byte) *Error {
	var eb ErrorBody
	if err := json.Unmarshal(body, &eb); err != nil || eb.Error.Message == "" {
		return &Error{Message: fmt.Sprintf("daemon answered HTTP %d: %s", status, answerText(strings.TrimSpace(string(body)), 200)), Code: ExitError, Status: status}
	}
	d := eb.Error
	e := &Error{Message: answerText(d.Message, maxErrorMessage), Kinds: d.Kinds, Code: d.ExitCode, Status: status}
	if e.Code < 1 || e.Code > 255 {
		// An error never exits 0, and a code outside 1..255 would wrap
		// around in the exit status: decide from the kinds this version
		// knows, else ExitError.
		e.Code = ExitError
		for _, k := range d.Kinds {
			if err := KindError(k); err != nil {
				e.Code = ExitCode(err)
				break
			}
		}
	}
	if d.Policy != nil {
		e.policy = &PolicyError{Differ: d.Policy.Differ, Bank: d.Policy.Bank, Reason: d.Policy.Reason, Err: errors.New(d.Message)}
	}
	return e
}
