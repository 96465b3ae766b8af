package tpm

import (
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// Operations on operational keys: derivation (CreateLoaded under a derivation
// parent), context save/load for object caches, and the key uses (sign, HMAC,
// ECDH, RSA decryption, symmetric encryption). Every use takes the session
// that authorizes the key (a policy session: provd's keys have userWithAuth
// clear); outputs that are secrets come back inside an encrypted session.

// CreateLoaded derives (or creates) an object from tmpl under parent,
// authorized by parentAuth, and returns it loaded; the caller flushes it. A
// derived object has no private blob: keep it loaded, context-save it, or
// derive it again.
func (t *TPM) CreateLoaded(parent Object, parentAuth tpm2.Session, tmpl tpm2.TPMTTemplate, in Sensitive) (Object, error) {
	obj, _, err := t.createLoaded(parent, parentAuth, tpm2.New2BTemplate(&tmpl), in)
	return obj, err
}

// CreateAndLoad creates an object from tmpl under the storage parent
// parent and returns it loaded, with its blob to keep: TPM2_Create and
// TPM2_Load in one command (issue 14: provision loads the PK it just made;
// 3 commands fewer than Create and Load, each in its salted session). The
// caller flushes the object.
func (t *TPM) CreateAndLoad(parent Object, parentAuth tpm2.Session, tmpl tpm2.TPMTPublic, in Sensitive) (Object, Blob, error) {
	return t.createLoaded(parent, parentAuth, tpm2.New2BTemplate(&tmpl), in)
}

func (t *TPM) createLoaded(parent Object, parentAuth tpm2.Session, tmpl tpm2.TPM2BTemplate, in Sensitive) (Object, Blob, error) {
	if parentAuth == nil {
		parentAuth = tpm2.PasswordAuth(nil)
	}
	// A session salted to the SRK binds the template to the command and the
	// object that comes back to the response (see Create).
	var rsp *tpm2.CreateLoadedResponse
	create := func(extra ...tpm2.Session) (err error) {
		rsp, err = (tpm2.CreateLoaded{
			ParentHandle: parent.Auth(parentAuth),
			InSensitive:  in.create(),
			InPublic:     tmpl,
		}).Execute(t, extra...)
		return err
	}
	index, err := t.guarded(sealsInput(parentAuth), create)
	if err != nil {
		if rsp != nil { // created, then the session's flush failed
			err = errors.Join(err, t.Flush(rsp.ObjectHandle))
		} else {
			t.unheld()
		}
		return Object{}, Blob{}, guarded("TPM2_CreateLoaded", err, index)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return Object{}, Blob{}, errors.Join(fmt.Errorf("TPM2_CreateLoaded: %w", err), t.Flush(rsp.ObjectHandle))
	}
	return Object{Handle: rsp.ObjectHandle, Name: rsp.Name, Public: *pub}, Blob{Public: rsp.OutPublic, Private: rsp.OutPrivate}, nil
}

// ContextSave saves a loaded object's context (the TPM encrypts and
// integrity-protects it); the object stays loaded until flushed.
func (t *TPM) ContextSave(h tpm2.TPMHandle) (tpm2.TPMSContext, error) {
	rsp, err := (tpm2.ContextSave{SaveHandle: h}).Execute(t)
	if err != nil {
		return tpm2.TPMSContext{}, Wrap("TPM2_ContextSave", err)
	}
	return rsp.Context, nil
}

// ContextLoad loads a saved context and returns its new handle. Contexts do
// not survive a TPM reset (TPM_RC_INTEGRITY after a restart without
// Shutdown(STATE)): callers fall back to loading the object again.
func (t *TPM) ContextLoad(c tpm2.TPMSContext) (tpm2.TPMHandle, error) {
	rsp, err := (tpm2.ContextLoad{Context: c}).Execute(t)
	if err != nil {
		t.unheld()
		return 0, Wrap("TPM2_ContextLoad", err)
	}
	return rsp.LoadedHandle, nil
}

// Sign signs digest with an unrestricted signing key using scheme (the key's
// scheme is TPM_ALG_NULL, so the command names it).
func (t *TPM) Sign(key Object, auth tpm2.Session, digest []byte, scheme tpm2.TPMTSigScheme) (tpm2.TPMTSignature, error) {
	rsp, err := (tpm2.Sign{
		KeyHandle:  key.Auth(auth),
		Digest:     tpm2.TPM2BDigest{Buffer: digest},
		InScheme:   scheme,
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}).Execute(t)
	if err != nil {
		return tpm2.TPMTSignature{}, Wrap("TPM2_Sign", err)
	}
	return rsp.Signature, nil
}

// MaxBuffer is the largest TPM2B_MAX_BUFFER provd sends (MAX_DIGEST_BUFFER on
// the TPMs we know).
const MaxBuffer = 1024

// HMAC computes the HMAC of data with a keyedHash key. Up to MaxBuffer bytes
// take one TPM2_HMAC; longer data goes through an HMAC sequence
// (HMAC_Start, SequenceUpdate per MaxBuffer bytes, SequenceComplete), which
// takes one object slot while it runs. auth authorizes the key; it is used
// once (HMAC or HMAC_Start). The data and the MAC cross the bus only inside
// salted sessions (the data may be a secret, and a MAC an interposer reads
// is a MAC it can replay): one session encrypting both ways for TPM2_HMAC
// and SequenceComplete, one encrypting the input for SequenceUpdate (whose
// response has no parameter to encrypt).
func (t *TPM) HMAC(key Object, auth tpm2.Session, alg tpm2.TPMIAlgHash, data []byte) ([]byte, error) {
	var mac []byte
	if len(data) <= MaxBuffer {
		err := t.WithEncryptSession(EncryptInOut, func(enc tpm2.Session) error {
			rsp, err := (tpm2.Hmac{
				Handle:  key.Auth(auth),
				Buffer:  tpm2.TPM2BMaxBuffer{Buffer: data},
				HashAlg: alg,
			}).Execute(t, enc)
			if err != nil {
				return Wrap("TPM2_HMAC", err)
			}
			mac = rsp.OutHMAC.Buffer
			return nil
		})
		return mac, err
	}
	// The sequence object gets a random authValue, sent encrypted, and every
	// command on it an HMAC session keyed by it: with an empty one anyone on
	// the bus could feed provd's running sequence, or complete it over data
	// of its own (found by review).
	seqAuth, err := RandomAuth(32)
	if err != nil {
		return nil, err
	}
	var seq *tpm2.HmacStartResponse
	err = t.WithEncryptSession(EncryptIn, func(enc tpm2.Session) (err error) {
		seq, err = (tpm2.HmacStart{Handle: key.Auth(auth), Auth: tpm2.TPM2BAuth{Buffer: seqAuth}, HashAlg: alg}).Execute(t, enc)
		return err
	})
	if err != nil {
		if seq == nil {
			t.unheld()
		}
		return nil, Wrap("TPM2_HMAC_Start", err)
	}
	sh := tpm2.AuthHandle{Handle: seq.SequenceHandle, Auth: tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.Auth(seqAuth))}
	err = t.WithEncryptSession(EncryptIn, func(enc tpm2.Session) error {
		for len(data) > MaxBuffer {
			if _, err := (tpm2.SequenceUpdate{SequenceHandle: sh, Buffer: tpm2.TPM2BMaxBuffer{Buffer: data[:MaxBuffer]}}).Execute(t, enc); err != nil {
				return Wrap("TPM2_SequenceUpdate", err)
			}
			data = data[MaxBuffer:]
		}
		return nil
	})
	if err == nil {
		// A successful SequenceComplete ends the sequence object; after a
		// failure it is still loaded and is flushed below.
		err = t.WithEncryptSession(EncryptInOut, func(enc tpm2.Session) error {
			done, err := (tpm2.SequenceComplete{SequenceHandle: sh, Buffer: tpm2.TPM2BMaxBuffer{Buffer: data}, Hierarchy: tpm2.TPMRHNull}).Execute(t, enc)
			if err != nil {
				return Wrap("TPM2_SequenceComplete", err)
			}
			mac = done.Result.Buffer
			return nil
		})
	}
	if err != nil {
		return nil, errors.Join(err, t.Flush(seq.SequenceHandle))
	}
	return mac, nil
}

