package tpm

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// Moving key material in and out of the TPM: a KEK that wraps inside the
// TPM (KEKBlock), an extractable key's private part brought out for a
// PKCS#8 backup (ExportSensitive), and a private key brought in under a
// parent (ImportSensitive). Every secret crosses the bus encrypted: inside
// a session salted to the SRK, or under a wrapper whose key the bus never
// sees in the clear.

// KEKBlock is a symmetric key loaded in the TPM used as an AES block cipher
// (ECB, one block per TPM2_EncryptDecrypt2), for AES key wrap: the key never
// leaves the TPM. One HMAC session, keyed by the key's authValue and salted
// to the SRK, authorizes every block and encrypts it both ways, so the bus
// sees neither the blocks (key material on the first pass) nor a way to use
// the key. Close flushes the session.
type KEKBlock struct {
	t     *TPM
	key   Object
	s     tpm2.Session
	close func() error
}

// KEKBlock starts the session for key (an AES key of mode ECB, userWithAuth
// with authValue).
func (t *TPM) KEKBlock(key Object, authValue []byte) (*KEKBlock, error) {
	srk, err := t.SRK()
	if err != nil {
		return nil, err
	}
	s, closer, err := t.startHMACSession(tpm2.Auth(authValue), tpm2.Salted(srk.Handle, srk.Public),
		tpm2.AESEncryption(128, tpm2.EncryptInOut))
	if err != nil {
		return nil, err
	}
	return &KEKBlock{t: t, key: key, s: s, close: closer}, nil
}

// Encrypt encrypts one 16-byte block.
func (k *KEKBlock) Encrypt(dst, src []byte) error { return k.crypt(false, dst, src) }

// Decrypt decrypts one 16-byte block.
func (k *KEKBlock) Decrypt(dst, src []byte) error { return k.crypt(true, dst, src) }

func (k *KEKBlock) crypt(decrypt bool, dst, src []byte) error {
	if len(src) != aes.BlockSize || len(dst) < aes.BlockSize {
		return fmt.Errorf("KEK block: %d bytes, want %d", len(src), aes.BlockSize)
	}
	rsp, err := (tpm2.EncryptDecrypt2{
		KeyHandle: k.key.Auth(k.s),
		Message:   tpm2.TPM2BMaxBuffer{Buffer: src},
		Decrypt:   tpm2.TPMIYesNo(decrypt),
		Mode:      tpm2.TPMAlgECB,
	}).Execute(k.t)
	if err != nil {
		return Wrap("TPM2_EncryptDecrypt2", err)
	}
	defer clear(rsp.OutData.Buffer)
	if len(rsp.OutData.Buffer) != aes.BlockSize {
		return fmt.Errorf("TPM2_EncryptDecrypt2: %d bytes back for one block", len(rsp.OutData.Buffer))
	}
	copy(dst, rsp.OutData.Buffer)
	return nil
}

// Close flushes the session.
func (k *KEKBlock) Close() error { return k.close() }

// ExportSensitive brings obj's private part out of the TPM: TPM2_Duplicate
// to TPM_RH_NULL with an inner AES-128-CFB wrapper under a random key that
// goes to the TPM inside the salted session, so the bus carries only the
// wrapped duplicate; provd then opens the wrapper and checks its integrity.
// auth must satisfy obj's duplication policy (which the TPM checks: a key
// that is not extractable has no such branch). The caller clears the
// result's secrets (ClearSensitive).
func (t *TPM) ExportSensitive(obj Object, auth tpm2.Session) (*tpm2.TPMTSensitive, error) {
	d, err := t.Duplicate(obj, auth, tpm2.NamedHandle{Handle: tpm2.TPMRHNull, Name: tpm2.TPM2BName{Buffer: nullName}})
	if err != nil {
		return nil, err
	}
	defer clear(d.InnerKey)
	return OpenInnerDuplicate(d.InnerKey, obj.Name.Buffer, d.Duplicate)
}

