package api

// The bodies of the calls that take or give a single value (docs/api.md).
// Key names travel in the body, never in the path, so every endpoint
// decodes one strict JSON object.

// SealResponse carries the sealed blob (docs/formats.md).
type SealResponse struct {
	Blob []byte `json:"blob"`
}

// UnsealRequest is POST /v1/unseal.
type UnsealRequest struct {
	Blob []byte `json:"blob"`
}

// UnsealResponse carries the secret.
type UnsealResponse struct {
	Secret []byte `json:"secret"`
}

// Wipe clears the secret.
func (w *UnsealResponse) Wipe() { clear(w.Secret) }

// PolicyInstallRequest is POST /v1/policy/install: policy.json's bytes.
type PolicyInstallRequest struct {
	Policy []byte `json:"policy"`
}

// AuditRepairRequest is POST /v1/audit/repair.
type AuditRepairRequest struct {
	AnchorLast bool `json:"anchor_last,omitempty"`
}

// KeyName names a key: POST /v1/keys/public, /v1/keys/delete,
// /v1/keys/export-blob.
type KeyName struct {
	Name string `json:"name"`
}

// ImportBlobRequest is POST /v1/keys/import-blob: a TSS2 PRIVATE KEY file.
type ImportBlobRequest struct {
	Name string `json:"name"`
	PEM  []byte `json:"pem"`
}

// KeyPublicResponse: the key's description and its public key, PKIX DER.
type KeyPublicResponse struct {
	Key    KeyInfo `json:"key"`
	Public []byte  `json:"public_key_der"`
}

// SignRequest is POST /v1/keys/sign: digest is the hash of the message.
type SignRequest struct {
	Name   string `json:"name"`
	Digest []byte `json:"digest"`
	Scheme string `json:"scheme,omitempty"`
	Hash   string `json:"hash,omitempty"` // HashName; "" the key's default
}

// DataRequest is POST /v1/keys/hmac, /v1/keys/encrypt-data,
// /v1/keys/decrypt-data.
type DataRequest struct {
	Name string `json:"name"`
	Data []byte `json:"data"`
}

// Wipe clears the data (it may be a secret).
func (w *DataRequest) Wipe() { clear(w.Data) }

// ECDHRequest is POST /v1/keys/ecdh: the peer's public point, uncompressed.
type ECDHRequest struct {
	Name  string `json:"name"`
	Curve string `json:"curve"` // CurveName: P-256, P-384
	Peer  []byte `json:"peer"`
}

// DecryptRequest is POST /v1/keys/decrypt (RSA-OAEP, empty label).
type DecryptRequest struct {
	Name       string `json:"name"`
	Ciphertext []byte `json:"ciphertext"`
	Hash       string `json:"hash,omitempty"`
}

// DataResponse carries the bytes an operation produced (signature, MAC,
// shared secret, plaintext, envelope, key file).
type DataResponse struct {
	Data []byte `json:"data"`
}

// Wipe clears the data (it may be a secret).
func (w *DataResponse) Wipe() { clear(w.Data) }

// Empty is the answer of an operation without a result.
type Empty struct{}
