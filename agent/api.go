package agent

import (
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/fips140"
	"errors"
	"fmt"
	"slices"

	"github.com/provd/provd/audit"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// API is what the CLI asks of provd: the operations an *Agent performs
// in-process and the daemon's client (package agent/client) performs over the
// API socket. Both give the same results and errors that errors.Is the same
// sentinels, so a command's output and exit code do not depend on the path.
type API interface {
	Provision(ctx context.Context, req ProvisionRequest) (ProvisionResult, error)
	InstallPolicy(ctx context.Context, signedPolicy []byte) (PolicyInstallResult, error)
	ShowPolicy(ctx context.Context) (PolicyState, error)
	Seal(ctx context.Context, req SealRequest) ([]byte, error)
	Unseal(ctx context.Context, blob []byte) ([]byte, error)
	Status(ctx context.Context) (Status, error)
	TPMInfo(ctx context.Context) (TPMInfo, error)
	AuditRecords() ([]audit.Record, error)
	AuditVerify() (audit.Report, error)
	AuditRepair(anchorLast bool) (audit.Report, error)
	Zeroize(ctx context.Context, opts ZeroizeOptions) (ZeroizeResult, error)

	DeriveKey(ctx context.Context, req DeriveRequest) (KeyInfo, error)
	CreateKey(ctx context.Context, req CreateRequest) (KeyInfo, error)
	DeleteKey(ctx context.Context, name string) error
	ListKeys(ctx context.Context) ([]KeyInfo, error)
	KeyPublic(ctx context.Context, name string) (crypto.PublicKey, KeyInfo, error)
	Sign(ctx context.Context, name string, digest []byte, opts SignOptions) ([]byte, error)
	HMAC(ctx context.Context, name string, data []byte) ([]byte, error)
	ECDH(ctx context.Context, name string, peer *ecdh.PublicKey) ([]byte, error)
	Decrypt(ctx context.Context, name string, ciphertext []byte, h crypto.Hash) ([]byte, error)
	EncryptData(ctx context.Context, name string, plain []byte) ([]byte, error)
	DecryptData(ctx context.Context, name string, envelope []byte) ([]byte, error)
	ExportKeyBlob(ctx context.Context, name string) ([]byte, error)
	ImportKeyBlob(ctx context.Context, name string, pemData []byte) (KeyInfo, error)
}

var _ API = (*Agent)(nil)

// TPMInfo is what `provd tpm info` shows: the TPM as it was opened, what it
// says about itself, and whether the Go FIPS 140-3 module is on in the
// process that talks to it (the daemon's, through the API).
type TPMInfo struct {
	TPM string `json:"tpm"`
	tpm.Info
	GoFIPS140 bool `json:"go_fips140"`
}

// TPMInfo reads what the TPM says about itself; it writes nothing.
func (a *Agent) TPMInfo(context.Context) (TPMInfo, error) {
	info, err := a.t.Info()
	return TPMInfo{TPM: a.t.Spec(), Info: info, GoFIPS140: fips140.Enabled()}, err
}

// SetCallerUID sets the uid the audit trail records for the operations that
// follow. The daemon serves every caller with one Agent and calls it inside
// its TPM queue before each operation; like every Agent method it must not
// run concurrently with another.
func (a *Agent) SetCallerUID(uid int) { a.uid = uid }

// RecordRefusal writes a refused request to the audit trail: op is the
// operation asked for, uid the caller, why what its role lacked. The refusal
// is not an error of the agent's; the returned error is the audit trail's.
func (a *Agent) RecordRefusal(op string, uid int, why string) error {
	prev := a.uid
	a.uid = uid
	defer func() { a.uid = prev }()
	return a.record(op, map[string]string{"refused": why}, fmt.Errorf("%w: %s", ErrRefused, why))
}

// ErrRefused: the daemon refused a request because the caller's role does
// not allow the operation. It is an ErrNotPermitted (exit code 5).
var ErrRefused = fmt.Errorf("%w: the caller's role does not allow it", ErrNotPermitted)

// ErrBusy: the daemon's TPM queue did not reach a request before its
// deadline, or was full (exit code 10, as a TPM out of slots: try again).
var ErrBusy = errors.New("TPM queue busy: the request's deadline passed while it waited")

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
	ExitState          = 8  // the state directory or audit log is locked, corrupt or of an unknown schema
	ExitTPMFailure     = 9  // the TPM failed its self-test or is in failure mode
	ExitTPMResources   = 10 // the TPM has no free object or session slot, or the daemon's queue is full
	ExitBadAuth        = 11 // a TPM authorization value was wrong (counts against lockout)
	ExitConflict       = 12 // already exists (provisioned, key name taken); use --force where offered
	ExitNotProvisioned = 13 // `provd provision` has not run
	ExitTampered       = 14 // the audit trail or a blob failed its integrity check
	ExitInterrupted    = 130
)