// nullName is TPM_RH_NULL's name (its handle).
var nullName = binary.BigEndian.AppendUint32(nil, uint32(tpm2.TPMRHNull))

// Duplicated is what TPM2_Duplicate gave: the duplicate (inner wrapper, and
// the outer one to the new parent unless TPM_RH_NULL), the seed encrypted
// to the new parent, and the inner wrapper's key, which the caller clears
// and protects for the receiver.
type Duplicated struct {
	Duplicate, Seed, InnerKey []byte
}

// Duplicate is TPM2_Duplicate of obj to newParent with an inner
// AES-128-CFB wrapper under a random key that goes to the TPM inside a
// session salted to the SRK: auth itself when it encrypts the command's
// input (StartSecretPolicySession with EncryptIn; issue 14: 2 commands
// fewer), otherwise an encryption session of its own. auth must satisfy
// obj's duplication policy.
func (t *TPM) Duplicate(obj Object, auth tpm2.Session, newParent tpm2.NamedHandle) (Duplicated, error) {
	inner := make([]byte, 16)
	if _, err := rand.Read(inner); err != nil {
		return Duplicated{}, err
	}
	var d Duplicated
	dup := func(extra ...tpm2.Session) error {
		rsp, err := (tpm2.Duplicate{
			ObjectHandle:    obj.Auth(auth),
			NewParentHandle: newParent,
			EncryptionKeyIn: tpm2.TPM2BData{Buffer: inner},
			Symmetric:       innerWrapper,
		}).Execute(t, extra...)
		if err != nil {
			return Wrap("TPM2_Duplicate", err)
		}
		d = Duplicated{Duplicate: rsp.Duplicate.Buffer, Seed: rsp.OutSymSeed.Buffer, InnerKey: inner}
		return nil
	}
	var err error
	if auth != nil && auth.IsDecryption() {
		err = dup()
	} else {
		err = t.WithEncryptSession(EncryptIn, func(enc tpm2.Session) error { return dup(enc) })
	}
	if err != nil {
		clear(inner)
	}
	return d, err
}

// innerWrapper is the inner duplication wrapper provd uses: AES-128-CFB.
var innerWrapper = tpm2.TPMTSymDef{
	Algorithm: tpm2.TPMAlgAES,
	KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(128)),
	Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
}

// TestParms asks the TPM whether it supports the algorithm and parameters
// of pub (TPM2_TestParms: one command, nothing loaded); the TPM's refusal
// is a tpm2.TPMFmt1Error. Its answer is not authenticated: a bus can make
// a supported key look unsupported, or the reverse, which only fails later.
func (t *TPM) TestParms(pub tpm2.TPMTPublic) error {
	_, err := (tpm2.TestParms{Parameters: tpm2.TPMTPublicParms{Type: pub.Type, Parameters: pub.Parameters}}).Execute(t)
	return Wrap("TPM2_TestParms", err)
}

// LoadPublic loads a public area alone (TPM2_LoadExternal, NULL
// hierarchy): a peer's storage key, as the new parent of a duplication.
// The caller flushes it.
func (t *TPM) LoadPublic(pub tpm2.TPMTPublic) (Object, error) {
	want, err := tpm2.ObjectName(&pub)
	if err != nil {
		return Object{}, err
	}
	rsp, err := (tpm2.LoadExternal{InPublic: tpm2.New2B(pub), Hierarchy: tpm2.TPMRHNull}).Execute(t)
	if err != nil {
		t.unheld()
		return Object{}, Wrap("TPM2_LoadExternal", err)
	}
	if !nameEqual(rsp.Name, *want) {
		// The name the policy session binds is provd's own; one the bus
		// made up is refused here, and would fail the session's HMAC.
		return Object{}, errors.Join(fmt.Errorf("%w: TPM2_LoadExternal answered another name", ErrResponseForged), t.Flush(rsp.ObjectHandle))
	}
	return Object{Handle: rsp.ObjectHandle, Name: *want, Public: pub}, nil
}

