// Package errkind holds the most general sentinels of the wire contract,
// bad input, not permitted and not found, apart from api: api links the TPM
// package, and packages that must stay pure (officer, which the fleet
// endpoint uses to sign duplication approvals without a TPM) wrap these.
// The fleet endpoint's client maps its HTTP statuses to them, so that
// provd fleet and attest commands exit as every other command does.
// api.ErrBadInput, api.ErrNotPermitted and api.ErrNotFound are these values, so errors.Is
// and the kinds table (api/kinds.go) see one error either way.
package errkind

import "errors"

var (
	// ErrBadInput is api.ErrBadInput.
	ErrBadInput = errors.New("bad input")
	// ErrNotPermitted is api.ErrNotPermitted.
	ErrNotPermitted = errors.New("not permitted")
	// ErrNotFound is api.ErrNotFound.
	ErrNotFound = errors.New("not found")
)
