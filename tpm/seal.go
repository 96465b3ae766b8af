package tpm

import (
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// MaxSealedSize is the largest secret a sealed keyedHash object holds
// (MAX_SYM_DATA on the TPMs we know); larger secrets are envelope-encrypted by
// the caller under a sealed key.
const MaxSealedSize = 128

// Blob is a TPM-wrapped object: its public area and its private part encrypted
// under the parent's storage key. It is safe on disk; only the TPM that holds
// the parent can load it.
type Blob struct {
	Public  tpm2.TPM2BPublic
	Private tpm2.TPM2BPrivate
}

// SealTemplate is the public area of a sealed data object usable only through
// authPolicy (userWithAuth clear) or, when authPolicy is empty, with an empty
// password.
func SealTemplate(authPolicy []byte) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:     true,
			FixedParent:  true,
			UserWithAuth: len(authPolicy) == 0,
			NoDA:         true,
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: authPolicy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash,
			&tpm2.TPMSKeyedHashParms{Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull}}),
	}
}

// Sensitive is what TPM2_Create and CreateLoaded take besides the template:
// the new object's authValue (UserAuth) and, for a sealed data object, its
// data. Both cross the bus only inside the encrypted salted session.
type Sensitive struct {
	UserAuth []byte
	Data     []byte
}

func (in Sensitive) create() tpm2.TPM2BSensitiveCreate {
	if in.UserAuth == nil && in.Data == nil {
		return tpm2.TPM2BSensitiveCreate{}
	}
	sc := &tpm2.TPMSSensitiveCreate{UserAuth: tpm2.TPM2BAuth{Buffer: in.UserAuth}}
	if in.Data != nil {
		sc.Data = tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: in.Data})
	}
	return tpm2.TPM2BSensitiveCreate{Sensitive: sc}
}

// RandomAuth returns n random bytes for an authValue, none of them zero:
// go-tpm v0.9.8 cuts an authValue at its last zero byte when it keys a
// session's HMAC (hmacKeyFromAuthValue strips every zero from the end
// backwards, not only trailing ones), while the TPM strips trailing zeros
// only; with a zero inside, about one random 32-byte value in eight, every
// HMAC would fail (TPM_RC_BAD_AUTH).
func RandomAuth(n int) ([]byte, error) { return nonZeroAuth(rand.Reader, n) }

// Seal creates a sealed data object under parent holding secret (see
// SealTemplate). parentAuth authorizes the parent (nil: empty password). The
// secret crosses the bus only inside an encrypted session.
func (t *TPM) Seal(parent Object, parentAuth tpm2.Session, secret, authPolicy []byte) (Blob, error) {
	if len(secret) == 0 || len(secret) > MaxSealedSize {
		return Blob{}, fmt.Errorf("seal: secret of %d bytes, want 1..%d", len(secret), MaxSealedSize)
	}
	return t.Create(parent, parentAuth, SealTemplate(authPolicy), Sensitive{Data: secret})
}

// Load loads a blob under parent and returns the loaded object; the caller
// flushes it. Like Create, it runs with a session salted to the SRK: the
// command HMAC binds the blob that is loaded, and the response HMAC the
// name that comes back (see Create). When parentAuth is itself a session
// salted to the SRK (PolicySession.Session of StartSaltedPolicySession or
// StartSecretPolicySession), its own HMACs do both, and no second session
// is started (issue 14: two TPM commands fewer per load).
func (t *TPM) Load(parent Object, parentAuth tpm2.Session, b Blob) (Object, error) {
	return t.load(parent, parentAuth, b, nil)
}

// LoadGuarded loads a blob under parent, whose authorization is its empty
// password (the SRK), guarded by guard (PolicySession.Guard of a session
// from StartGuardingPolicySession) where Load starts a session of its own:
// the session's HMACs, keyed by its session key (from a salt only the
// pinned SRK decrypts), bind the blob loaded and the name answered as
// Load's session's do, and the same session then authorizes what is
// loaded under the object (issue 14: 2 commands fewer in a one-shot key
// use). A command changed on the bus is refused, by the TPM or, when its
// guard was taken out, by provd at the answer; an answer that fails the
// guard's HMAC, or has no guard's entry, is ErrResponseForged.
func (t *TPM) LoadGuarded(parent Object, b Blob, guard tpm2.Session) (Object, error) {
	if _, ok := guard.(policyGuard); !ok {
		return Object{}, fmt.Errorf("TPM2_Load: %T is no guard (PolicySession.Guard)", guard)
	}
	return t.load(parent, nil, b, guard)
}

func (t *TPM) load(parent Object, parentAuth tpm2.Session, b Blob, guard tpm2.Session) (Object, error) {
	if parentAuth == nil {
		parentAuth = tpm2.PasswordAuth(nil)
	}
	var rsp *tpm2.LoadResponse
	load := func(extra ...tpm2.Session) (err error) {
		rsp, err = (tpm2.Load{
			ParentHandle: parent.Auth(parentAuth),
			InPrivate:    b.Private,
			InPublic:     b.Public,
		}).Execute(t, extra...)
		return err
	}
	var index int
	var err error
	if guard != nil {
		// The parent's password is session 1, the guard session 2.
		index, err = 2, load(guard)
	} else {
		index, err = t.guardedLoad(authenticated(parentAuth), load)
	}
	if err != nil {
		if rsp != nil { // loaded, then the session's flush failed
			err = errors.Join(err, t.Flush(rsp.ObjectHandle))
		} else {
			t.unheld()
		}
		return Object{}, guarded("TPM2_Load", err, index)
	}
	pub, err := b.Public.Contents()
	if err != nil {
		return Object{}, errors.Join(fmt.Errorf("TPM2_Load: %w", err), t.Flush(rsp.ObjectHandle))
	}
	return Object{Handle: rsp.ObjectHandle, Name: rsp.Name, Public: *pub}, nil
}