// ActivateCredential recovers a credential's secret (TPM2_MakeCredential,
// or go-tpm's CreateCredential, to the EK ek for the name of activate):
// only the TPM holding ek's private key, with activate loaded and
// authorized in the ADMIN role by activateAuth, gets it. activateAuth must
// be a policy session the caller satisfied that is salted to the SRK
// (StartSaltedPolicySession): its HMAC key is then secret, so nobody who
// watched it being satisfied can use it first (found by review: with an
// unsalted session, anyone on the bus or sharing the handle space sent its
// own TPM2_ActivateCredential through provd's satisfied session and read the
// secret). ek's policy must be PolicySecret(endorsement) (the TCG EK
// templates L-1 and L-2); that session is salted too. The secret comes back
// in a session salted to the SRK, of its own: the EK's policy session
// cannot encrypt it, as the TPM keys a policy session's parameter
// encryption with the authorized entity's authValue, and an EK's authValue
// is whatever the one who created it chose (its key and name come from the
// seed and the template alone; found by review: an EK re-created with an
// authValue garbled the secret, and its HMAC still verified). The caller
// clears it.
func (t *TPM) ActivateCredential(activate Object, activateAuth tpm2.Session, ek Object, idObject, encSecret []byte) ([]byte, error) {
	ps, err := t.StartSaltedPolicySession(nil)
	if err != nil {
		return nil, err
	}
	defer ps.Close()
	if _, err := (tpm2.PolicySecret{AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		PolicySession: ps.stepHandle()}).Execute(t); err != nil {
		return nil, Wrap("TPM2_PolicySecret", err)
	}
	var secret []byte
	err = t.WithEncryptSession(EncryptOut, func(enc tpm2.Session) error {
		rsp, err := (tpm2.ActivateCredential{
			ActivateHandle: activate.Auth(activateAuth),
			KeyHandle:      ek.Auth(ps.Session()),
			CredentialBlob: tpm2.TPM2BIDObject{Buffer: idObject},
			Secret:         tpm2.TPM2BEncryptedSecret{Buffer: encSecret},
		}).Execute(t, enc)
		if err != nil {
			// swtpm answers a changed credential with TPM_RC_FAILURE
			// for that command alone (found by review): not failure mode.
			// Every session is salted and keyed by provd's own values
			// (the object's, the EK's policy, the encryption): a refused
			// HMAC is a command changed on the bus.
			return t.notFailureMode(guarded("TPM2_ActivateCredential", err, 1, 2, 3))
		}
		secret = rsp.CertInfo.Buffer
		return nil
	})
	return secret, err
}

// EKPolicySession starts a policy session salted to the SRK that satisfies
// the TCG EK templates' policy, PolicySecret(endorsement): the EK's USER
// role, for TPM2_Import and TPM2_Load under it. The caller closes it.
func (t *TPM) EKPolicySession() (*PolicySession, error) {
	ps, err := t.StartSaltedPolicySession(nil)
	if err != nil {
		return nil, err
	}
	if _, err := (tpm2.PolicySecret{AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		PolicySession: ps.stepHandle()}).Execute(t); err != nil {
		return nil, joinClose(Wrap("TPM2_PolicySecret", err), ps)
	}
	return ps, nil
}

// PolicySecretOf extends the session with TPM2_PolicySecret of object o,
// authorized by auth (o's own authorization, for one command): the
// session's policy then says that its user could authorize o.
func (p *PolicySession) PolicySecretOf(o Object, auth tpm2.Session) error {
	_, err := (tpm2.PolicySecret{AuthHandle: o.Auth(auth), PolicySession: p.stepHandle(), NonceTPM: p.s.NonceTPM()}).Execute(p.t)
	return Wrap("TPM2_PolicySecret", err)
}

