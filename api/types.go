package api

import (
	"crypto"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/internal/strictjson"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/tpm"
)

// ProvisionRequest says how to seal the PK: POST /v1/provision.
type ProvisionRequest struct {
	// Bank and PCRs select the PCRs of a plain PCR policy over their current
	// values (default: sha256, 0,2,4,7).
	Bank policy.Bank
	PCRs []int
	// Values, when set, are golden values to seal to instead of the current
	// ones (provisioning in a factory before the final firmware is measured).
	Values *policy.PCRValues
	// Signer, when set, makes the PK's policy PolicyAuthorize(Signer): the
	// signer approves PCR values later with signed policies.
	Signer crypto.PublicKey
	// Officer, when set, is the crypto officer's approval key (offline;
	// ECDSA P-256/P-384 or RSA >= 3072, as for policy signers). The TPM then
	// derives only the key recipes the officer approved (DeriveRequest.
	// Approval), and an extractable key leaves only with the officer's
	// approval of its destination. Without it the device has no derived
	// and no extractable keys.
	Officer crypto.PublicKey
	// Force zeroizes an existing PK first.
	Force bool
	// PolicyClass, with Signer, names the fleet or device class signed
	// policies must be made for (agent.PolicyRef): a policy signed for
	// another class does not unlock this device.
	PolicyClass string
	// AllowResettable admits PCRs that software can reset (16..23,
	// policy.PCRValues.Resettable): for tests and demonstrations only.
	AllowResettable bool
	// EKCA, EKCert and TrustOnFirstUse establish the TPM's identity at first
	// contact, as IdentityRequest says; the SRK it yields is pinned in the
	// state. A TPM already pinned (provision --force) keeps its pin and
	// needs none of them.
	EKCA            []byte
	EKCert          []byte
	TrustOnFirstUse bool
	// DuplicableTo, PeerPK and DuplicableBy make the PK movable, as a
	// created key's (CreateRequest): bound at birth to one peer's transfer
	// key (enrolled as PeerPK, its EK chaining to EKCA), or approved later
	// by an authority. Only with Signer and Officer: a PCR-bound PK works
	// only where the PCRs match, and the receiver takes a PK only with the
	// officer's approval. Without them the PK never leaves its TPM.
	DuplicableTo *PeerIdentity
	PeerPK       string
	DuplicableBy string // PEM
	// Residency proves DuplicableTo's transfer key resident in its TPM
	// (api.PeerChallenge): required with DuplicableTo.
	Residency *Residency
}

// Identity is the first-contact part of r.
func (r ProvisionRequest) Identity() IdentityRequest {
	return IdentityRequest{EKCA: r.EKCA, EKCert: r.EKCert, TrustOnFirstUse: r.TrustOnFirstUse}
}

// provisionJSON is ProvisionRequest on the wire: pcr_values in the file form
// of docs/policy.md, policy_signer a PEM public key.
type provisionJSON struct {
	Bank    string            `json:"bank,omitempty"`
	PCRs    []int             `json:"pcrs,omitempty"`
	Values  *policy.PCRValues `json:"pcr_values,omitempty"`
	Signer  string            `json:"policy_signer,omitempty"`
	Force   bool              `json:"force,omitempty"`
	EKCA    []byte            `json:"ek_ca,omitempty"`
	EKCert  []byte            `json:"ek_cert,omitempty"`
	TOFU    bool              `json:"trust_on_first_use,omitempty"`
	Reset   bool              `json:"allow_resettable,omitempty"`
	Class   string            `json:"policy_class,omitempty"`
	Officer string            `json:"officer_key,omitempty"`
	DupTo   *PeerIdentity     `json:"duplicable_to,omitempty"`
	PeerPK  string            `json:"peer_pk,omitempty"`
	DupBy   string            `json:"duplicable_by,omitempty"`
	Proven  *Residency        `json:"residency,omitempty"`
}

