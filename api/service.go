package api

import (
	"context"
	"crypto"
	"crypto/ecdh"

	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/audit"
)

// Service is what provd does for its callers: the operations an in-process
// agent performs and the daemon's client performs over the API socket. Both
// give the same results and errors that errors.Is the same sentinels.
//
// The caller's identity, which the audit trail records, travels in ctx
// (WithCaller); an implementation is safe for concurrent use.
type Service interface {
	Provision(ctx context.Context, req ProvisionRequest) (ProvisionResult, error)
	InstallPolicy(ctx context.Context, signedPolicy []byte) (PolicyInstallResult, error)
	ShowPolicy(ctx context.Context) (PolicyState, error)
	Seal(ctx context.Context, req SealRequest) ([]byte, error)
	Unseal(ctx context.Context, blob []byte) ([]byte, error)
	Status(ctx context.Context) (Status, error)
	TPMInfo(ctx context.Context) (TPMInfo, error)
	TPMIdentity(ctx context.Context, req IdentityRequest) (Identity, error)
	AuditRecords(ctx context.Context) ([]audit.Record, error)
	AuditVerify(ctx context.Context) (audit.Report, error)
	AuditRepair(ctx context.Context, anchorLast bool) (audit.Report, error)
	AuditReanchor(ctx context.Context) (AuditReanchorResult, error)
	Zeroize(ctx context.Context, opts ZeroizeOptions) (ZeroizeResult, error)

	DeriveKey(ctx context.Context, req DeriveRequest) (KeyInfo, error)
	CreateKey(ctx context.Context, req CreateRequest) (KeyInfo, error)
	DeleteKey(ctx context.Context, name string) error
	ListKeys(ctx context.Context) ([]KeyInfo, error)
	KeyPublic(ctx context.Context, name string) (crypto.PublicKey, KeyInfo, error)
	Sign(ctx context.Context, name string, digest []byte, opts SignOptions) ([]byte, error)
	HMAC(ctx context.Context, name string, data []byte) ([]byte, error)
	ECDH(ctx context.Context, name string, peer *ecdh.PublicKey) ([]byte, error)
	Decrypt(ctx context.Context, name string, ciphertext []byte, h crypto.Hash) ([]byte, error)
	EncryptData(ctx context.Context, name string, plain []byte) ([]byte, error)
	DecryptData(ctx context.Context, name string, envelope []byte) ([]byte, error)
	ExportKeyBlob(ctx context.Context, name string) ([]byte, error)
	ImportKeyBlob(ctx context.Context, name string, pemData []byte) (KeyInfo, error)
	ImportKEK(ctx context.Context, req KEKImportRequest) (KeyInfo, error)
	ExportKey(ctx context.Context, req KeyExportRequest) ([]byte, error)
	ImportKey(ctx context.Context, req KeyImportRequest) (KeyInfo, error)
	PeerIdentity(ctx context.Context) (PeerIdentity, error)
	DupExport(ctx context.Context, req DupExportRequest) (DupFile, error)
	DupImport(ctx context.Context, req DupImportRequest) (KeyInfo, error)
	PeerProve(ctx context.Context, c PeerChallenge) (PeerProof, error)
	PKExport(ctx context.Context, req PKExportRequest) (DupFile, error)
	ProvisionFrom(ctx context.Context, req PKAdoptRequest) (ProvisionResult, error)
	// The device's side of fleet attestation (docs/attestation.md): the
	// TPM's part, which provd attest carries to the endpoint.
	AttestIdentity(ctx context.Context) (fleetapi.EnrollRequest, error)
	AttestActivate(ctx context.Context, e fleetapi.Enrollment) (AttestActivateResult, error)
	AttestQuote(ctx context.Context, req AttestQuoteRequest) (AttestQuoteResult, error)
	AttestInstall(ctx context.Context, req AttestInstallRequest) (AttestInstallResult, error)
	AttestSecret(ctx context.Context, req AttestSecretRequest) (AttestSecretResult, error)
	AttestSign(ctx context.Context, name string, digest []byte, opts SignOptions) ([]byte, error)
	AttestRecord(ctx context.Context, v AttestVerdict) (AttestVerdict, error)
}

// Caller is who asked for an operation, as the audit trail records it: the
// daemon's peer credentials, or the CLI process's own uid in-process.
type Caller struct {
	UID int
}

type callerKey struct{}