// ParentAuth authorizes a parent's USER role for TPM2_Import and
// TPM2_Load under it. Value is the parent's authValue. With Branch nil the
// value authorizes in an HMAC session (a parent with userWithAuth: a legacy
// transfer key); otherwise the parent's policy does, in a policy session
// salted to the SRK and keyed by Value: Branch puts into ps the branch of
// the parent's policy for command cc (a transfer key, whose USER role is
// its policy's since review 74: catalog.TransferBranches).
type ParentAuth struct {
	Value  []byte
	Branch func(ps *PolicySession, cc tpm2.TPMCC) error
}

// ImportDuplicate imports a duplicate made by TPM2_Duplicate with provd's
// inner wrapper (innerKey, which goes to the TPM encrypted by the session
// salted to the SRK) under parent, authorized by pa in a session that also
// authenticates the response.
func (t *TPM) ImportDuplicate(parent Object, pa ParentAuth, pub tpm2.TPMTPublic, d Duplicated) (Blob, error) {
	blob, _, err := t.importDuplicate(parent, pa, pub, d, false)
	return blob, err
}

// ImportAndLoad is ImportDuplicate, then TPM2_Load of what it made under
// parent, in the same session (issue 14: 2 commands fewer than a session
// each): the load proves the blob works here. The caller flushes the
// object.
func (t *TPM) ImportAndLoad(parent Object, pa ParentAuth, pub tpm2.TPMTPublic, d Duplicated) (Blob, Object, error) {
	return t.importDuplicate(parent, pa, pub, d, true)
}

func (t *TPM) importDuplicate(parent Object, pa ParentAuth, pub tpm2.TPMTPublic, d Duplicated, load bool) (Blob, Object, error) {
	srk, err := t.SRK()
	if err != nil {
		return Blob{}, Object{}, err
	}
	var blob Blob
	var obj Object
	probed := false // the shared session's authorizeChecked tells a refused value apart
	// again puts the policy's branch for cc into the policy session (nil
	// for a parent authorized by value): the TPM resets a policy session
	// after the command it authorized, so the load takes its own branch.
	var again func(cc tpm2.TPMCC) error
	var retries int64
	run := func(s tpm2.Session) error {
		if again != nil {
			retries = t.Stats().Retries
			if err := again(tpm2.TPMCCImport); err != nil {
				return err
			}
		}
		rsp, err := (tpm2.Import{
			ParentHandle:  parent.Auth(s),
			EncryptionKey: tpm2.TPM2BData{Buffer: d.InnerKey},
			ObjectPublic:  tpm2.New2B(pub),
			Duplicate:     tpm2.TPM2BPrivate{Buffer: d.Duplicate},
			InSymSeed:     tpm2.TPM2BEncryptedSecret{Buffer: d.Seed},
			Symmetric:     innerWrapper,
		}).Execute(t)
		if err != nil {
			if again != nil {
				// Through the parent's policy, in a session keyed by its
				// value: a refused value is a wrong one in the state or a
				// command changed on the bus, which nothing here tells
				// apart (ErrBadAuth); the session's attributes or cipher
				// refused are the bus's doing (provd's are consistent:
				// guarded); a policy refused after every step passed and
				// a warning's resend is forged (usedPolicy).
				if errors.Is(err, tpm2.TPMRCAttributes) || errors.Is(err, tpm2.TPMRCSymmetric) {
					return t.notFailureMode(guarded("TPM2_Import", err, 1))
				}
				return t.notFailureMode(t.usedPolicy(retries, Wrap("TPM2_Import", err)))
			}
			if probed {
				// A refused value (ErrBadAuth) is a wrong one only if
				// the probe then verifies: a transfer key's value changed
				// in the state directory, exit 11 (found by review: it
				// was reported forged, exit 15, with no bus involved).
				return t.notFailureMode(Wrap("TPM2_Import", err))
			}
			// Its one session is salted and keyed by the parent's
			// authValue, provd's own: a refused HMAC is the bus's doing,
			// or the state's value is not the key's; nothing probes it.
			return t.notFailureMode(guarded("TPM2_Import", err, 1))
		}
		blob = Blob{Public: tpm2.New2B(pub), Private: rsp.OutPrivate}
		if load {
			if again != nil {
				retries = t.Stats().Retries
				if err := again(tpm2.TPMCCLoad); err != nil {
					return err
				}
			}
			// The session's HMACs, keyed by the salt, bind the blob and
			// the name that comes back (LoadWithAuth); that it encrypts
			// the private area on its way in changes nothing: it is the
			// parent's ciphertext already.
			obj, err = t.Load(parent, saltedAuth{s}, blob)
			if again != nil {
				err = t.usedPolicy(retries, err)
			}
		}
		return err
	}
	if pa.Branch != nil {
		// The inner key goes in encrypted by the policy session itself,
		// keyed by its salt and the parent's value.
		ps, err := t.StartSecretPolicySession(EncryptIn, pa.Value)
		if err != nil {
			return Blob{}, Object{}, err
		}
		again = func(cc tpm2.TPMCC) error { return pa.Branch(ps, cc) }
		err = run(ps.s)
		return blob, obj, t.closeAfterLoad(err, ps.Close(), &obj)
	}
	// The operation's shared session, when it is started, authorizes the
	// parent by its value and encrypts the inner key (hmacAuth): a session
	// of its own, its StartAuthSession and its flush, not needed (issue
	// 14: 2 commands in a duplicate's import).
	probed = true
	ok, err := t.withSharedAuth(parent, pa.Value, EncryptIn, run)
	if !ok {
		probed = false
		err = t.withHMACSession(run, tpm2.Auth(pa.Value), tpm2.Salted(srk.Handle, srk.Public), tpm2.AESEncryption(128, tpm2.EncryptIn))
	}
	return blob, obj, t.closeAfterLoad(err, nil, &obj)
}

