package fleet

import (
	"context"
	"errors"
	"time"
)

// Store errors, told apart with errors.Is.
var (
	ErrNotFound     = errors.New("fleet: not found")
	ErrExists       = errors.New("fleet: already exists")
	ErrNonceUnknown = errors.New("fleet: nonce unknown or already used")
	ErrNonceExpired = errors.New("fleet: nonce expired")
	// ErrNotEnrolled is a record refused because its device was revoked
	// (or is not enrolled) when the record was written: its appraisal ran
	// while an operator revoked it.
	ErrNotEnrolled   = errors.New("fleet: the device is no longer enrolled")
	ErrWrongSecret   = errors.New("fleet: the activation secret is not the credential's")
	ErrRevoked       = errors.New("fleet: device revoked")
	ErrSchemaTooNew  = errors.New("fleet: the database's schema is newer than this provd")
	ErrUnknownDriver = errors.New("fleet: unknown database URL scheme (sqlite:// or postgres://)")
)

// Device states.
const (
	StatePending  = "pending"  // enrolled, its AK not yet activated
	StateEnrolled = "enrolled" // its AK proven to live with its EK
	StateRevoked  = "revoked"
)

// Device is one enrolled TPM. Its ID is the hex SHA-256 of its EK's
// public area (TPMT_PUBLIC): the same TPM enrolls to the same ID.
type Device struct {
	ID       string
	Class    string
	State    string
	EKPublic []byte // TPMT_PUBLIC
	EKCert   []byte // DER
	AKPublic []byte // TPMT_PUBLIC
	// SecretHash is SHA-256 of the credential's secret while pending.
	SecretHash  []byte
	EnrolledAt  time.Time
	UpdatedAt   time.Time
	LastVerdict string // "pass", "fail" or ""
	LastAt      time.Time
}

// Nonce is one issued challenge: single use, until ExpiresAt.
type Nonce struct {
	Nonce     []byte
	DeviceID  string
	ExpiresAt time.Time
}

// Appraisal is one attestation's verdict.
type Appraisal struct {
	ID       string
	DeviceID string
	// Nonce, when set, is the nonce the evidence answered: taken in the
	// same transaction as the record, once across replicas
	// (ErrNonceUnknown, and nothing recorded, when it was taken before).
	Nonce *Nonce
	At    time.Time
	Pass  bool
	// Reasons are why it failed (or, for a pass, notes such as a baseline
	// taken on first use), as JSON.
	Reasons []Reason
	// PCRs are the quoted values, bank name -> index -> hex.
	PCRs map[string]map[int]string
}

// Policy is a device class's golden values: PCR values per bank, and the
// firmware manifests (SHA-256 of the signed payload, as fw manifest show
// prints) a device may report verified. TOFU marks a baseline taken from the
// class's first verified quote rather than set by an operator.
type Policy struct {
	Class     string
	PCRs      map[string]map[int]string
	Manifests []string
	// PKPolicies are the PK policy digests (hex) the class's devices may
	// register with their transfer keys: the endpoint, as the duplication
	// authority, signs approvals over one of these only, never over a
	// digest a device chose.
	PKPolicies []string
	TOFU       bool
	UpdatedAt  time.Time
}

// Secret is an operator's secret or key for a class: delivered, sealed to
// each device's TPM, after a passing attestation (attest fetch).
type Secret struct {
	Class string
	Name  string
	// Kind is fleetapi.KindSecret (Value is the secret, delivered as a sealed data
	// object) or fleetapi.KindKey (Value is a PKCS#8 private key, delivered as a
	// signing key).
	Kind      string
	Value     []byte
	UpdatedAt time.Time
}

// Peer is a device's transfer key as the endpoint holds it, for approving
// duplications to it (Endpoint.ApproveDuplication): vouched for by a quote
// of the device's AK that passed appraisal, and proven resident in the TPM
// the device enrolled.
type Peer struct {
	DeviceID string
	// Identity is the peer identity file served to senders (JSON, as
	// provd peer identity writes it), naming only the enrolled EK
	// certificate.
	Identity   []byte
	ParentName string // the transfer key's TPM name, hex
	PKName     string // the device's PK, which the transfer key's policy names, hex
	PKPolicy   string // its policy digest, hex
	// RegisteredAt is when the file was vouched for: the attestation that
	// carried it passed and its residency challenge was issued.
	RegisteredAt time.Time
	// PolicyAt is the class policy's UpdatedAt when the file was vouched
	// for (the answer binds it): approvals need the policy unchanged since.
	PolicyAt time.Time
}

