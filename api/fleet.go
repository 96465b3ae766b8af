package api

import "errors"

// ErrAttestationFailed: the fleet endpoint appraised this device's evidence
// and it did not pass; the verdict's reasons say why (exit 23). The fleet
// API's types are in attest/fleetapi.
var ErrAttestationFailed = errors.New("attestation failed")
