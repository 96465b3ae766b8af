package cli

import (
	"errors"

	"github.com/provd/provd/agent"
)

// Exit codes. They are a contract with scripts and systemd units: documented in
// docs/exit-codes.md and never renumbered. The agent's kinds table decides
// them (agent.Kinds), for the daemon and the in-process CLI alike.
const (
	ExitOK             = agent.ExitOK
	ExitError          = agent.ExitError
	ExitUsage          = agent.ExitUsage
	ExitPolicy         = agent.ExitPolicy
	ExitLockout        = agent.ExitLockout
	ExitNotPermitted   = agent.ExitNotPermitted
	ExitNoTPM          = agent.ExitNoTPM
	ExitNotFound       = agent.ExitNotFound
	ExitState          = agent.ExitState
	ExitTPMFailure     = agent.ExitTPMFailure
	ExitTPMResources   = agent.ExitTPMResources
	ExitBadAuth        = agent.ExitBadAuth
	ExitConflict       = agent.ExitConflict
	ExitNotProvisioned = agent.ExitNotProvisioned
	ExitTampered       = agent.ExitTampered
	ExitInterrupted    = agent.ExitInterrupted
)

// codedError carries an explicit exit code (usage errors).
type codedError struct {
	code int
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

func usageError(err error) error { return &codedError{code: ExitUsage, err: err} }

// ExitCode decides the exit code for err.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ce *codedError
	if errors.As(err, &ce) {
		return ce.code
	}
	// The daemon's errors carry the code it decided with the same table.
	var remote interface{ ExitCode() int }
	if errors.As(err, &remote) {
		return remote.ExitCode()
	}
	return agent.ExitCode(err)
}