// Store is where the endpoint keeps its state: one interface, SQLite
// embedded or PostgreSQL for replicas (sql.go), one conformance suite
// (fleettest). Every method is safe for concurrent use, and across
// replicas sharing one database.
type Store interface {
	// PutPending records a device whose AK is not yet activated; a pending
	// record of the same ID is replaced by a retried enrollment of the same
	// AK, or of another once PendingTTL has passed (ErrExists before). An
	// enrolled or revoked device is ErrExists.
	PutPending(ctx context.Context, d Device) error
	// Activate moves a pending device to enrolled when secretHash is its
	// credential's (ErrWrongSecret otherwise), and clears the hash.
	Activate(ctx context.Context, id string, secretHash []byte, now time.Time) (Device, error)
	Device(ctx context.Context, id string) (Device, error)
	// DeviceWithPolicy is the device and its class's policy (nil when the
	// class has none), in one indexed read: an appraisal's only read.
	DeviceWithPolicy(ctx context.Context, id string) (Device, *Policy, error)
	// Devices lists devices by ID, after the given one, at most limit.
	Devices(ctx context.Context, after string, limit int) ([]Device, error)
	Revoke(ctx context.Context, id string, now time.Time) error
	// UseNonce marks a nonce used, once across replicas: ErrNonceUnknown
	// when it was used before. Challenges store nothing (the endpoint
	// authenticates its nonces itself, Endpoint.Challenge); a used nonce is
	// kept until NonceKeep after n.ExpiresAt, and older ones are swept on
	// the way.
	UseNonce(ctx context.Context, n Nonce, now time.Time) error
	// NonceKey is the replicas' shared key for authenticating nonces,
	// made once (the first replica to ask) and kept in the store.
	NonceKey(ctx context.Context) ([]byte, error)
	// RecordAppraisal takes a.Nonce (when set), stores the appraisal and
	// the device's last verdict, in one transaction: an appraisal's only
	// write, made only while the device is enrolled (ErrNotEnrolled, with
	// nothing kept, once it was revoked). Nonces expired more than
	// NonceKeep ago are swept now and then on the way.
	RecordAppraisal(ctx context.Context, a Appraisal) error
	Appraisals(ctx context.Context, deviceID string, limit int) ([]Appraisal, error)
	SetPolicy(ctx context.Context, p Policy) error
	Policy(ctx context.Context, class string) (Policy, error)
	// Baseline stores p as the class's policy only if the class has none
	// (trust on first use, across replicas) and device deviceID, of that
	// class, is enrolled, in one write; it returns the class's policy as it
	// is after, with whether p was the one stored. A class with no policy
	// and a device that is not enrolled (revoked while its appraisal ran)
	// is ErrNotEnrolled, with nothing stored.
	Baseline(ctx context.Context, deviceID string, p Policy) (Policy, bool, error)
	// PutSecret stores (or replaces) a secret delivered to the devices of
	// its class that pass.
	PutSecret(ctx context.Context, s Secret) error
	// Secrets lists a class's secrets, by name.
	Secrets(ctx context.Context, class string) ([]Secret, error)
	// SecretsFor lists the secrets of device id's class, by name, in one
	// read with the device's state: ErrNotEnrolled once it is revoked.
	SecretsFor(ctx context.Context, id string) ([]Secret, error)
	// DeleteSecret removes a class's secret or key: ErrNotFound when none.
	DeleteSecret(ctx context.Context, class, name string) error
	// PutPeer stores (or replaces) a device's transfer key: ErrNotFound
	// when the device is not enrolled.
	PutPeer(ctx context.Context, p Peer) error
	// Peer is a device's transfer key, ErrNotFound when none.
	Peer(ctx context.Context, deviceID string) (Peer, error)
	Close() error
}