// WithCaller returns ctx carrying the caller of the operations run with it.
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// CallerFrom returns the caller ctx carries, and whether it carries one.
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}

// Route is one endpoint of the daemon's API: Op names the operation in logs,
// the audit trail and the daemon's role table.
type Route struct {
	Method, Path, Op string
}

// The daemon's routes (docs/api.md documents each).
var (
	RouteStatus         = Route{"GET", "/v1/status", "status"}
	RouteTPMInfo        = Route{"GET", "/v1/tpm/info", "tpm-info"}
	RouteTPMIdentity    = Route{"POST", "/v1/tpm/identity", "tpm-identity"}
	RoutePolicyShow     = Route{"GET", "/v1/policy", "policy-show"}
	RouteAuditVerify    = Route{"GET", "/v1/audit/verify", "audit-verify"}
	RouteAuditShow      = Route{"GET", "/v1/audit", "audit-show"}
	RouteProvision      = Route{"POST", "/v1/provision", "provision"}
	RoutePolicyInstall  = Route{"POST", "/v1/policy/install", "policy-install"}
	RouteZeroize        = Route{"POST", "/v1/zeroize", "zeroize"}
	RouteAuditRepair    = Route{"POST", "/v1/audit/repair", "audit-repair"}
	RouteAuditReanchor  = Route{"POST", "/v1/audit/reanchor", "audit-reanchor"}
	RouteSeal           = Route{"POST", "/v1/seal", "seal"}
	RouteUnseal         = Route{"POST", "/v1/unseal", "unseal"}
	RouteKeyDerive      = Route{"POST", "/v1/keys/derive", "key-derive"}
	RouteKeyCreate      = Route{"POST", "/v1/keys/create", "key-create"}
	RouteKeyDelete      = Route{"POST", "/v1/keys/delete", "key-delete"}
	RouteKeyExportBlob  = Route{"POST", "/v1/keys/export-blob", "key-export-blob"}
	RouteKeyImportBlob  = Route{"POST", "/v1/keys/import-blob", "key-import-blob"}
	RouteKEKImport      = Route{"POST", "/v1/kek/import", "kek-import"}
	RouteKeyExport      = Route{"POST", "/v1/keys/export", "key-export"}
	RouteKeyImport      = Route{"POST", "/v1/keys/import", "key-import"}
	RoutePeerIdentity   = Route{"POST", "/v1/peer/identity", "peer-identity"}
	RouteDupExport      = Route{"POST", "/v1/dup/export", "dup-export"}
	RouteDupImport      = Route{"POST", "/v1/dup/import", "dup-import"}
	RoutePeerProve      = Route{"POST", "/v1/peer/prove", "peer-prove"}
	RoutePKExport       = Route{"POST", "/v1/pk/export", "pk-export"}
	RouteProvisionFrom  = Route{"POST", "/v1/provision/from", "provision-from"}
	RouteAttestIdentity = Route{"POST", "/v1/attest/identity", "attest-identity"}
	RouteAttestActivate = Route{"POST", "/v1/attest/activate", "attest-activate"}
	RouteAttestQuote    = Route{"POST", "/v1/attest/quote", "attest-quote"}
	RouteAttestInstall  = Route{"POST", "/v1/attest/install", "attest-install"}
	RouteAttestSecret   = Route{"POST", "/v1/attest/secret", "attest-secret"}
	RouteAttestRecord   = Route{"POST", "/v1/attest/record", "attest-record"}
	RouteAttestSign     = Route{"POST", "/v1/attest/sign", "attest-sign"}
	RouteKeyList        = Route{"GET", "/v1/keys", "key-list"}
	RouteKeyPublic      = Route{"POST", "/v1/keys/public", "key-public"}
	RouteKeySign        = Route{"POST", "/v1/keys/sign", "key-sign"}
	RouteKeyHMAC        = Route{"POST", "/v1/keys/hmac", "key-hmac"}
	RouteKeyECDH        = Route{"POST", "/v1/keys/ecdh", "key-ecdh"}
	RouteKeyDecrypt     = Route{"POST", "/v1/keys/decrypt", "key-decrypt"}
	RouteKeyEncrypt     = Route{"POST", "/v1/keys/encrypt-data", "key-encrypt-data"}
	RouteKeyDecryptData = Route{"POST", "/v1/keys/decrypt-data", "key-decrypt-data"}
)