// Unseal returns the secret of a loaded sealed object, authorized by auth (nil:
// empty password), through an encrypted session. The caller clears the result
// after use.
func (t *TPM) Unseal(obj Object, auth tpm2.Session) ([]byte, error) {
	if auth == nil {
		auth = tpm2.PasswordAuth(nil)
	}
	var out []byte
	err := t.WithEncryptSession(EncryptOut, func(enc tpm2.Session) error {
		rsp, err := (tpm2.Unseal{ItemHandle: obj.Auth(auth)}).Execute(t, enc)
		if err != nil {
			return Wrap("TPM2_Unseal", err)
		}
		out = rsp.OutData.Buffer
		return nil
	})
	return out, err
}

// UnsealWith returns the secret of a loaded sealed object through auth, which
// must itself encrypt the response (StartSecretPolicySession with EncryptOut):
// the secret never crosses the bus in plaintext, and no second session is
// needed. The caller clears the result after use.
func (t *TPM) UnsealWith(obj Object, auth tpm2.Session) ([]byte, error) {
	if auth == nil || !auth.IsEncryption() {
		return nil, errors.New("TPM2_Unseal: the session does not encrypt the response")
	}
	rsp, err := (tpm2.Unseal{ItemHandle: obj.Auth(auth)}).Execute(t)
	if err != nil {
		return nil, Wrap("TPM2_Unseal", err)
	}
	return rsp.OutData.Buffer, nil
}

// Marshal encodes a blob as TPM2B_PUBLIC || TPM2B_PRIVATE, the layout
// tpm2-tools' tpm2_load takes as -u and -r concatenated.
func (b Blob) Marshal() []byte {
	return append(tpm2.Marshal(b.Public), tpm2.Marshal(b.Private)...)
}

// UnmarshalBlob decodes Marshal's output, refusing trailing or missing bytes.
func UnmarshalBlob(data []byte) (Blob, error) {
	pubBytes, rest, err := split2B(data)
	if err != nil {
		return Blob{}, fmt.Errorf("blob public: %w", err)
	}
	privBytes, rest, err := split2B(rest)
	if err != nil {
		return Blob{}, fmt.Errorf("blob private: %w", err)
	}
	if len(rest) != 0 {
		return Blob{}, fmt.Errorf("blob: %d trailing bytes", len(rest))
	}
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](pubBytes)
	if err != nil {
		return Blob{}, fmt.Errorf("blob public: %w", err)
	}
	if _, err := pub.Contents(); err != nil {
		return Blob{}, fmt.Errorf("blob public: %w", err)
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](privBytes)
	if err != nil {
		return Blob{}, fmt.Errorf("blob private: %w", err)
	}
	return Blob{Public: *pub, Private: *priv}, nil
}

// split2B cuts one TPM2B (2-byte big-endian size, then that many bytes).
func split2B(b []byte) (one, rest []byte, err error) {
	if len(b) < 2 {
		return nil, nil, fmt.Errorf("truncated")
	}
	n := int(b[0])<<8 | int(b[1])
	if n == 0 || len(b) < 2+n {
		return nil, nil, fmt.Errorf("size %d, %d bytes left", n, len(b)-2)
	}
	return b[:2+n], b[2+n:], nil
}

// Name computes the blob's object name (nameAlg over its public area).
func (b Blob) Name() (tpm2.TPM2BName, error) {
	pub, err := b.Public.Contents()
	if err != nil {
		return tpm2.TPM2BName{}, err
	}
	n, err := tpm2.ObjectName(pub)
	if err != nil {
		return tpm2.TPM2BName{}, err
	}
	return *n, nil
}

// Create creates an object from tmpl under parent (authorized by parentAuth)
// and returns its blob. sensitive, when not nil, carries data (a secret)
// into the TPM inside an encrypted session.
//
// The session is there even without a secret: salted to the SRK, its
// command HMAC covers the template, and its response HMAC the public and
// private areas that come back. An interposer on the bus can recompute the
// HMAC of the parent's own authorization (a password, or an unsalted policy
// session: their keys are no secret) and, without this session, would set
// userWithAuth in the template of the PK, D or a key and use them later
// without their policy (found by review; agent tests mount it).
func (t *TPM) Create(parent Object, parentAuth tpm2.Session, tmpl tpm2.TPMTPublic, in Sensitive) (Blob, error) {
	if parentAuth == nil {
		parentAuth = tpm2.PasswordAuth(nil)
	}
	cmd := tpm2.Create{ParentHandle: parent.Auth(parentAuth), InPublic: tpm2.New2B(tmpl), InSensitive: in.create()}
	var blob Blob
	_, err := t.guarded(sealsInput(parentAuth), func(extra ...tpm2.Session) error {
		rsp, err := cmd.Execute(t, extra...)
		if err != nil {
			return guarded("TPM2_Create", err, 1+len(extra))
		}
		blob = Blob{Public: rsp.OutPublic, Private: rsp.OutPrivate}
		return nil
	})
	return blob, err
}

// sealsInput reports whether the authorization s of a command that carries
// a secret in its first parameter (Create's and CreateLoaded's sensitive
// area) also encrypts it and authenticates the command and its answer: a
// session salted to the SRK that decrypts (StartSecretPolicySession with
// EncryptIn). No second session is then needed (issue 14: 2 commands).
func sealsInput(s tpm2.Session) bool { return authenticated(s) && s.IsDecryption() }