// usedPolicy is err of a command authorized through a policy session whose
// every step the TPM accepted, the steps begun when the TPM's retry count
// was retries. A TPM_RC_POLICY_FAIL after a command was sent again for a
// warning means the session was used: a copy of the command ran and its
// answer was replaced with a warning (an honest TPM that answers a warning
// has not started the command), so it is ErrResponseForged, not a policy
// the platform fails (as agent's policyUse decides for the agent's
// policies; found by review 2 for the transfer key's HMAC session).
func (t *TPM) usedPolicy(retries int64, err error) error {
	if err == nil || !errors.Is(err, tpm2.TPMRCPolicyFail) || t.Stats().Retries == retries {
		return err
	}
	return fmt.Errorf("%w: the TPM refused the policy session of a command it had accepted every step for, after a command was sent again for a warning: a copy of it ran first (%v)", ErrResponseForged, err)
}

// closeAfterLoad is err, or cerr (a session's flush) when err is nil; on
// an error after obj was loaded it flushes obj and forgets it.
func (t *TPM) closeAfterLoad(err, cerr error, obj *Object) error {
	if err == nil {
		err = cerr
	}
	if err != nil && obj.Handle != 0 {
		// Loaded, then the session's flush failed.
		err = errors.Join(err, t.Flush(obj.Handle))
		*obj = Object{}
	}
	return err
}

