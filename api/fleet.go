package api

import (
	"errors"
	"time"

	"github.com/provd/provd/attest/fleetapi"
)

// ErrAttestationFailed: the fleet endpoint appraised this device's evidence
// and it did not pass; the verdict's reasons say why (exit 23). The fleet
// API's types are in attest/fleetapi.
var ErrAttestationFailed = errors.New("attestation failed")

// AttestActivateResult is the activated credential's secret (the caller
// sends it to the endpoint and clears it).
type AttestActivateResult struct {
	Secret []byte `json:"secret"`
}

// Wipe clears the secret.
func (r *AttestActivateResult) Wipe() { clear(r.Secret) }

// AttestQuoteRequest asks for a quote of PCRs (bank name -> indices) over a
// nonce.
type AttestQuoteRequest struct {
	Nonce []byte           `json:"nonce"`
	PCRs  map[string][]int `json:"pcrs"`
}

// AttestQuoteResult is a quote (TPMS_ATTEST), its signature
// (TPMT_SIGNATURE) and the PCR values it covers (bank -> index -> hex).
type AttestQuoteResult struct {
	Quote     []byte                       `json:"quote"`
	Signature []byte                       `json:"signature"`
	PCRs      map[string]map[string]string `json:"pcrs"`
}

// AttestInstallRequest carries the endpoint's deliveries.
type AttestInstallRequest struct {
	Deliveries []fleetapi.Delivery `json:"deliveries"`
}

// AttestInstallResult names the secrets and keys installed, and why each
// other was not: one delivery the TPM refuses does not keep the others
// out (found by review: a key no TPM imports kept every later delivery of
// the class from every device).
type AttestInstallResult struct {
	Installed []string          `json:"installed"`
	Failed    map[string]string `json:"failed,omitempty"`
}

// AttestSecretRequest names a delivered secret to unseal.
type AttestSecretRequest struct {
	Name string `json:"name"`
}

// AttestSecretResult is a delivered secret, unsealed.
type AttestSecretResult struct {
	Secret []byte `json:"secret"`
}

// Wipe clears the secret.
func (r *AttestSecretResult) Wipe() { clear(r.Secret) }

// AttestVerdict is the fleet endpoint's last verdict on this device, kept
// in the state for status (what the endpoint answered; the endpoint's own
// record is the authority).
type AttestVerdict struct {
	Endpoint    string            `json:"endpoint"`
	DeviceID    string            `json:"device_id"`
	AppraisalID string            `json:"appraisal_id,omitempty"`
	Pass        bool              `json:"pass"`
	Reasons     []fleetapi.Reason `json:"reasons"`
	At          time.Time         `json:"at"`
}
