package tpm

import (
	"errors"
	"fmt"

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

// startKeyedHMAC starts a keyed HMAC session salted to srk, with
// AES-128-CFB for parameter encryption, which the guard role (hmacGuard)
// uses and the other roles leave off: the TPM refuses parameter encryption
// in a session started without a cipher (TPM_RC_SYMMETRIC).
func (t *TPM) startKeyedHMAC(srk Object) (*keyedPolicy, error) {
	return t.startKeyed(srk, tpm2.TPMSEHMAC, nil, true, 0)
}

// keyedCloser flushes k by the handle it started with (sessionCloser) and
// then forgets its key (keyedPolicy.end), whether or not the flush worked.
func (t *TPM) keyedCloser(k *keyedPolicy) func() error {
	flush := t.sessionCloser(hmacAudit{k})
	return func() error {
		defer k.end()
		return flush()
	}
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

// hmacGuard is a keyed HMAC session as a command's extra session that
// encrypts its secret in direction dir (a creation's sensitive area in, an
// unseal's secret out) and audits it: HMACs and encryption keyed by the
// session key alone (Part 1, 19.6 and 21: the session authorizes no entity
// in that command), as policyGuard's are. It stands where an encrypting
// session of the command's own stood (WithEncryptSession): the salt is
// the pinned SRK's either way, and the AES key and IV are drawn from that
// command's two fresh nonces, so no two commands share a key stream.
type hmacGuard struct {
	k   *keyedPolicy
	dir Direction
}

func (s hmacGuard) attrs() tpm2.TPMASession { return s.dir.attrs(true) }

func (s hmacGuard) Init(transport.TPM) error           { return nil }
func (s hmacGuard) CleanupFailure(transport.TPM) error { return nil }
func (s hmacGuard) NonceTPM() tpm2.TPM2BNonce          { return tpm2.TPM2BNonce{Buffer: s.k.nonceTPM} }
func (s hmacGuard) NewNonceCaller() error              { return s.k.newNonceCaller() }
func (s hmacGuard) IsEncryption() bool                 { return s.attrs().Encrypt }
func (s hmacGuard) IsDecryption() bool                 { return s.attrs().Decrypt }
func (s hmacGuard) Handle() tpm2.TPMHandle             { return s.k.handle }
func (s hmacGuard) Encrypt(parameter []byte) error {
	return s.k.crypt(s.attrs(), nil, parameter, true)
}
func (s hmacGuard) Decrypt(parameter []byte) error {
	return s.k.crypt(s.attrs(), nil, parameter, false)
}
func (s hmacGuard) Authorize(cc tpm2.TPMCC, parms, addNonces []byte, names []tpm2.TPM2BName, _ int) (*tpm2.TPMSAuthCommand, error) {
	return s.k.authorize(cc, parms, addNonces, names, s.attrs(), nil)
}
func (s hmacGuard) Validate(rc tpm2.TPMRC, cc tpm2.TPMCC, parms []byte, _ []tpm2.TPM2BName, _ int, auth *tpm2.TPMSAuthResponse) error {
	return s.k.validate(rc, cc, parms, auth, nil)
}

// hmacAuth is a keyed HMAC session authorizing the one entity whose
// authValue is auth (the caller's, cleared by the caller): HMACs keyed by
// the session key and auth, and parameter encryption in direction dir (0:
// none; an import's inner key in) keyed the same way (Part 1, 21: the
// session key and the authorized entity's authValue). Use it only as the
// authorization of that entity's handle: the TPM keys any other role by
// the session key alone, and refuses the command (TPM_RC_BAD_AUTH or the
// like).
type hmacAuth struct {
	k    *keyedPolicy
	auth []byte
	dir  Direction
}

func (s hmacAuth) attrs() tpm2.TPMASession { return s.dir.attrs(false) }

func (s hmacAuth) Init(transport.TPM) error           { return nil }
func (s hmacAuth) CleanupFailure(transport.TPM) error { return nil }
func (s hmacAuth) NonceTPM() tpm2.TPM2BNonce          { return tpm2.TPM2BNonce{Buffer: s.k.nonceTPM} }
func (s hmacAuth) NewNonceCaller() error              { return s.k.newNonceCaller() }
func (s hmacAuth) IsEncryption() bool                 { return s.attrs().Encrypt }
func (s hmacAuth) IsDecryption() bool                 { return s.attrs().Decrypt }
func (s hmacAuth) Encrypt(parameter []byte) error {
	return s.k.crypt(s.attrs(), s.auth, parameter, true)
}
func (s hmacAuth) Decrypt(parameter []byte) error {
	return s.k.crypt(s.attrs(), s.auth, parameter, false)
}
func (s hmacAuth) Handle() tpm2.TPMHandle { return s.k.handle }
func (s hmacAuth) Authorize(cc tpm2.TPMCC, parms, addNonces []byte, names []tpm2.TPM2BName, _ int) (*tpm2.TPMSAuthCommand, error) {
	return s.k.authorize(cc, parms, addNonces, names, s.attrs(), s.auth)
}
func (s hmacAuth) Validate(rc tpm2.TPMRC, cc tpm2.TPMCC, parms []byte, _ []tpm2.TPM2BName, _ int, auth *tpm2.TPMSAuthResponse) error {
	return s.k.validate(rc, cc, parms, auth, s.auth)
}

// authorizeChecked runs fn with k authorizing entity, whose authValue is
// auth (hmacAuth, encrypting in direction dir). The TPM's refusal of that authorization (ErrBadAuth)
// means a wrong value only if k is where provd left it and entity is at
// its handle, which TPM2_ReadPublic of entity in k's audit role then tells
// (its command HMAC covers the name provd expects at the handle, and the
// TPM keys it with the nonce it holds):
//   - it verifies: the value was wrong, ErrBadAuth;
//   - the TPM refuses it, or its answer is forged: the session's nonces
//     had moved (the TPM ran a copy of the command whose answer A1
//     replaced, with a warning whose resend met the moved nonces), or
//     another object is at the handle (the load's answer, which no HMAC
//     covers, was renamed): ErrResponseForged (found by review: both were
//     a wrong value, exit 11);
//   - any other failure: neither, and the probe's error says what went
//     wrong (a reset between the two, say).
//
// The caller gives k up after any failure.
func (t *TPM) authorizeChecked(k *keyedPolicy, entity Object, auth []byte, dir Direction, fn func(s tpm2.Session) error) error {
	err := fn(hmacAuth{k: k, auth: auth, dir: dir})
	if !errors.Is(err, ErrBadAuth) {
		return err
	}
	_, perr := (tpm2.ReadPublic{ObjectHandle: tpm2.NamedHandle{Handle: entity.Handle, Name: entity.Name}}).Execute(t, hmacAudit{k})
	switch perr = Wrap("TPM2_ReadPublic", perr); {
	case perr == nil:
		return err
	case errors.Is(perr, ErrBadAuth) || errors.Is(perr, ErrResponseForged):
		return fmt.Errorf("%w: the TPM refused an authorization, and then the session it was made in or the object at 0x%08x (a command of it ran and its answer was replaced, or the load's answer named another object): %v",
			ErrResponseForged, uint32(entity.Handle), err)
	default:
		return fmt.Errorf("the TPM refused an authorization (%v), and whether its value was wrong cannot be told: %w", err, perr)
	}
}
