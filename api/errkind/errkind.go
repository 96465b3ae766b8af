// Package errkind holds the two most general sentinels of the wire
// contract, bad input and not permitted, apart from api: api links the TPM
// package, and packages that must stay pure (officer, which the fleet
// endpoint uses to sign duplication approvals without a TPM) wrap these.
// api.ErrBadInput and api.ErrNotPermitted are these values, so errors.Is
// and the kinds table (api/kinds.go) see one error either way.
package errkind

import "errors"

var (
	// BadInput is api.ErrBadInput.
	BadInput = errors.New("bad input")
	// NotPermitted is api.ErrNotPermitted.
	NotPermitted = errors.New("not permitted")
)
