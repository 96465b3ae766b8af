// Package fleetapi is the fleet endpoint's JSON API (provd fleet serve,
// docs/attestation.md): what a device sends and gets back, what an
// operator reads, and the HTTPS client both call it with. It stands apart
// from api, the daemon's contract, so that the endpoint, which has no TPM,
// links nothing of provd's TPM code; and apart from the endpoint (package
// fleet), so that provd, the device's binary, links none of the endpoint's
// store, drivers or metrics. []byte fields are base64, as encoding/json
// writes them.
package fleetapi

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// EnrollRequest is a device's enrollment: its EK certificates (DER) and
// a new AK's public area (TPMT_PUBLIC), for a device class.
type EnrollRequest struct {
	EKCertificates [][]byte `json:"ek_certificates"`
	AKPublic       []byte   `json:"ak_public"`
	Class          string   `json:"class"`
}

// Enrollment is the endpoint's answer: the device's ID (hex SHA-256 of
// its EK's TPMT_PUBLIC) and a credential to its EK for the AK's name, which
// only that TPM, with that AK loaded, can activate.
type Enrollment struct {
	DeviceID         string `json:"device_id"`
	EKCertSHA256     string `json:"ek_cert_sha256"` // the EK certificate the credential is to
	CredentialBlob   []byte `json:"credential_blob"`
	CredentialSecret []byte `json:"credential_secret"`
}

// ActivateRequest returns the credential's secret: the AK lives with
// the EK.
type ActivateRequest struct {
	DeviceID string `json:"device_id"`
	Secret   []byte `json:"secret"`
}

// Device is a device as the endpoint keeps it.
type Device struct {
	DeviceID    string    `json:"device_id"`
	Class       string    `json:"class"`
	State       string    `json:"state"`
	EnrolledAt  time.Time `json:"enrolled_at"`
	LastVerdict string    `json:"last_verdict,omitempty"`
	LastAt      time.Time `json:"last_at,omitzero"`
}

// ChallengeRequest asks for a nonce.
type ChallengeRequest struct {
	DeviceID string `json:"device_id"`
}

// Challenge is a single-use nonce and the PCRs to quote (bank name ->
// indices), valid until ExpiresAt on any replica.
type Challenge struct {
	Nonce     []byte           `json:"nonce"`
	ExpiresAt time.Time        `json:"expires_at"`
	PCRs      map[string][]int `json:"pcrs"`
}

// AttestRequest is a device's evidence: the quote (TPMS_ATTEST and
// TPMT_SIGNATURE as the TPM returned them) over the challenge's nonce, the
// PCR values it covers (bank -> index -> hex), the firmware's event log
// and provd's measurement log (either may be empty).
type AttestRequest struct {
	DeviceID       string                       `json:"device_id"`
	Nonce          []byte                       `json:"nonce"`
	Quote          []byte                       `json:"quote"`
	Signature      []byte                       `json:"signature"`
	PCRs           map[string]map[string]string `json:"pcrs"`
	FirmwareLog    []byte                       `json:"firmware_log,omitempty"`
	MeasurementLog []byte                       `json:"measurement_log,omitempty"`
	// Fetch asks for the secrets the endpoint holds for the device's
	// class, delivered only when this attestation passes.
	Fetch bool `json:"fetch,omitempty"`
	// Peer, when set, is the device's peer identity file (provd peer
	// identity): the device asks the endpoint, the fleet's duplication
	// authority, to approve duplications to its transfer key. The quote's
	// qualifying data is then PeerQualifying(Nonce, Peer): the AK vouches
	// for the file. A pass answers with a PeerChallenge.
	Peer []byte `json:"peer,omitempty"`
}

// peerLabel separates a quote that vouches for a peer identity file from
// every other use of the AK.
var peerLabel = []byte("provd fleet peer v1\x00")

// PeerQualifying is the qualifying data of a quote that registers a peer
// identity file: SHA-256(label || nonce || SHA-256(peer)).
func PeerQualifying(nonce, peer []byte) []byte {
	ps := sha256.Sum256(peer)
	h := sha256.New()
	h.Write(peerLabel)
	h.Write(nonce)
	h.Write(ps[:])
	return h.Sum(nil)
}

// PeerChallenge asks the device to prove its transfer key resident in the
// TPM it enrolled: a credential to its enrolled EK (the certificate
// EKCertSHA256 names) for the transfer key's name, whose secret is
// catalog.ChallengePrefix then the answer (provd peer prove's). Only that
// TPM, with that key loaded and authorized through its PK, opens it.
type PeerChallenge struct {
	ParentName       string    `json:"parent_name"`
	EKCertSHA256     string    `json:"ek_cert_sha256"`
	CredentialBlob   []byte    `json:"credential_blob"`
	CredentialSecret []byte    `json:"credential_secret"`
	ExpiresAt        time.Time `json:"expires_at"`
}

// PeerProveRequest answers a PeerChallenge: POST /v1/attest/peer. Peer
// and ExpiresAt are the attestation's and the challenge's, unchanged.
type PeerProveRequest struct {
	DeviceID  string    `json:"device_id"`
	Peer      []byte    `json:"peer"`
	ExpiresAt time.Time `json:"expires_at"`
	Answer    []byte    `json:"answer"`
}

// PeerRegistration is a device's transfer key as the endpoint holds it,
// proven resident and vouched for by an attestation that passed.
type PeerRegistration struct {
	DeviceID     string    `json:"device_id"`
	ParentName   string    `json:"parent_name"`
	PKName       string    `json:"pk_name"`
	PKPolicy     string    `json:"pk_policy"`
	RegisteredAt time.Time `json:"registered_at"`
}

