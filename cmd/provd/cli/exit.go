package cli

import (
	"errors"

	"github.com/provd/provd/api"
)

// codedError carries an explicit exit code (usage errors).
type codedError struct {
	code int
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

func usageError(err error) error { return &codedError{code: api.ExitUsage, err: err} }

// ExitCode decides the exit code for err: a usage error's, else the one
// table's (api.ExitCode: the daemon's errors carry the code it decided).
func ExitCode(err error) int {
	var ce *codedError
	if errors.As(err, &ce) {
		return ce.code
	}
	return api.ExitCode(err)
}
