package api

import (
	"errors"
	"fmt"
	"strings"

	"github.com/provd/provd/api/errkind"
	"github.com/provd/provd/tpm"
)

// Sentinels of the agent's expected outcomes. Callers decide with errors.Is;
// the kinds table (kinds.go) gives each its wire name and exit code.
var (
	ErrNotProvisioned     = errors.New("not provisioned: run `provd provision` first")
	ErrAlreadyProvisioned = errors.New("already provisioned (use --force to zeroize and provision again)")
	ErrNotPermitted       = errkind.ErrNotPermitted
	ErrNotFound           = errkind.ErrNotFound
	ErrBadInput           = errkind.ErrBadInput

	// ErrNotExtractable: the key was not created extractable, so nothing can
	// take it out of the TPM; that was decided at its creation.
	ErrNotExtractable = fmt.Errorf("%w: key is not extractable", ErrNotPermitted)
	// ErrKCVMismatch: a key component or the key the components make does
	// not have the key check value the custodians gave; nothing was
	// imported (exit code 16).
	ErrKCVMismatch = errors.New("key check value mismatch")
	// ErrKeyExists: a key of that name exists already.
	ErrKeyExists = errors.New("key name already taken")
	// ErrTampered: a blob, the state or the audit trail failed its integrity
	// check (exit code 14).
	ErrTampered = errors.New("integrity check failed")

	// ErrUntrustedTPM: the TPM's identity is not verified: its EK
	// certificate chains to no trusted manufacturer (exit code 15).
	ErrUntrustedTPM = errors.New("TPM identity not verified")

	// ErrRefused: the daemon refused a request because the caller's role
	// does not allow the operation. It is an ErrNotPermitted (exit code 5).
	ErrRefused = fmt.Errorf("%w: the caller's role does not allow it", ErrNotPermitted)
	// ErrBusy: the daemon's TPM queue did not reach a request before its
	// deadline, or was full (exit code 10, as a TPM out of slots: try again).
	ErrBusy = errors.New("TPM queue busy")
	// ErrAuditMoveUnfinished: the audit trail was moving to a new anchor
	// when provd stopped or the TPM failed (audit.gate marks the move), or
	// a zeroize destroyed the keys and left the trail, its last record
	// waiting: the trail is read against no index until the move is made
	// again, and the error's message names the command that makes it (the
	// next audited operation or provd audit repair; provd zeroize run
	// again after a zeroize). Exit code 8, as a state to finish first.
	ErrAuditMoveUnfinished = errors.New("the audit trail's move to a new anchor is unfinished")
	// ErrStateChanged: another process replaced what the operation worked
	// with in the TPM while it ran: the state's provisioning key
	// (provision --force), or the transfer key an import went under (its
	// peer identity, then the last key under the old one deleted); nothing
	// it made is recorded. Exit code 8, as another provd's change
	// meanwhile: run the command again.
	ErrStateChanged = errors.New("another process replaced what the operation worked with while it ran")
)

// PolicyError says that the platform does not satisfy an object's policy, and
// which PCRs differ from what the policy needs. It unwraps to
// tpm.ErrPolicyNotSatisfied (exit code 3). It crosses the wire as the error
// body's policy detail, so a remote caller gets the same PCR list.
type PolicyError struct {
	Differ []int  // PCRs whose current value differs from the policy's
	Bank   string // their bank
	Reason string // when not a PCR difference: e.g. a revoked signed policy
	Err    error
}

func (e *PolicyError) Error() string {
	var b strings.Builder
	b.WriteString("PCR policy not satisfied")
	if len(e.Differ) > 0 {
		pcrs := make([]string, len(e.Differ))
		for i, p := range e.Differ {
			pcrs[i] = fmt.Sprint(p)
		}
		if len(pcrs) == 1 {
			fmt.Fprintf(&b, ": %s PCR %s differs from the policy", e.Bank, pcrs[0])
		} else {
			fmt.Fprintf(&b, ": %s PCRs %s differ from the policy", e.Bank, strings.Join(pcrs, ","))
		}
	}
	if e.Reason != "" {
		b.WriteString(": " + e.Reason)
	}
	return b.String()
}

func (e *PolicyError) Unwrap() []error { return []error{tpm.ErrPolicyNotSatisfied, e.Err} }
