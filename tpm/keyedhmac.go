package tpm

import (
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// The operation's shared audit session (Share) is a keyedPolicy of the HMAC
// kind, so that it can also authorize an entity that has an authValue
// (issue 14): go-tpm's HMAC session keys every HMAC with the one authValue
// it started with, where the TPM keys an HMAC session's by the role it has
// in each command (TPM 2.0 Part 1, 19.6.8):
//   - auditing a command, or authorizing an entity whose authValue is
//     empty (an NV index read by its own empty password, a load under the
//     SRK): the session key alone (hmacAudit);
//   - authorizing an entity with an authValue (the AK's quote, a gate key's
//     TPM2_PolicySecret): the session key and that authValue (hmacAuth).
//
// So an operation that has read or loaded in its shared session quotes
// with the AK, or proves its audit gate, in the same session, where each
// started a one-use HMAC session of its own (a StartAuthSession: some 60
// ms on a discrete TPM). The session is salted to the pinned SRK: only
// that TPM and provd know the session key, so nobody else on the bus can
// compute a command's HMAC or forge an answer's, in either role, and the
// authValue never crosses the bus.

// startKeyedHMAC starts a keyed HMAC session salted to srk, without
// parameter encryption.
func (t *TPM) startKeyedHMAC(srk Object) (*keyedPolicy, error) {
	return t.startKeyed(srk, tpm2.TPMSEHMAC, nil, false, 0)
}

// hmacAudit is a keyed HMAC session auditing a command (the answer's HMAC
// authenticates its parameters), or authorizing an entity whose authValue
// is empty: HMACs keyed by the session key alone.
type hmacAudit struct{ k *keyedPolicy }

var auditAttrs = tpm2.TPMASession{ContinueSession: true, Audit: true}

func (s hmacAudit) Init(transport.TPM) error           { return nil }
func (s hmacAudit) CleanupFailure(transport.TPM) error { return nil }
func (s hmacAudit) NonceTPM() tpm2.TPM2BNonce          { return tpm2.TPM2BNonce{Buffer: s.k.nonceTPM} }
func (s hmacAudit) NewNonceCaller() error              { return s.k.newNonceCaller() }
func (s hmacAudit) IsEncryption() bool                 { return false }
func (s hmacAudit) IsDecryption() bool                 { return false }
func (s hmacAudit) Encrypt([]byte) error               { return nil }
func (s hmacAudit) Decrypt([]byte) error               { return nil }
func (s hmacAudit) Handle() tpm2.TPMHandle             { return s.k.handle }
func (s hmacAudit) Authorize(cc tpm2.TPMCC, parms, addNonces []byte, names []tpm2.TPM2BName, _ int) (*tpm2.TPMSAuthCommand, error) {
	return s.k.authorize(cc, parms, addNonces, names, auditAttrs, nil)
}
func (s hmacAudit) Validate(rc tpm2.TPMRC, cc tpm2.TPMCC, parms []byte, _ []tpm2.TPM2BName, _ int, auth *tpm2.TPMSAuthResponse) error {
	return s.k.validate(rc, cc, parms, auth, nil)
}

// hmacAuth is a keyed HMAC session authorizing the one entity whose
// authValue is auth (the caller's, cleared by the caller): HMACs keyed by
// the session key and auth. Use it only as the authorization of that
// entity's handle: the TPM keys any other role by the session key alone,
// and refuses the command (TPM_RC_BAD_AUTH or the like).
type hmacAuth struct {
	k    *keyedPolicy
	auth []byte
}

var authAttrs = tpm2.TPMASession{ContinueSession: true}

func (s hmacAuth) Init(transport.TPM) error           { return nil }
func (s hmacAuth) CleanupFailure(transport.TPM) error { return nil }
func (s hmacAuth) NonceTPM() tpm2.TPM2BNonce          { return tpm2.TPM2BNonce{Buffer: s.k.nonceTPM} }
func (s hmacAuth) NewNonceCaller() error              { return s.k.newNonceCaller() }
func (s hmacAuth) IsEncryption() bool                 { return false }
func (s hmacAuth) IsDecryption() bool                 { return false }
func (s hmacAuth) Encrypt([]byte) error               { return nil }
func (s hmacAuth) Decrypt([]byte) error               { return nil }
func (s hmacAuth) Handle() tpm2.TPMHandle             { return s.k.handle }
func (s hmacAuth) Authorize(cc tpm2.TPMCC, parms, addNonces []byte, names []tpm2.TPM2BName, _ int) (*tpm2.TPMSAuthCommand, error) {
	return s.k.authorize(cc, parms, addNonces, names, authAttrs, s.auth)
}
func (s hmacAuth) Validate(rc tpm2.TPMRC, cc tpm2.TPMCC, parms []byte, _ []tpm2.TPM2BName, _ int, auth *tpm2.TPMSAuthResponse) error {
	return s.k.validate(rc, cc, parms, auth, s.auth)
}