// Kind is one sentinel error as it travels: Name on the wire (an API
// error's kinds), Err the sentinel, Exit the CLI's exit code for it.
type Kind struct {
	Name string
	Err  error
	Exit int
}

// kinds is the one table of the sentinel errors that cross the API and
// decide exit codes, most specific first. A remote error carries every kind
// its cause matched, and the client rebuilds an error that errors.Is each of
// them again; the exit code is the first match's. A package that adds a
// sentinel callers must tell apart adds it here (the server's tests fail for
// an exported sentinel that is neither here nor deliberately left out), and
// docs/exit-codes.md and docs/api.md list it.
var kinds = []Kind{
	{"refused", ErrRefused, ExitNotPermitted},
	{"policy_not_satisfied", tpm.ErrPolicyNotSatisfied, ExitPolicy},
	{"tampered", ErrTampered, ExitTampered},
	{"audit_unanchored", audit.ErrUnanchored, ExitTampered},
	{"audit_tampered", audit.ErrTampered, ExitTampered},
	{"audit_torn_tail", audit.ErrTornTail, ExitTampered},
	{"not_provisioned", ErrNotProvisioned, ExitNotProvisioned},
	{"already_provisioned", ErrAlreadyProvisioned, ExitConflict},
	{"key_exists", ErrKeyExists, ExitConflict},
	{"not_extractable", ErrNotExtractable, ExitNotPermitted},
	{"not_permitted", ErrNotPermitted, ExitNotPermitted},
	{"not_approved", policy.ErrNotApproved, ExitNotPermitted},
	{"not_found", ErrNotFound, ExitNotFound},
	{"bad_input", ErrBadInput, ExitUsage},
	{"busy", ErrBusy, ExitTPMResources},
	{"state_locked", store.ErrLocked, ExitState},
	{"audit_locked", audit.ErrLocked, ExitState},
	{"state_corrupt", store.ErrCorrupt, ExitState},
	{"state_unknown_schema", store.ErrUnknownSchema, ExitState},
	{"state_insecure_dir", store.ErrInsecureDir, ExitState},
	{"state_not_found", store.ErrNotFound, ExitNotFound},
	{"state_invalid_name", store.ErrInvalidName, ExitUsage},
	{"tpm_lockout", tpm.ErrLockout, ExitLockout},
	{"no_tpm", tpm.ErrNoTPM, ExitNoTPM},
	{"tpm_failure", tpm.ErrFailureMode, ExitTPMFailure},
	{"tpm_no_memory", tpm.ErrNoMemory, ExitTPMResources},
	{"tpm_bad_auth", tpm.ErrBadAuth, ExitBadAuth},
	{"tpm_not_found", tpm.ErrNotFound, ExitNotFound},
	{"srk_mismatch", tpm.ErrSRKMismatch, ExitConflict},
	{"tpm_unsupported", tpm.ErrUnsupported, ExitNotPermitted},
	{"deadline_exceeded", context.DeadlineExceeded, ExitError},
	{"canceled", context.Canceled, ExitInterrupted},
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

// ExitCode is the exit code for err: ExitOK for nil, the first matching
// kind's code, ExitError when no kind matches.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	for _, k := range kinds {
		if errors.Is(err, k.Err) {
			return k.Exit
		}
	}
	return ExitError
}
