package agent

import (
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/fips140"
	"errors"
	"fmt"

	"github.com/provd/provd/agent/audit"
	"github.com/provd/provd/agent/store"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/tpm"
)

// API is what the CLI asks of provd: the operations an *Agent performs
// in-process and the daemon's client (package agent/client) performs over the
// API socket. Both give the same results and errors that errors.Is the same
// sentinels, so a command's output and exit code do not depend on the path.
type API interface {
	Provision(ctx context.Context, req ProvisionRequest) (ProvisionResult, error)
	InstallPolicy(ctx context.Context, signedPolicy []byte) (PolicyInstallResult, error)
	ShowPolicy(ctx context.Context) (PolicyState, error)
	Seal(ctx context.Context, req SealRequest) ([]byte, error)
	Unseal(ctx context.Context, blob []byte) ([]byte, error)
	Status(ctx context.Context) (Status, error)
	TPMInfo(ctx context.Context) (TPMInfo, error)
	AuditRecords() ([]audit.Record, error)
	AuditVerify() (audit.Report, error)
	AuditRepair(anchorLast bool) (audit.Report, error)
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
}

var _ API = (*Agent)(nil)

// TPMInfo is what `provd tpm info` shows: the TPM as it was opened, what it
// says about itself, and whether the Go FIPS 140-3 module is on in the
// process that talks to it (the daemon's, through the API).
type TPMInfo struct {
	TPM string `json:"tpm"`
	tpm.Info
	GoFIPS140 bool `json:"go_fips140"`
}

// TPMInfo reads what the TPM says about itself; it writes nothing.
func (a *Agent) TPMInfo(context.Context) (TPMInfo, error) {
	info, err := a.t.Info()
	return TPMInfo{TPM: a.t.Spec(), Info: info, GoFIPS140: fips140.Enabled()}, err
}

// SetCallerUID sets the uid the audit trail records for the operations that
// follow. The daemon serves every caller with one Agent and calls it inside
// its TPM queue before each operation; like every Agent method it must not
// run concurrently with another.
func (a *Agent) SetCallerUID(uid int) { a.uid = uid }

// RecordRefusal writes a refused request to the audit trail: op is the
// operation asked for, uid the caller, why what its role lacked. The refusal
// is not an error of the agent's; the returned error is the audit trail's.
func (a *Agent) RecordRefusal(op string, uid int, why string) error {
	prev := a.uid
	a.uid = uid
	defer func() { a.uid = prev }()
	return a.record(op, map[string]string{"refused": why}, fmt.Errorf("%w: %s", ErrRefused, why))
}

// ErrRefused: the daemon refused a request because the caller's role does
// not allow the operation. It is an ErrNotPermitted (exit code 5).
var ErrRefused = fmt.Errorf("%w: the caller's role does not allow it", ErrNotPermitted)

// ErrBusy: the daemon's TPM queue did not reach a request before its deadline.
var ErrBusy = errors.New("TPM queue busy: the request's deadline passed while it waited")

// errorKinds names the sentinel errors that travel over the API, most
// specific first. A remote error carries every kind its cause matched, and
// the client rebuilds an error that errors.Is each of them again. Packages
// add their sentinels here as they add them to the CLI's exit-code table.
var errorKinds = []struct {
	kind string
	err  error
}{
	{"refused", ErrRefused},
	{"policy_not_satisfied", tpm.ErrPolicyNotSatisfied},
	{"tampered", ErrTampered},
	{"not_provisioned", ErrNotProvisioned},
	{"already_provisioned", ErrAlreadyProvisioned},
	{"key_exists", ErrKeyExists},
	{"not_extractable", ErrNotExtractable},
	{"not_permitted", ErrNotPermitted},
	{"not_approved", policy.ErrNotApproved},
	{"not_found", ErrNotFound},
	{"bad_input", ErrBadInput},
	{"busy", ErrBusy},
	{"state_locked", store.ErrLocked},
	{"state_corrupt", store.ErrCorrupt},
	{"state_unknown_schema", store.ErrUnknownSchema},
	{"state_insecure_dir", store.ErrInsecureDir},
	{"tpm_lockout", tpm.ErrLockout},
	{"no_tpm", tpm.ErrNoTPM},
	{"tpm_failure", tpm.ErrFailureMode},
	{"tpm_no_memory", tpm.ErrNoMemory},
	{"tpm_bad_auth", tpm.ErrBadAuth},
	{"tpm_not_found", tpm.ErrNotFound},
	{"srk_mismatch", tpm.ErrSRKMismatch},
	{"tpm_unsupported", tpm.ErrUnsupported},
	{"deadline_exceeded", context.DeadlineExceeded},
	{"canceled", context.Canceled},
}

// ErrorKinds returns the names of every sentinel err matches, in table order.
func ErrorKinds(err error) []string {
	var kinds []string
	for _, k := range errorKinds {
		if errors.Is(err, k.err) {
			kinds = append(kinds, k.kind)
		}
	}
	return kinds
}

// KindError returns the sentinel a kind names, or nil for a kind this
// version does not know (a newer daemon's).
func KindError(kind string) error {
	for _, k := range errorKinds {
		if k.kind == kind {
			return k.err
		}
	}
	return nil
}
