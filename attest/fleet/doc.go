// Package fleet is the fleet attestation endpoint's core (provd fleet
// serve): enrollment by EK certificate and credential activation of the
// device's AK, single-use challenges, the appraisal of quotes and event
// logs against a device class's golden policy, and the store that keeps
// them (SQLite embedded, or PostgreSQL shared by replicas). It verifies
// with package attest and sends no TPM command: the endpoint has no TPM
// (docs/attestation.md).
package fleet