func (r ProvisionRequest) MarshalJSON() ([]byte, error) {
	w := provisionJSON{Bank: bankName(r.Bank), PCRs: r.PCRs, Values: r.Values, Force: r.Force,
		EKCA: r.EKCA, EKCert: r.EKCert, TOFU: r.TrustOnFirstUse, Reset: r.AllowResettable, Class: r.PolicyClass,
		DupTo: r.DuplicableTo, PeerPK: r.PeerPK, DupBy: r.DuplicableBy, Proven: r.Residency}
	var err error
	if w.Signer, err = signerPEM(r.Signer); err != nil {
		return nil, err
	}
	if w.Officer, err = signerPEM(r.Officer); err != nil {
		return nil, err
	}
	return json.Marshal(w)
}

// UnmarshalJSON decodes strictly; a malformed field is ErrBadInput.
func (r *ProvisionRequest) UnmarshalJSON(b []byte) error {
	var w provisionJSON
	if err := strictjson.Decode(b, &w); err != nil {
		return fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	*r = ProvisionRequest{PCRs: w.PCRs, Values: w.Values, Force: w.Force,
		EKCA: w.EKCA, EKCert: w.EKCert, TrustOnFirstUse: w.TOFU, AllowResettable: w.Reset, PolicyClass: w.Class,
		DuplicableTo: w.DupTo, PeerPK: w.PeerPK, DuplicableBy: w.DupBy, Residency: w.Proven}
	var err error
	if r.Bank, err = parseBank(w.Bank); err != nil {
		return err
	}
	if r.Signer, err = parseSigner(w.Signer); err != nil {
		return err
	}
	r.Officer, err = parseSigner(w.Officer)
	return err
}

// DefaultPCRs are the PCRs a plain PCR policy covers by default: firmware
// code (0), option ROM code (2), boot loader (4) and Secure Boot state (7).
var DefaultPCRs = []int{0, 2, 4, 7}

// ProvisionResult describes the new PK.
type ProvisionResult struct {
	PKName       string `json:"pk_name"`
	DName        string `json:"derivation_parent_name"`
	PolicyKind   string `json:"policy_kind"`
	PolicyDigest string `json:"policy_digest"`
	// Bank and PCRs of a PCR policy.
	Bank string `json:"bank,omitempty"`
	PCRs []int  `json:"pcrs,omitempty"`
	// Counter is the policy counter's value for a signed policy: signed
	// policies for this device need a version >= Counter.
	Counter       *uint64 `json:"policy_counter,omitempty"`
	CounterHandle string  `json:"policy_counter_handle,omitempty"`
	// TPMTrust is how the pinned TPM identity was established (Identity's
	// Trust).
	TPMTrust string `json:"tpm_trust"`
	// Officer is the TPM name of the crypto officer's approval key, when one
	// was named.
	Officer string `json:"officer,omitempty"`
	// Movable says where a movable PK may go: "to <transfer key name>" or
	// "by <authority name>"; empty: it never leaves its TPM.
	Movable string `json:"movable,omitempty"`
	// Adopted: the PK was moved here from a peer (provision --from); its
	// name is the origin's.
	Adopted bool `json:"adopted,omitempty"`
}

// SealRequest says what to seal and to which policy: POST /v1/seal. With
// neither PCRs nor Signer, the secret gets the PK's own policy.
type SealRequest struct {
	Data   []byte
	Bank   policy.Bank
	PCRs   []int
	Signer crypto.PublicKey
	// AllowResettable admits PCRs that software can reset, as for
	// ProvisionRequest.
	AllowResettable bool
}

type sealJSON struct {
	Data   []byte `json:"data"`
	Bank   string `json:"bank,omitempty"`
	PCRs   []int  `json:"pcrs,omitempty"`
	Signer string `json:"policy_signer,omitempty"`
	Reset  bool   `json:"allow_resettable,omitempty"`
}

func (r SealRequest) MarshalJSON() ([]byte, error) {
	w := sealJSON{Data: r.Data, Bank: bankName(r.Bank), PCRs: r.PCRs, Reset: r.AllowResettable}
	var err error
	if w.Signer, err = signerPEM(r.Signer); err != nil {
		return nil, err
	}
	return json.Marshal(w)
}

// UnmarshalJSON decodes strictly; a malformed field is ErrBadInput.
func (r *SealRequest) UnmarshalJSON(b []byte) error {
	var w sealJSON
	if err := strictjson.Decode(b, &w); err != nil {
		clear(w.Data)
		return fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	*r = SealRequest{Data: w.Data, PCRs: w.PCRs, AllowResettable: w.Reset}
	var err error
	if r.Bank, err = parseBank(w.Bank); err != nil {
		return err
	}
	r.Signer, err = parseSigner(w.Signer)
	return err
}

// Wipe clears the secret.
func (r *SealRequest) Wipe() { clear(r.Data) }

// PolicyInstallResult reports an installed signed policy.
type PolicyInstallResult struct {
	Version   uint64 `json:"version"`
	Counter   uint64 `json:"policy_counter"`
	Satisfied bool   `json:"satisfied_now"`
	Differ    []int  `json:"pcrs_differ,omitempty"`
}

// PolicyState is what `provd policy show` reports.
type PolicyState struct {
	Kind      string            `json:"kind"`
	Digest    string            `json:"digest"`
	Bank      string            `json:"bank,omitempty"`
	Needed    map[int]string    `json:"pcrs_needed,omitempty"`
	Current   map[int]string    `json:"pcrs_current,omitempty"`
	Differ    []int             `json:"pcrs_differ"`
	Satisfied bool              `json:"satisfied"`
	Signed    *SignedPolicyInfo `json:"signed_policy,omitempty"`
	Reason    string            `json:"reason,omitempty"`
}

// SignedPolicyInfo describes the installed signed policy.
type SignedPolicyInfo struct {
	Installed bool   `json:"installed"`
	Version   uint64 `json:"version,omitempty"`
	Counter   uint64 `json:"policy_counter"`
	Signer    string `json:"signer_name"`
}

// Status is what `provd status` reports.
type Status struct {
	Provisioned  bool   `json:"provisioned"`
	PKName       string `json:"pk_name,omitempty"`
	DName        string `json:"derivation_parent_name,omitempty"`
	PolicyKind   string `json:"policy_kind,omitempty"`
	PolicyDigest string `json:"policy_digest,omitempty"`
	Officer      string `json:"officer,omitempty"` // TPM name of the crypto officer's approval key
	// Movable says where a movable PK may go (ProvisionResult.Movable);
	// recipes for it are approved with key approve --movable.
	Movable string `json:"movable,omitempty"`
	// PKPublic is the PK's public area (TPM2B_PUBLIC), whose name is
	// PKName: its attributes and policy say whether and where it can move,
	// which whoever enrolls the device checks (docs/transfer.md).
	PKPublic   []byte       `json:"pk_public,omitempty"`
	Policy     *PolicyState `json:"policy,omitempty"`
	Keys       int          `json:"keys"`
	AuditLines int          `json:"audit_lines"`
	AuditHead  string       `json:"audit_head,omitempty"`
	AuditError string       `json:"audit_error,omitempty"`
	// TPMTrust is how the pinned TPM identity was established (Identity's
	// Trust); "" when none is pinned.
	TPMTrust string `json:"tpm_trust,omitempty"`
	// Warnings name what weakens the device's protection now, each with
	// what it allows (the owner hierarchy without authorization, an
	// unpinned TPM).
	Warnings []string `json:"warnings,omitempty"`
	// Attestation is the fleet endpoint's last verdict on this device, as
	// provd attest now recorded it (docs/attestation.md).
	Attestation *AttestVerdict `json:"attestation,omitempty"`
}

// TPMInfo is what `provd tpm info` shows: the TPM as it was opened, what it
// says about itself, and whether the Go FIPS 140-3 module is on in the
// process that talks to it (the daemon's, through the API).
type TPMInfo struct {
	TPM string `json:"tpm"`
	tpm.Info
	GoFIPS140 bool `json:"go_fips140"`
}

// IdentityRequest is POST /v1/tpm/identity: how to trust the TPM's
// endorsement key.
type IdentityRequest struct {
	// EKCA is a PEM bundle of the manufacturer certificates that vouch for
	// EK certificates (roots and issuing CAs).
	EKCA []byte `json:"ek_ca,omitempty"`
	// EKCert is the EK certificate (DER or PEM) of a TPM that keeps none in
	// NV (firmware TPMs); empty: read it from NV.
	EKCert []byte `json:"ek_cert,omitempty"`
	// TrustOnFirstUse accepts the EK certificate with nothing to verify it
	// by (no EKCA); the identity then says so. With EKCA given, a
	// certificate it does not vouch for is refused all the same.
	TrustOnFirstUse bool `json:"trust_on_first_use,omitempty"`
}

// Trust levels of an Identity.
const (
	TrustManufacturer = "manufacturer"       // the EK certificate chains to EKCA
	TrustOnFirstUse   = "trust-on-first-use" // nothing vouched for it
)

// Identity is the TPM as provd establishes it at first contact: the EK from
// its certificate, never from the bus, and the SRK as the TPM stated it in a
// response authenticated by a session salted to that EK.
type Identity struct {
	Trust        string   `json:"trust"`
	EKCertSource string   `json:"ek_cert_source"` // "nv 0x01c00002", or "file"
	EKCertSHA256 string   `json:"ek_cert_sha256"`
	EKKey        string   `json:"ek_key"` // "RSA 2048", "ECC P-256", "ECC P-384"
	Subject      string   `json:"subject"`
	Issuer       string   `json:"issuer"`
	Manufacturer string   `json:"tpm_manufacturer,omitempty"`
	Model        string   `json:"tpm_model,omitempty"`
	Version      string   `json:"tpm_version,omitempty"`
	Chain        []string `json:"chain,omitempty"` // subjects, the EK's issuer to the root
	// SRKName is the SRK's TPM name, authenticated; SRKPersistent says
	// whether 0x81000001 holds that SRK (false: absent, or another key), as
	// an unauthenticated ReadPublic says: provision checks it for real.
	SRKName       string `json:"srk_name"`
	SRKPersistent bool   `json:"srk_persistent"`
	// EKCert is the EK certificate verified (DER), which the state keeps
	// (not sent: EKCertSHA256 names it).
	EKCert []byte `json:"-"`
}

// ZeroizeOptions says how far zeroize goes: POST /v1/zeroize.
type ZeroizeOptions struct {
	// SRK also evicts the SRK (it is recreated identically by the next
	// provision: it is derived from the owner seed).
	SRK bool `json:"srk,omitempty"`
}

// ZeroizeResult lists what was removed. With Authenticated it is what the
// TPM confirmed in a session salted to the pinned SRK (each removal's
// response, then a read-back of the handles); without it (no SRK pinned) it
// is what the TPM's answers said, which an interposer on the bus could have
// written.
type ZeroizeResult struct {
	NVIndices  []string `json:"nv_indices_removed"`
	Flushed    int      `json:"transient_handles_flushed"`
	SRKEvicted bool     `json:"srk_evicted"`
	// GateEvicted: the audit trail's gate key, persistent at
	// 0x81007601 (agent.AuditGateHandle), is gone (or was not there).
	GateEvicted   bool   `json:"audit_gate_evicted"`
	Authenticated bool   `json:"tpm_authenticated"`
	AuditLog      string `json:"audit_log_archived,omitempty"`
}

// AuditReanchorResult is what audit reanchor did: the trail's length and
// head after its audit-anchor record, that record (what the TPM held and
// what the trail expected), what verification found before, and where a
// trail whose lines no longer linked up was archived.
type AuditReanchorResult struct {
	Lines       int          `json:"lines"`
	Head        string       `json:"head"`
	Found       string       `json:"found,omitempty"`
	ArchivedLog string       `json:"archived_log,omitempty"`
	Record      audit.Record `json:"record"`
}

// Key kinds.
const (
	KindDerived = "derived"
	KindCreated = "created"
	// KindImported is a key brought in from a PKCS#8 backup (provd key
	// import): stored TPM-wrapped like a created key, but not born in this
	// TPM.
	KindImported = "imported"
	// KindTransferred is a key duplicated to this TPM from a peer (provd
	// dup import): under the transfer key, with its own authValue.
	KindTransferred = "transferred"
	// KindKEK is an AES key-encryption key entered from custodians'
	// components (provd kek import): it wraps and unwraps backups inside
	// the TPM and never leaves it.
	KindKEK = "kek"
)

// KeyInfo describes an operational key.
type KeyInfo struct {
	Name        string    `json:"name"`
	Kind        string    `json:"kind"`
	Type        string    `json:"type"`
	Usage       string    `json:"usage"`   // catalog.UsageSign, ...
	Label       string    `json:"label"`   // derived keys; "" for created ones
	Context     string    `json:"context"` // derived keys; may be ""
	Extractable bool      `json:"extractable"`
	ObjectName  string    `json:"object_name"`
	Policy      string    `json:"policy_digest"`
	CreatedAt   time.Time `json:"created_at"`
	// KCV is a KEK's key check value (hex, 6 digits); "" for other keys.
	KCV string `json:"kcv,omitempty"`
	// SignerCanMove: the key was made before review 70 with a policy whose
	// use branch is bound to no command, under a signed PK policy: the
	// PK's policy signer, with the state directory and the TPM, can move
	// it (docs/keys.md says how to replace it). Set by key list.
	SignerCanMove bool `json:"signer_can_move,omitempty"`
}

// DefaultHash is the hash a signature with this key uses unless told
// otherwise: SHA-384 for P-384 keys, SHA-256 for the others.
func (k KeyInfo) DefaultHash() crypto.Hash { return catalog.DefaultHash(k.Type) }

// DeriveRequest asks for a derived key: POST /v1/keys/derive.
type DeriveRequest struct {
	Name    string `json:"name"`
	Label   string `json:"label"`
	Context string `json:"context,omitempty"`
	Type    string `json:"type,omitempty"`
	Usage   string `json:"usage,omitempty"`
	// Approval is the crypto officer's approval of this recipe under this
	// PK's policy (provd key approve): the TPM derives nothing else.
	Approval *policy.Approval `json:"approval,omitempty"`
}

// CreateRequest asks for a TPM-generated key under the PK: POST
// /v1/keys/create.
type CreateRequest struct {
	Name        string `json:"name"`
	Type        string `json:"type,omitempty"`
	Usage       string `json:"usage,omitempty"`
	Extractable bool   `json:"extractable,omitempty"`
	// DuplicableTo binds the key at birth to one peer's transfer key (it
	// goes there without an approval, and nowhere else); DuplicableBy
	// (PEM) names an authority whose approvals, not the officer's, send it
	// to peers. Either makes the key extractable, to peers only: it is
	// never backed up (docs/transfer.md). EKCA is the manufacturer roots
	// the peer's EK certificate must chain to (the daemon's ek_ca when
	// none).
	DuplicableTo *PeerIdentity `json:"duplicable_to,omitempty"`
	// PeerPK is the PK name enrolled for the DuplicableTo device, which the
	// peer file's transfer key must be bound to (found by review: the check
	// lived only in the CLI).
	PeerPK       string `json:"peer_pk,omitempty"`
	DuplicableBy string `json:"duplicable_by,omitempty"`
	// Residency proves DuplicableTo's transfer key resident in its TPM
	// (api.PeerChallenge): required with DuplicableTo.
	Residency *Residency `json:"residency,omitempty"`
	EKCA      []byte     `json:"ek_ca,omitempty"`
}

// KEKImportRequest enters an AES KEK from custodians' components: POST
// /v1/kek/import. Each component (16 or 32 bytes, all of one size) comes
// with its key check value and the combined key's KCV is what the
// custodians confirmed; the agent checks all of them before the TPM sees
// anything. Components are secret: whoever holds a request clears it.
type KEKImportRequest struct {
	Name       string   `json:"name"`
	Components [][]byte `json:"components"`
	KCVs       []string `json:"kcvs"` // hex, one per component
	KCV        string   `json:"kcv"`  // hex, the combined key's
	// Usage is "wrap" (the default: provd key export) or "unwrap" (provd
	// key import): the TPM holds a KEK to one direction.
	Usage string `json:"usage,omitempty"`
}

// Wipe clears the components.
func (r *KEKImportRequest) Wipe() {
	for _, c := range r.Components {
		clear(c)
	}
}

// KeyExportRequest asks for an extractable key as PKCS#8 under AES key wrap
// with padding (RFC 5649) with a KEK in the TPM: POST /v1/keys/export.
// Approval is the crypto officer's approval of this key's export under
// this KEK (provd key approve --export --kek-object-name): the TPM
// duplicates nothing without its first part, and provd wraps under no KEK
// but the one its second part names.
type KeyExportRequest struct {
	Name     string          `json:"name"`
	KEK      string          `json:"kek"`
	Approval *ExportApproval `json:"approval"`
}

// KeyImportRequest brings a PKCS#8 key wrapped under a KEK (RFC 5649) into
// the TPM: POST /v1/keys/import. The key is not extractable unless asked.
type KeyImportRequest struct {
	Name        string `json:"name"`
	KEK         string `json:"kek"`
	Wrapped     []byte `json:"wrapped"`
	Usage       string `json:"usage,omitempty"`
	Extractable bool   `json:"extractable,omitempty"`
}

// PeerIdentity is what a device tells a peer that will send it keys (provd
// peer identity; docs/formats.md): its EK certificates, the public area of
// its transfer key (what keys are duplicated to), and what a key must be
// bound to to work on it. Nothing in it is secret; nothing in it is
// trusted until the sender has verified an EK certificate against the
// manufacturer's roots, and the duplicate's inner key is bound, through a
// credential, to that EK and the transfer key's name.
type PeerIdentity struct {
	Format         int       `json:"format"`
	EKCertificates [][]byte  `json:"ek_certificates"` // DER
	Parent         []byte    `json:"parent"`          // TPM2B_PUBLIC of the transfer key
	ParentName     string    `json:"parent_name"`     // its TPM name, hex
	PKName         string    `json:"pk_name"`         // the device's PK, which the transfer key's policy names, hex
	PKPolicy       string    `json:"pk_policy"`       // the device's PK policy digest, hex
	Officer        string    `json:"officer"`         // the TPM name of its officer key, hex
	CreatedAt      time.Time `json:"created_at"`
}

// PeerFormat is PeerIdentity's format number.
const PeerFormat = 1

// DupExportRequest duplicates extractable key Name to the peer: POST
// /v1/dup/export. EKCA is the manufacturer roots the peer's EK certificate
// must chain to (the daemon's ek_ca when none); Approval is the crypto
// officer's approval of this key's duplication to the peer's transfer key.
type DupExportRequest struct {
	Name     string           `json:"name"`
	Peer     PeerIdentity     `json:"peer"`
	Approval *policy.Approval `json:"approval"`
	EKCA     []byte           `json:"ek_ca,omitempty"`
}

// DupFile is a key duplicated to a peer (provd dup export; docs/formats.md):
// TPM2_Duplicate's output with an inner wrapper whose key, with the key's
// authValue, is a credential to the peer's EK for its transfer key's name:
// only that TPM, with that key loaded by the device's provd, recovers it.
type DupFile struct {
	Format           int    `json:"format"`
	Key              string `json:"key"` // the key's name on the origin
	Type             string `json:"type"`
	Usage            string `json:"usage"`
	Public           []byte `json:"public"` // TPM2B_PUBLIC
	Duplicate        []byte `json:"duplicate"`
	Seed             []byte `json:"seed"`
	CredentialBlob   []byte `json:"credential_blob"`
	CredentialSecret []byte `json:"credential_secret"`
	ParentName       string `json:"parent_name"`
	PKPolicy         string `json:"pk_policy"`
	Officer          string `json:"officer"`
	EKCertSHA256     string `json:"ek_cert_sha256"`
	// DupTo and DupBy are the key's duplication rule when it was born with
	// one (--duplicable-to: the bound transfer key's name; --duplicable-by:
	// the authority's PEM public key): the receiver needs them to satisfy
	// the key's policy.
	DupTo string `json:"dup_to,omitempty"`
	DupBy string `json:"dup_by,omitempty"`
	// Approval is the approval the sender duplicated with (the officer's,
	// or the key's authority's); the receiver takes the key only with its
	// own officer's approval of it to its transfer key, this one or one
	// given at import.
	Approval *policy.Approval `json:"approval,omitempty"`
	// State is, for a moved PK (Type "pk"), everything under it that the
	// receiver adopts (the PK's record with its authValue, the derivation
	// parent, the keys, each with its blob), sealed with AES-256-GCM under
	// a key that travels in the credential (docs/formats.md).
	State     []byte    `json:"state,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// DupFormat is DupFile's format number.
const DupFormat = 1

// DupTypePK is DupFile.Type for a moved PK (provd dup export --pk).
const DupTypePK = "pk"

// PKExportRequest moves a movable PK, with everything under it, to a peer:
// POST /v1/pk/export. PeerPK is the PK name enrolled for the peer (its
// transfer key must be bound to it); Approval is the duplication
// authority's approval of the PK to the peer's transfer key (a PK
// provisioned --duplicable-by), or the officer's, which the receiver wants.
type PKExportRequest struct {
	Peer     PeerIdentity     `json:"peer"`
	PeerPK   string           `json:"peer_pk"`
	Approval *policy.Approval `json:"approval,omitempty"`
	EKCA     []byte           `json:"ek_ca,omitempty"`
}

// PKAdoptRequest makes the PK moved here in Dup this device's, with
// everything under it, replacing this device's own PK: POST
// /v1/provision/from. Approval is the crypto officer's approval of that PK
// to this device's transfer key, when the file does not carry one.
type PKAdoptRequest struct {
	Dup      DupFile          `json:"dup"`
	Approval *policy.Approval `json:"approval,omitempty"`
	// Force acknowledges that this device's own PK is replaced: what it
	// sealed under it no longer unseals (as provision --force).
	Force bool `json:"force,omitempty"`
}

// DupImportRequest imports a duplicate made for this device as key Name:
// POST /v1/dup/import.
type DupImportRequest struct {
	Name string  `json:"name"`
	Dup  DupFile `json:"dup"`
	// Approval is the receiver's crypto officer's approval of this key to
	// this device's transfer key, when the file does not carry one (keys
	// born --duplicable-to or --duplicable-by).
	Approval *policy.Approval `json:"approval,omitempty"`
}

// SignOptions choose the scheme and hash; zero values pick the key's
// defaults (ECDSA; RSASSA-PKCS1-v1_5; SHA-256, SHA-384 for P-384).
type SignOptions struct {
	Scheme string
	Hash   crypto.Hash
}

// maxTransferFile bounds a peer identity or duplicate file: EK certificates
// and an RSA-4096 duplicate are a few KB.
const maxTransferFile = 64 << 10

// maxPKFile bounds a moved PK's file: its state holds every key under it
// (about 1 KB each), well under the daemon's request limit.
const maxPKFile = 2 << 20

// ParsePeerIdentity reads a peer identity file (provd peer identity)
// strictly: one JSON object, no unknown or duplicate keys, this format.
func ParsePeerIdentity(b []byte) (PeerIdentity, error) {
	var p PeerIdentity
	if len(b) > maxTransferFile {
		return p, fmt.Errorf("%w: a peer identity of %d bytes (at most %d)", ErrBadInput, len(b), maxTransferFile)
	}
	if err := strictjson.Decode(b, &p); err != nil {
		return p, fmt.Errorf("%w: peer identity: %v", ErrBadInput, err)
	}
	if p.Format != PeerFormat {
		return p, fmt.Errorf("%w: peer identity format %d, this provd reads %d", ErrBadInput, p.Format, PeerFormat)
	}
	return p, p.checkHex()
}

// checkHex refuses a peer identity with a field that is not hex (read as a
// file, and in TransferKey, which the daemon's callers reach).
func (p PeerIdentity) checkHex() error {
	return CheckHexFields("peer identity", map[string]string{"parent_name": p.ParentName, "pk_name": p.PKName, "pk_policy": p.PKPolicy, "officer": p.Officer})
}

// ParseDupFile reads a duplicate file (provd dup export) strictly.
func ParseDupFile(b []byte) (DupFile, error) {
	var d DupFile
	if len(b) > maxPKFile {
		return d, fmt.Errorf("%w: a duplicate of %d bytes (at most %d)", ErrBadInput, len(b), maxPKFile)
	}
	if err := strictjson.Decode(b, &d); err != nil {
		return d, fmt.Errorf("%w: duplicate: %v", ErrBadInput, err)
	}
	if d.Type != DupTypePK && len(b) > maxTransferFile {
		return d, fmt.Errorf("%w: a duplicate of %d bytes (at most %d)", ErrBadInput, len(b), maxTransferFile)
	}
	return d, d.Check()
}

// Check refuses a duplicate of another format or with a field that is not
// hex, where a file is read and where the daemon takes one.
func (d DupFile) Check() error {
	if d.Format != DupFormat {
		return fmt.Errorf("%w: duplicate format %d, this provd reads %d", ErrBadInput, d.Format, DupFormat)
	}
	return CheckHexFields("duplicate", map[string]string{"parent_name": d.ParentName, "pk_policy": d.PKPolicy, "officer": d.Officer, "ek_cert_sha256": d.EKCertSHA256, "dup_to": d.DupTo})
}

// TransferKey checks a peer identity's shape and returns its transfer key's
// public area and name: exactly a provd transfer key whose policy names
// the PK the file names (catalog.IsTransferKey: not a legacy one), under its stated name, with
// 1 to 4 EK certificates. Nothing in it is trusted yet: the EK certificate
// must still chain, and the PK must be the one enrolled for the device.
func (p PeerIdentity) TransferKey() (tpm2.TPMTPublic, []byte, error) {
	bad := func(what string) (tpm2.TPMTPublic, []byte, error) {
		return tpm2.TPMTPublic{}, nil, fmt.Errorf("%w: peer identity: %s", ErrBadInput, what)
	}
	if p.Format != PeerFormat {
		return bad(fmt.Sprintf("format %d, this provd reads %d", p.Format, PeerFormat))
	}
	if err := p.checkHex(); err != nil {
		return tpm2.TPMTPublic{}, nil, err
	}
	pub, err := ParsePublicArea(p.Parent)
	if err != nil {
		return bad("the transfer key's public area does not parse")
	}
	pkName, err := hex.DecodeString(p.PKName)
	if err != nil || len(pkName) != 34 {
		return bad("the PK's name")
	}
	if catalog.IsLegacyTransferKey(*pub, pkName) {
		return bad("the transfer key was made by a provd before review 74 (its authValue alone takes what is sent to it out of its wrappers); nothing is sent to it: the peer runs provd peer identity again, which makes a new one")
	}
	if !catalog.IsTransferKey(*pub, pkName) {
		return bad("the parent is not the transfer key of the PK it names (an ECC P-256 storage key whose policy is catalog.TransferPolicy(that PK))")
	}
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		return bad(err.Error())
	}
	if hex.EncodeToString(name.Buffer) != p.ParentName {
		return bad("the parent's name is not its public area's")
	}
	if len(p.EKCertificates) == 0 || len(p.EKCertificates) > 4 {
		return bad("1 to 4 EK certificates")
	}
	return *pub, name.Buffer, nil
}

// EnrolledAs checks that the peer identity's transfer key is bound to the
// PK enrolled for the device (enrolled, hex, as provisioning reported it on
// the device). provd can check that the EK is a genuine TPM's; only this
// comparison says the transfer key is the device's provd's, not a look-alike
// another process made in the same TPM, or a whole peer file swapped on the
// way. It assumes TransferKey passed.
func (p PeerIdentity) EnrolledAs(enrolled string) error {
	if enrolled == "" {
		return fmt.Errorf("%w: the PK name enrolled for the peer device is needed (provd status on it, at provisioning): its transfer key must be bound to it", ErrNotPermitted)
	}
	if !strings.EqualFold(strings.TrimSpace(enrolled), p.PKName) {
		return fmt.Errorf("%w: the peer identity names PK %.16s…, not the enrolled %.16s…: it is not that device's (a look-alike, or a file swapped on the way); nothing done", ErrNotPermitted, p.PKName, enrolled)
	}
	return nil
}

// ParsePublicArea reads a TPM2B_PUBLIC from a file (a peer identity, a
// duplicate) strictly: it must parse and be all of b.
func ParsePublicArea(b []byte) (*tpm2.TPMTPublic, error) {
	p2b, err := tpm2.Unmarshal[tpm2.TPM2BPublic](b)
	if err != nil || len(tpm2.Marshal(p2b)) != len(b) {
		return nil, fmt.Errorf("%w: a public area that does not parse", ErrBadInput)
	}
	pub, err := p2b.Contents()
	if err != nil {
		return nil, fmt.Errorf("%w: a public area that does not parse", ErrBadInput)
	}
	return pub, nil
}
