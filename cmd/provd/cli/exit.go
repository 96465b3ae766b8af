package cli

import (
	"context"
	"errors"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/agent/store"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/tpm"
)

// Exit codes. They are a contract with scripts and systemd units: documented in
// docs/exit-codes.md and never renumbered.
const (
	ExitOK             = 0
	ExitError          = 1  // anything not listed below
	ExitUsage          = 2  // bad flags or arguments
	ExitPolicy         = 3  // the PCRs (or signed policy) do not satisfy the key's policy
	ExitLockout        = 4  // the TPM's dictionary-attack protection is locked out
	ExitNotPermitted   = 5  // refused: not approved (FIPS mode) or not allowed for the caller's role
	ExitNoTPM          = 6  // no TPM reachable
	ExitNotFound       = 7  // a key, blob, state or TPM object does not exist
	ExitState          = 8  // the state directory is locked, corrupt or of an unknown schema
	ExitTPMFailure     = 9  // the TPM failed its self-test or is in failure mode
	ExitTPMResources   = 10 // the TPM has no free object or session slot
	ExitBadAuth        = 11 // a TPM authorization value was wrong (counts against lockout)
	ExitConflict       = 12 // already exists (provisioned, key name taken); use --force where offered
	ExitNotProvisioned = 13 // `provd provision` has not run
	ExitTampered       = 14 // the audit trail or a blob failed its integrity check
	ExitInterrupted    = 130
)

// codedError carries an explicit exit code (usage errors).
type codedError struct {
	code int
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

func usageError(err error) error { return &codedError{code: ExitUsage, err: err} }

// kinds maps sentinel errors to exit codes, first match wins. Packages add
// their sentinels here as they land; the order puts the most specific first.
var kinds = []struct {
	err  error
	code int
}{
	{tpm.ErrPolicyNotSatisfied, ExitPolicy},
	{agent.ErrTampered, ExitTampered},
	{agent.ErrNotProvisioned, ExitNotProvisioned},
	{agent.ErrAlreadyProvisioned, ExitConflict},
	{agent.ErrKeyExists, ExitConflict},
	{agent.ErrNotPermitted, ExitNotPermitted},
	{policy.ErrNotApproved, ExitNotPermitted},
	{agent.ErrNotFound, ExitNotFound},
	{agent.ErrBadInput, ExitUsage},
	{store.ErrLocked, ExitState},
	{store.ErrCorrupt, ExitState},
	{store.ErrUnknownSchema, ExitState},
	{store.ErrInsecureDir, ExitState},
	{tpm.ErrLockout, ExitLockout},
	{tpm.ErrNoTPM, ExitNoTPM},
	{tpm.ErrFailureMode, ExitTPMFailure},
	{tpm.ErrNoMemory, ExitTPMResources},
	{tpm.ErrBadAuth, ExitBadAuth},
	{tpm.ErrNotFound, ExitNotFound},
	{tpm.ErrSRKMismatch, ExitConflict},
	{tpm.ErrUnsupported, ExitNotPermitted},
	{context.Canceled, ExitInterrupted},
}

// ExitCode decides the exit code for err.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ce *codedError
	if errors.As(err, &ce) {
		return ce.code
	}
	// The daemon's errors carry the code it decided with this same table.
	var remote interface{ ExitCode() int }
	if errors.As(err, &remote) {
		return remote.ExitCode()
	}
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return k.code
		}
	}
	return ExitError
}