// LoadWithAuth loads blob under parent, authorized by pa in a session
// salted to the SRK. That session's HMACs, keyed by the salt, bind the
// blob loaded and the name that comes back, as Load's own guard would:
// Load starts no second session (issue 14: 2 commands fewer for every load
// under a transfer key, an adopted PK's included).
func (t *TPM) LoadWithAuth(parent Object, pa ParentAuth, b Blob) (Object, error) {
	if pa.Branch != nil {
		ps, err := t.StartSaltedPolicySession(pa.Value)
		if err != nil {
			return Object{}, err
		}
		var obj Object
		retries := t.Stats().Retries
		err = pa.Branch(ps, tpm2.TPMCCLoad)
		if err == nil {
			obj, err = t.Load(parent, ps.Session(), b)
			err = t.usedPolicy(retries, t.refusedValue("TPM2_Load", retries, err))
		}
		return obj, t.closeAfterLoad(err, ps.Close(), &obj)
	}
	srk, err := t.SRK()
	if err != nil {
		return Object{}, err
	}
	var obj Object
	retries := t.Stats().Retries
	err = t.withHMACSession(func(s tpm2.Session) (err error) {
		obj, err = t.Load(parent, saltedAuth{s}, b)
		return t.refusedValue("TPM2_Load", retries, err)
	}, tpm2.Auth(pa.Value), tpm2.Salted(srk.Handle, srk.Public))
	return obj, err
}

// refusedValue is err of a command whose one session (salted to the SRK)
// is keyed by a parent's value from the state, sent when the TPM's retry
// count was retries: the TPM's refusal of that session's HMAC
// (TPM_RC_BAD_AUTH, which guarded calls forged) is a wrong value in the
// state or a command changed on the bus, which nothing here tells apart:
// ErrBadAuth, exit 11, as the import under the same parent (found by
// review 79: a transfer key's value edited in the state was "forged", exit
// 15, at every load under it, and exit 11 at an import). It stays forged
// when a command was sent again for a warning since (the copy the TPM ran
// moved the nonces: found by review 80, a forged RETRY made exit 11), and
// so does a refused answer HMAC.
func (t *TPM) refusedValue(command string, retries int64, err error) error {
	var rc tpm2.TPMRC
	if errors.Is(err, ErrResponseForged) && errors.Is(err, tpm2.TPMRCBadAuth) && errors.As(err, &rc) && t.Stats().Retries == retries {
		return Wrap(command, rc)
	}
	return err
}

// ErrDuplicate: a duplicate whose inner wrapper does not open to the object
// it names.
var ErrDuplicate = errors.New("the duplicate's inner integrity check failed (wrong key or name, or changed on the bus)")

// OpenInnerDuplicate opens an inner duplication wrapper (TPM 2.0 Part 1,
// 23.3.2.3, SHA-256 name algorithm, AES-128-CFB with a zero IV): the
// plaintext is a TPM2B integrity digest, SHA-256(TPM2B_SENSITIVE || name),
// then the TPM2B_SENSITIVE. It checks the digest in constant time and returns
// the sensitive area, or ErrDuplicate with nothing.
func OpenInnerDuplicate(key, name, dup []byte) (*tpm2.TPMTSensitive, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	plain := make([]byte, len(dup))
	defer clear(plain)
	//lint:ignore SA1019 the TPM's inner duplication wrapper is AES-CFB (Part 1, 23.3.2.3); its integrity is the digest checked below
	cipher.NewCFBDecrypter(b, make([]byte, aes.BlockSize)).XORKeyStream(plain, dup)
	if len(plain) < 2+sha256.Size || int(binary.BigEndian.Uint16(plain)) != sha256.Size {
		return nil, ErrDuplicate
	}
	integrity, rest := plain[2:2+sha256.Size], plain[2+sha256.Size:]
	h := sha256.New()
	h.Write(rest)
	h.Write(name)
	if subtle.ConstantTimeCompare(h.Sum(nil), integrity) != 1 {
		return nil, ErrDuplicate
	}
	s2b, err := tpm2.Unmarshal[tpm2.TPM2BSensitive](rest)
	if err != nil || len(tpm2.Marshal(s2b)) != len(rest) {
		return nil, ErrDuplicate
	}
	sens, err := s2b.Contents()
	if err != nil {
		return nil, ErrDuplicate
	}
	return sens, nil
}