// Authority is the endpoint's duplication authority key: GET
// /v1/authority. Keys and movable PKs born --duplicable-by this PEM public
// key move only where the endpoint approves.
type Authority struct {
	PublicKey string `json:"public_key"`
}

// DupApprovalRequest is an operator's request for the endpoint's approval
// of one key's duplication to a device's transfer key: POST
// /v1/devices/{id}/dup-approval. ObjectName is the key's TPM name (hex; a
// movable PK's name to move the PK).
type DupApprovalRequest struct {
	ObjectName string `json:"object_name"`
}

// DupApproval is what the sender needs to move the key: the approval file
// (as provd key approve writes it, signed by the endpoint's authority key)
// and the device's peer identity file, naming only its enrolled EK
// certificate (provd dup export --to PEER --approval APPROVAL --peer-pk
// PKName).
type DupApproval struct {
	DeviceID   string          `json:"device_id"`
	ObjectName string          `json:"object_name"`
	PKName     string          `json:"pk_name"`
	Approval   json.RawMessage `json:"approval"`
	Peer       json.RawMessage `json:"peer"`
}

// Delivery is one secret sealed to the device's TPM: a sealed data object
// (Public, TPMT_PUBLIC) in an outer duplication wrapper to its EK (the
// certificate EKCertSHA256 names) that only that TPM can import, usable
// only while the PCRs PCRs selects hold the values of the appraisal that
// passed, only by who proves the device's AK's authValue, and only to be
// unsealed (PolicyPCR, PolicySecret(AK), PolicyCommandCode(Unseal)).
type Delivery struct {
	Name         string           `json:"name"`
	EKCertSHA256 string           `json:"ek_cert_sha256"`
	Public       []byte           `json:"public"`
	Duplicate    []byte           `json:"duplicate"`
	Seed         []byte           `json:"seed"`
	PCRs         map[string][]int `json:"pcrs"`
}

// SecretRequest is an operator's secret for a class (1..128 bytes), or
// with Kind "key" a signing key (PKCS#8 DER: ECDSA P-256 or P-384, RSA
// 2048 to 4096 bits), delivered as a TPM key that only signs.
type SecretRequest struct {
	Kind  string `json:"kind,omitempty"`
	Value []byte `json:"value"`
}

// SecretInfo names a secret or key the endpoint holds; never its value
// (for a key, its public part, PEM).
type SecretInfo struct {
	Class     string    `json:"class"`
	Name      string    `json:"name"`
	Kind      string    `json:"kind"`
	PublicKey string    `json:"public_key,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Reason is why an appraisal failed, or a note on a pass: a code a
// program decides on (docs/attestation.md lists them), and where it
// applies: which PCR in which bank, which event of which log.
type Reason struct {
	Code   string `json:"code"`
	Bank   string `json:"bank,omitempty"`
	PCR    *int   `json:"pcr,omitempty"`
	Log    string `json:"log,omitempty"`
	Event  *int   `json:"event,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// Verdict is an appraisal's outcome.
type Verdict struct {
	AppraisalID string     `json:"appraisal_id"`
	DeviceID    string     `json:"device_id"`
	Pass        bool       `json:"pass"`
	Reasons     []Reason   `json:"reasons"`
	At          time.Time  `json:"at"`
	Deliveries  []Delivery `json:"deliveries,omitempty"`
	// PeerChallenge answers a passing attestation that carried a peer
	// identity file.
	PeerChallenge *PeerChallenge `json:"peer_challenge,omitempty"`
}

// Policy is a device class's golden values: PCR values (bank -> index
// -> hex) and the firmware manifests (manifest_sha256 as fw manifest show
// prints) a device may report verified by its boot hook (empty: any). TOFU
// marks a baseline taken from the class's first verified quote.
type Policy struct {
	Class     string                       `json:"class"`
	PCRs      map[string]map[string]string `json:"pcrs"`
	Manifests []string                     `json:"manifests,omitempty"`
	// PKPolicies are the PK policy digests (hex, provd status's
	// policy_digest on a known-good device) the class's devices may
	// register for duplication approvals (provd attest peer).
	PKPolicies []string  `json:"pk_policies,omitempty"`
	TOFU       bool      `json:"tofu"`
	UpdatedAt  time.Time `json:"updated_at,omitzero"`
}

// CheckSecretName accepts a secret's name: 1..32 of a-z, 0-9, '.', '_',
// '-' (the endpoint and the device both check it).
func CheckSecretName(name string) error {
	if name == "" || len(name) > 32 || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789._-") != "" {
		return fmt.Errorf("secret name %q: 1..32 of a-z, 0-9, '.', '_', '-'", name)
	}
	return nil
}

// String is the reason as one line: its code, where (bank and PCR, log and
// event), and its detail.
func (r Reason) String() string {
	var b strings.Builder
	b.WriteString(r.Code)
	if r.Bank != "" && r.PCR != nil {
		fmt.Fprintf(&b, " %s PCR %d", r.Bank, *r.PCR)
	}
	if r.Log != "" {
		fmt.Fprintf(&b, " (%s log", r.Log)
		if r.Event != nil {
			fmt.Fprintf(&b, ", event %d", *r.Event)
		}
		b.WriteString(")")
	}
	if r.Detail != "" {
		b.WriteString(": " + r.Detail)
	}
	return b.String()
}

// MaxBody bounds a request body: an attestation carries two event logs
// (firmware logs are tens of KB) and a quote.
const MaxBody = 4 << 20

// ErrorBody is the endpoint's error answer.
type ErrorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// Kinds of what the endpoint delivers (SecretRequest.Kind).
const (
	KindSecret = "secret"
	KindKey    = "key"
)

// CodePeerRefused notes a passing attestation whose peer identity file the
// endpoint did not take (not a failure of the appraisal).
const CodePeerRefused = "peer_refused"
