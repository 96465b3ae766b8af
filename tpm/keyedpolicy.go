package tpm

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// keyedPolicy is a SHA-256 policy session salted to the SRK, of provd's own
// making, where go-tpm's keys every HMAC with the one authValue it started
// with. (Of the HMAC kind it is the operation's shared session: keyedhmac.go.) The TPM keys a session's HMACs by the role it has in each command
// (TPM 2.0 Part 1, 19.6, "Session-based authorization"):
//   - authorizing an object whose policy holds PolicyAuthValue: the session
//     key and the object's authValue (the auth role, policyAuth);
//   - as a command's extra session, associated with no entity: the session
//     key alone (the guard role, policyGuard).
//
// So one session can guard the load of the PK under the SRK (whose
// authorization is its empty password) and then authorize the uses under
// the PK, where go-tpm needs a second salted session for the load (issue
// 14: 2 commands fewer in every one-shot key use). The salt is encrypted to
// the pinned SRK, so only that TPM and provd know the session key, in
// either role: nobody else on the bus can compute a command's HMAC or
// forge an answer's.
//
// A policy session cannot audit, and the TPM refuses an extra session that
// neither authorizes, audits nor encrypts (TPM_RC_ATTRIBUTES), so the guard
// role also encrypts the command's first parameter (AES-128-CFB, keyed by
// the session key alone as the HMAC is). The auth role encrypts in the
// direction the session was started for (StartSecretPolicySession: the
// secret an unseal answers, or a creation's sensitive area), keyed by the
// session key and auth. The TPM keys that encryption with the authorized
// object's authValue whether or not its policy holds PolicyAuthValue, and
// the HMAC with it only when it does: auth is given for objects whose
// policies hold it, and is nil only for objects whose authValue is empty
// (a fleet delivery's), where both keys are the session key alone (found
// by review: nil auth with an object's authValue unchecked by its policy
// would decrypt to garbage with a verifying HMAC; no caller does that).
type keyedPolicy struct {
	handle      tpm2.TPMHandle
	sessionKey  []byte
	nonceCaller []byte
	nonceTPM    []byte
	// auth keys the auth role's HMACs and encryption (the session's own
	// copy; cleared by end), nil for objects with an empty authValue.
	auth []byte
	// guard: started with a cipher, so it may take the guard role.
	guard bool
	// dir is the auth role's parameter encryption, 0 for none.
	dir Direction
	// uses counts the commands the session authorized (the auth role)
	// whose success answer validated (PolicySession.Uses).
	uses int
}

const (
	keyedHash    = crypto.SHA256
	keyedAESBits = 128
)

// startKeyedPolicy starts a keyedPolicy salted to srk, whose auth role is
// keyed by auth (kept, not copied: PolicySession owns it) and encrypts in
// direction dir (0: none). Only a session started with a cipher
// (AES-128-CFB: to guard, or to encrypt) may take the guard role: the TPM
// refuses parameter encryption in a session started without one
// (TPM_RC_SYMMETRIC), before its HMAC.
func (t *TPM) startKeyedPolicy(srk Object, auth []byte, guard bool, dir Direction) (*keyedPolicy, error) {
	return t.startKeyed(srk, tpm2.TPMSEPolicy, auth, guard || dir != 0, dir)
}

// startKeyed starts a keyedPolicy of session type kind (a policy session, or
// an HMAC session: keyedHMAC) salted to srk.
func (t *TPM) startKeyed(srk Object, kind tpm2.TPMSE, auth []byte, guard bool, dir Direction) (*keyedPolicy, error) {
	ek, err := tpm2.ImportEncapsulationKey(&srk.Public)
	if err != nil {
		return nil, fmt.Errorf("TPM2_StartAuthSession: the SRK's public key: %w", err)
	}
	salt, encSalt, err := tpm2.CreateEncryptedSalt(rand.Reader, ek)
	if err != nil {
		return nil, fmt.Errorf("TPM2_StartAuthSession: salt: %w", err)
	}
	defer clear(salt)
	nonceCaller := make([]byte, policyNonceSize)
	if _, err := rand.Read(nonceCaller); err != nil {
		return nil, err
	}
	sym := tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull}
	if guard {
		sym = tpm2.TPMTSymDef{
			Algorithm: tpm2.TPMAlgAES,
			KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(keyedAESBits)),
			Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
		}
	}
	rsp, err := (tpm2.StartAuthSession{
		TPMKey:        srk.Handle,
		Bind:          tpm2.TPMRHNull,
		NonceCaller:   tpm2.TPM2BNonce{Buffer: nonceCaller},
		EncryptedSalt: tpm2.TPM2BEncryptedSecret{Buffer: encSalt},
		SessionType:   kind,
		Symmetric:     sym,
		AuthHash:      tpm2.TPMAlgSHA256,
	}).Execute(t)
	if err != nil {
		return nil, Wrap("TPM2_StartAuthSession", err)
	}
	k := &keyedPolicy{
		handle:      rsp.SessionHandle,
		nonceCaller: nonceCaller,
		nonceTPM:    rsp.NonceTPM.Buffer,
		auth:        auth,
		guard:       guard,
		dir:         dir,
	}
	k.sessionKey = tpm2.KDFa(keyedHash, salt, "ATH", k.nonceTPM, k.nonceCaller, keyedHash.Size()*8)
	return k, nil
}