// ECDHZGen multiplies the peer's public point by the key's private scalar and
// returns the shared point's X coordinate (the ECDH shared secret Z). The
// result comes back encrypted in a salted session; the caller clears it.
func (t *TPM) ECDHZGen(key Object, auth tpm2.Session, peer tpm2.TPMSECCPoint) ([]byte, error) {
	var z []byte
	err := t.WithEncryptSession(EncryptOut, func(enc tpm2.Session) error {
		rsp, err := (tpm2.ECDHZGen{
			KeyHandle: key.Auth(auth),
			InPoint:   tpm2.New2B(peer),
		}).Execute(t, enc)
		if err != nil {
			return Wrap("TPM2_ECDH_ZGen", err)
		}
		p, err := rsp.OutPoint.Contents()
		if err != nil {
			return fmt.Errorf("TPM2_ECDH_ZGen: %w", err)
		}
		z = p.X.Buffer
		return nil
	})
	return z, err
}

// RSADecryptOAEP decrypts an RSA-OAEP ciphertext (hash alg, empty label) with
// an RSA decryption key. The plaintext comes back encrypted in a salted
// session; the caller clears it.
func (t *TPM) RSADecryptOAEP(key Object, auth tpm2.Session, alg tpm2.TPMIAlgHash, ciphertext []byte) ([]byte, error) {
	var out []byte
	err := t.WithEncryptSession(EncryptOut, func(enc tpm2.Session) error {
		cmd := tpm2.RSADecrypt{
			KeyHandle:  key.Auth(auth),
			CipherText: tpm2.TPM2BPublicKeyRSA{Buffer: ciphertext},
			InScheme: tpm2.TPMTRSADecrypt{
				Scheme:  tpm2.TPMAlgOAEP,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgOAEP, &tpm2.TPMSEncSchemeOAEP{HashAlg: alg}),
			},
		}
		rsp, err := cmd.Execute(t, enc)
		if err != nil {
			return Wrap("TPM2_RSA_Decrypt", err)
		}
		out = rsp.Message.Buffer
		return nil
	})
	if err = t.notFailureMode(err); errors.Is(err, ErrCommandFailed) {
		err = fmt.Errorf("decryption failed: wrong key, OAEP hash or label (openssl needs -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256 for the default hash): %w", err)
	}
	return out, err
}

// SymCrypt encrypts or decrypts in (at most MaxBuffer bytes) with a
// symmetric key in mode with iv, through TPM2_EncryptDecrypt2. Data goes in and out
// inside a salted, encrypted session; the caller clears the result.
func (t *TPM) SymCrypt(key Object, auth tpm2.Session, decrypt bool, mode tpm2.TPMIAlgSymMode, iv, in []byte) ([]byte, error) {
	if len(in) > MaxBuffer {
		return nil, fmt.Errorf("TPM2_EncryptDecrypt2: %d bytes, at most %d", len(in), MaxBuffer)
	}
	var out []byte
	err := t.WithEncryptSession(EncryptInOut, func(enc tpm2.Session) error {
		rsp, err := (tpm2.EncryptDecrypt2{
			KeyHandle: key.Auth(auth),
			Message:   tpm2.TPM2BMaxBuffer{Buffer: in},
			Decrypt:   tpm2.TPMIYesNo(decrypt),
			Mode:      mode,
			IV:        tpm2.TPM2BIV{Buffer: iv},
		}).Execute(t, enc)
		if err != nil {
			return Wrap("TPM2_EncryptDecrypt2", err)
		}
		out = rsp.OutData.Buffer
		return nil
	})
	return out, err
}