// ClearSensitive clears the secrets of a sensitive area: authValue, seed
// and the private key.
func ClearSensitive(s *tpm2.TPMTSensitive) {
	if s == nil {
		return
	}
	clear(s.AuthValue.Buffer)
	clear(s.SeedValue.Buffer)
	if p, err := s.Sensitive.RSA(); err == nil {
		clear(p.Buffer)
	}
	if p, err := s.Sensitive.ECC(); err == nil {
		clear(p.Buffer)
	}
	if p, err := s.Sensitive.Bits(); err == nil {
		clear(p.Buffer)
	}
	if p, err := s.Sensitive.Sym(); err == nil {
		clear(p.Buffer)
	}
}

// ImportSensitive brings a private key into the TPM under parent, a storage
// key whose public area the caller authenticated: the sensitive area goes
// in an outer duplication wrapper made in software to parent's public key
// (only parent's TPM can open it), then TPM2_Import gives the blob that
// parent loads. The TPM requires fixedTPM and fixedParent clear in pub;
// whether the key can leave again is its policy's say.
func (t *TPM) ImportSensitive(parent Object, parentAuth tpm2.Session, pub tpm2.TPMTPublic, sens *tpm2.TPMTSensitive) (Blob, error) {
	name, err := tpm2.ObjectName(&pub)
	if err != nil {
		return Blob{}, err
	}
	ek, err := tpm2.ImportEncapsulationKey(&parent.Public)
	if err != nil {
		return Blob{}, fmt.Errorf("import parent: %w", err)
	}
	raw := tpm2.Marshal(sens)
	defer clear(raw)
	dup, seed, err := tpm2.CreateDuplicate(rand.Reader, ek, name.Buffer, raw)
	if err != nil {
		return Blob{}, err
	}
	return t.ImportWrapped(parent, parentAuth, pub, dup, seed)
}

// importGuards are the sessions of ImportWrapped's TPM2_Import whose
// refused HMAC is a command changed on the bus (guarded), or a TPM that no
// longer holds the pinned SRK: the encryption session (2), salted to the
// pinned SRK and keyed by nothing a caller types; and parentAuth (1) when it
// is a session, not a password: provd's callers' sessions are salted to the
// pinned SRK and keyed by provd's own values (the EK's policy session by the
// salt alone, the PK's by the PK's authValue from the state), and the TPM
// checks session 1 first, so a change to the parameters is refused there
// (found by review: the callers' changed imports still said exit 11). A
// password (or no authorization at all) is the caller's to mistype.
func importGuards(parentAuth tpm2.Session) []int {
	if parentAuth == nil || parentAuth.Handle() == tpm2.TPMRSPW {
		return []int{2}
	}
	return []int{1, 2}
}

// ImportWrapped imports an object whose sensitive area comes in an outer
// duplication wrapper only (dup, seed: made by tpm2.CreateDuplicate to
// parent's public key, here or by a fleet endpoint) under parent, authorized
// by parentAuth: the blob parent loads. A wrapper made to another key fails
// its integrity check in the TPM.
func (t *TPM) ImportWrapped(parent Object, parentAuth tpm2.Session, pub tpm2.TPMTPublic, dup, seed []byte) (Blob, error) {
	// The salted session authenticates the response (the private blob).
	var blob Blob
	err := t.WithEncryptSession(EncryptIn, func(enc tpm2.Session) error {
		rsp, err := (tpm2.Import{
			ParentHandle: parent.Auth(parentAuth),
			ObjectPublic: tpm2.New2B(pub),
			Duplicate:    tpm2.TPM2BPrivate{Buffer: dup},
			InSymSeed:    tpm2.TPM2BEncryptedSecret{Buffer: seed},
			Symmetric:    tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull},
		}).Execute(t, enc)
		if err != nil {
			return t.notFailureMode(guarded("TPM2_Import", err, importGuards(parentAuth)...))
		}
		blob = Blob{Public: tpm2.New2B(pub), Private: rsp.OutPrivate}
		return nil
	})
	return blob, err
}