// hmacKey is the key of the session's HMACs in a role: the session key,
// then the authValue of the entity the role authorizes (nil for none)
// without its trailing zeros (Part 1, 19.6).
func (k *keyedPolicy) hmacKey(auth []byte) []byte {
	for len(auth) > 0 && auth[len(auth)-1] == 0 {
		auth = auth[:len(auth)-1]
	}
	return append(append([]byte(nil), k.sessionKey...), auth...)
}

// mac is HMAC(key, pHash || nonceNewer || nonceOlder || addNonces ||
// sessionAttributes), the command's and the answer's (Part 1, 19.6).
func (k *keyedPolicy) mac(key, pHash, nonceNewer, nonceOlder, addNonces []byte, attrs tpm2.TPMASession) []byte {
	m := hmac.New(keyedHash.New, key)
	m.Write(pHash)
	m.Write(nonceNewer)
	m.Write(nonceOlder)
	m.Write(addNonces)
	m.Write([]byte{attrsByte(attrs)})
	return m.Sum(nil)
}

func attrsByte(a tpm2.TPMASession) byte {
	var b byte
	for i, set := range []bool{a.ContinueSession, a.AuditExclusive, a.AuditReset, false, false, a.Decrypt, a.Encrypt, a.Audit} {
		if set {
			b |= 1 << i
		}
	}
	return b
}

// authorize is the command's session entry in a role.
func (k *keyedPolicy) authorize(cc tpm2.TPMCC, parms, addNonces []byte, names []tpm2.TPM2BName, attrs tpm2.TPMASession, auth []byte) (*tpm2.TPMSAuthCommand, error) {
	if k.handle == 0 {
		// Closed (end): its key is gone, and an HMAC keyed by nothing is
		// one anyone can make, in a session anyone can start at the
		// freed handle (found by review).
		return nil, errors.New("session closed")
	}
	h := keyedHash.New()
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(cc)))
	for _, n := range names {
		h.Write(n.Buffer)
	}
	h.Write(parms)
	key := k.hmacKey(auth)
	defer clear(key)
	return &tpm2.TPMSAuthCommand{
		Handle:        k.handle,
		Nonce:         tpm2.TPM2BNonce{Buffer: k.nonceCaller},
		Attributes:    attrs,
		Authorization: tpm2.TPM2BData{Buffer: k.mac(key, h.Sum(nil), k.nonceCaller, k.nonceTPM, addNonces, attrs)},
	}, nil
}

// validate checks the answer's session entry in a role and takes its
// nonceTPM. Its HMAC covers the attributes and the nonce, so only the TPM
// can have set them; the TPM keeps a session asked to continue, so an
// answer that ends it is refused as well.
func (k *keyedPolicy) validate(rc tpm2.TPMRC, cc tpm2.TPMCC, parms []byte, auth *tpm2.TPMSAuthResponse, value []byte) error {
	h := keyedHash.New()
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(rc)))
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(cc)))
	h.Write(parms)
	key := k.hmacKey(value)
	defer clear(key)
	want := k.mac(key, h.Sum(nil), auth.Nonce.Buffer, k.nonceCaller, nil, auth.Attributes)
	if !hmac.Equal(want, auth.Authorization.Buffer) {
		return errors.New(goTPMBadResponseHMAC) // as go-tpm's sessions say it (Wrap)
	}
	if !auth.Attributes.ContinueSession {
		return fmt.Errorf("%w: the answer ends a session asked to continue", ErrResponseForged)
	}
	k.nonceTPM = auth.Nonce.Buffer
	return nil
}

// end forgets the session once it is flushed: its key and authValue
// cleared, its handle zero, so that nothing authorizes in it again.
func (k *keyedPolicy) end() {
	clear(k.sessionKey)
	clear(k.auth)
	k.sessionKey, k.auth, k.handle = nil, nil, 0
}

// newNonceCaller draws the next command's nonceCaller.
func (k *keyedPolicy) newNonceCaller() error {
	n := make([]byte, policyNonceSize)
	if _, err := rand.Read(n); err != nil {
		return err
	}
	k.nonceCaller = n
	return nil
}

// cfb encrypts a command's first parameter, or decrypts an answer's, in
// place, keyed as the role's HMACs are: KDFa(sessionValue, "CFB",
// nonceNewer, nonceOlder) gives the AES key and IV, sessionValue being the
// session key, then in the auth role the authValue (Part 1, 21,
// "Session-based encryption"). In a command the newer nonce is the
// caller's, in an answer the TPM's (which validate has just taken).
func (k *keyedPolicy) cfb(parameter, auth []byte, command bool) error {
	const keyBytes = keyedAESBits / 8
	value := k.hmacKey(auth)
	defer clear(value)
	newer, older := k.nonceCaller, k.nonceTPM
	if !command {
		newer, older = k.nonceTPM, k.nonceCaller
	}
	keyIV := tpm2.KDFa(keyedHash, value, "CFB", newer, older, (keyBytes+aes.BlockSize)*8)
	defer clear(keyIV)
	block, err := aes.NewCipher(keyIV[:keyBytes])
	if err != nil {
		return err
	}
	if command {
		//lint:ignore SA1019 the TPM's parameter encryption is AES-CFB (Part 1, 21)
		cipher.NewCFBEncrypter(block, keyIV[keyBytes:]).XORKeyStream(parameter, parameter)
	} else {
		//lint:ignore SA1019 as above
		cipher.NewCFBDecrypter(block, keyIV[keyBytes:]).XORKeyStream(parameter, parameter)
	}
	return nil
}

// attrs are the attributes of a keyed session's role that encrypts in
// direction d (0: none), audits when audit is set, and continues.
func (d Direction) attrs(audit bool) tpm2.TPMASession {
	return tpm2.TPMASession{
		ContinueSession: true,
		Audit:           audit,
		Decrypt:         d == EncryptIn || d == EncryptInOut,
		Encrypt:         d == EncryptOut || d == EncryptInOut,
	}
}

// crypt is cfb of a command's first parameter (command) or an answer's,
// keyed by auth, when attrs say the role encrypts that way; nothing
// otherwise.
func (k *keyedPolicy) crypt(attrs tpm2.TPMASession, auth, parameter []byte, command bool) error {
	if command && !attrs.Decrypt || !command && !attrs.Encrypt {
		return nil
	}
	return k.cfb(parameter, auth, command)
}

// policyAuth is a keyedPolicy authorizing a command: HMACs keyed by the
// session key and auth; parameter encryption in the session's direction
// (dir), keyed the same way (see keyedPolicy on nil auth).
type policyAuth struct{ k *keyedPolicy }

func (s policyAuth) attrs() tpm2.TPMASession { return s.k.dir.attrs(false) }

func (s policyAuth) Init(transport.TPM) error           { return nil }
func (s policyAuth) CleanupFailure(transport.TPM) error { return nil }
func (s policyAuth) NonceTPM() tpm2.TPM2BNonce          { return tpm2.TPM2BNonce{Buffer: s.k.nonceTPM} }
func (s policyAuth) NewNonceCaller() error              { return s.k.newNonceCaller() }
func (s policyAuth) IsEncryption() bool                 { return s.attrs().Encrypt }
func (s policyAuth) IsDecryption() bool                 { return s.attrs().Decrypt }
func (s policyAuth) Handle() tpm2.TPMHandle             { return s.k.handle }
func (s policyAuth) Encrypt(parameter []byte) error {
	return s.k.crypt(s.attrs(), s.k.auth, parameter, true)
}
func (s policyAuth) Decrypt(parameter []byte) error {
	return s.k.crypt(s.attrs(), s.k.auth, parameter, false)
}
func (s policyAuth) Authorize(cc tpm2.TPMCC, parms, addNonces []byte, names []tpm2.TPM2BName, _ int) (*tpm2.TPMSAuthCommand, error) {
	return s.k.authorize(cc, parms, addNonces, names, s.attrs(), s.k.auth)
}
func (s policyAuth) Validate(rc tpm2.TPMRC, cc tpm2.TPMCC, parms []byte, _ []tpm2.TPM2BName, _ int, auth *tpm2.TPMSAuthResponse) error {
	// Only a success answer has a session area to validate.
	if err := s.k.validate(rc, cc, parms, auth, s.k.auth); err != nil {
		return err
	}
	s.k.uses++
	return nil
}

// policyGuard is a keyedPolicy as a command's extra session: HMACs keyed
// by the session key alone, the command's first parameter encrypted.
type policyGuard struct{ k *keyedPolicy }

var guardAttrs = tpm2.TPMASession{ContinueSession: true, Decrypt: true}

func (s policyGuard) Init(transport.TPM) error           { return nil }
func (s policyGuard) CleanupFailure(transport.TPM) error { return nil }
func (s policyGuard) NonceTPM() tpm2.TPM2BNonce          { return tpm2.TPM2BNonce{Buffer: s.k.nonceTPM} }
func (s policyGuard) NewNonceCaller() error              { return s.k.newNonceCaller() }
func (s policyGuard) IsEncryption() bool                 { return false }
func (s policyGuard) IsDecryption() bool                 { return true }
func (s policyGuard) Encrypt(parameter []byte) error     { return s.k.cfb(parameter, nil, true) }
func (s policyGuard) Decrypt([]byte) error               { return nil }
func (s policyGuard) Handle() tpm2.TPMHandle             { return s.k.handle }
func (s policyGuard) Authorize(cc tpm2.TPMCC, parms, addNonces []byte, names []tpm2.TPM2BName, _ int) (*tpm2.TPMSAuthCommand, error) {
	return s.k.authorize(cc, parms, addNonces, names, guardAttrs, nil)
}
func (s policyGuard) Validate(rc tpm2.TPMRC, cc tpm2.TPMCC, parms []byte, _ []tpm2.TPM2BName, _ int, auth *tpm2.TPMSAuthResponse) error {
	return s.k.validate(rc, cc, parms, auth, nil)
}
