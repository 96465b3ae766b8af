package agent

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/tpm"
)

// Sealed blob format (docs/formats.md). JSON, versioned; the object is the
// TPM-wrapped sealed data object under the PK; Envelope is present when the
// secret is larger than a sealed object holds, and then the sealed object holds
// an AES-256-GCM key and Envelope the ciphertext (AAD: the object's name).
const (
	sealedFormat  = "provd-sealed"
	sealedVersion = 1
	// MaxSealInput bounds what provd seals (envelope included).
	MaxSealInput = 1 << 20
)

type sealedBlob struct {
	Format   string       `json:"format"`
	Version  int          `json:"version"`
	PK       string       `json:"pk"` // hex name of the PK it is sealed under
	Policy   policyRecord `json:"policy"`
	Object   []byte       `json:"object"` // tpm.Blob.Marshal
	Envelope *envelope    `json:"envelope,omitempty"`
}

type envelope struct {
	Alg        string `json:"alg"`
	Nonce      []byte `json:"nonce"`
	Ciphertext []byte `json:"ciphertext"`
}

// Seal seals req.Data under the PK. Secrets up to tpm.MaxSealedSize bytes are
// sealed directly; larger ones are encrypted with AES-256-GCM under a fresh key
// that is sealed instead.
func (a *Agent) Seal(ctx context.Context, req api.SealRequest) ([]byte, error) {
	defer a.lock()()
	objects := map[string]string{}
	return auditedResult(ctx, a, "seal", objects, func() ([]byte, error) {
		return a.seal(ctx, req, objects)
	})
}

func (a *Agent) seal(ctx context.Context, req api.SealRequest, objects map[string]string) ([]byte, error) {
	if len(req.Data) == 0 || len(req.Data) > MaxSealInput {
		return nil, fmt.Errorf("%w: %d bytes to seal, want 1..%d", api.ErrBadInput, len(req.Data), MaxSealInput)
	}
	var out []byte
	err := a.withPK(ctx, func(l *loadedPK) error {
		rec := l.rec
		switch {
		case req.Signer != nil:
			// A secret's signed policy is satisfied by the signed policies
			// installed for the PK, so only the PK's own signer can be
			// named: any other signer's policies could never be installed
			// and the secret could never be unsealed.
			ref, err := hex.DecodeString(l.rec.PolicyRef)
			if err != nil {
				return fmt.Errorf("%w: the PK's policyRef: %v", api.ErrTampered, err)
			}
			r, err := newSignedRecord(req.Signer, ref)
			if err != nil {
				return fmt.Errorf("%w: policy signer: %v", api.ErrNotPermitted, err)
			}
			if l.rec.Kind != PolicySigned || r.Digest != l.rec.Digest {
				return fmt.Errorf("%w: a secret's policy signer must be the one the PK was provisioned with; secrets sealed to other signers are not supported", api.ErrNotPermitted)
			}
			rec = r
		case len(req.PCRs) > 0:
			bank := req.Bank
			if bank == 0 {
				bank = policy.BankSHA256
			}
			if err := checkResettable(req.PCRs, req.AllowResettable); err != nil {
				return err
			}
			cur, err := a.t.PCRReadAuthenticated(bank.Alg(), req.PCRs)
			if err != nil {
				return err
			}
			r, err := newPCRRecord(policy.PCRValues{Bank: bank, Values: cur})
			if err != nil {
				return err
			}
			rec = r
		}
		b := sealedBlob{Format: sealedFormat, Version: sealedVersion, PK: l.state.Name, Policy: rec}
		secret := req.Data
		var dek []byte
		if len(req.Data) > tpm.MaxSealedSize {
			dek = make([]byte, 32)
			if _, err := rand.Read(dek); err != nil {
				return err
			}
			defer clear(dek)
			secret = dek
		}
		obj, err := a.createUnderPK(l, l.state.child(tpm.SealTemplate(officer.ObjectPolicyDigest(rec.digest()))), secret)
		if err != nil {
			return err
		}
		name, err := obj.Name()
		if err != nil {
			return err
		}
		objects["sealed_object"] = fmt.Sprintf("%x", name.Buffer)
		b.Object = obj.Marshal()
		if dek != nil {
			env, err := seal256(dek, req.Data, name.Buffer)
			if err != nil {
				return err
			}
			b.Envelope = env
		}
		out, err = json.MarshalIndent(b, "", "  ")
		return err
	})
	return out, err
}

func seal256(key, plain, aad []byte) (*envelope, error) {
	gcm, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return &envelope{Alg: "AES-256-GCM", Nonce: nonce, Ciphertext: gcm.Seal(nil, nonce, plain, aad)}, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// parseSealed validates a sealed blob's structure, and that its policy
// record is its object's (checkSealedPolicy).
func parseSealed(data []byte) (sealedBlob, tpm.Blob, error) {
	var b sealedBlob
	if err := strictJSON(data, &b); err != nil {
		return b, tpm.Blob{}, fmt.Errorf("%w: sealed blob: %v", api.ErrBadInput, err)
	}
	if b.Format != sealedFormat {
		return b, tpm.Blob{}, fmt.Errorf("%w: not a provd sealed blob", api.ErrBadInput)
	}
	if b.Version != sealedVersion {
		return b, tpm.Blob{}, fmt.Errorf("%w: sealed blob version %d; this provd reads %d", api.ErrBadInput, b.Version, sealedVersion)
	}
	if err := api.CheckHexFields("sealed blob", map[string]string{"pk": b.PK}); err != nil {
		return b, tpm.Blob{}, err
	}
	obj, err := tpm.UnmarshalBlob(b.Object)
	if err != nil {
		return b, obj, fmt.Errorf("%w: sealed blob: %v", api.ErrBadInput, err)
	}
	if err := checkSealedPolicy(b, obj); err != nil {
		return b, obj, err
	}
	if b.Envelope != nil && (b.Envelope.Alg != "AES-256-GCM" || len(b.Envelope.Nonce) != 12) {
		return b, obj, fmt.Errorf("%w: sealed blob envelope", api.ErrBadInput)
	}
	return b, obj, nil
}

// checkSealedPolicy: the policy the blob's record gives, as unseal runs it,
// is the authPolicy of the blob's object. It must be before the TPM sees
// anything: a blob whose record is another seal's (edited, or mixed up)
// is tampered (exit 14), not a platform that fails it, and not the bus's
// doing (found by review: after an honest warning, policyUse called it
// forged).
func checkSealedPolicy(b sealedBlob, blob tpm.Blob) error {
	expr, err := b.Policy.expr()
	if err != nil {
		return fmt.Errorf("%w: sealed blob policy: %v", api.ErrBadInput, err)
	}
	want, err := officer.ObjectPolicy(expr).Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		return fmt.Errorf("%w: sealed blob policy: %v", api.ErrBadInput, err)
	}
	pub, err := blob.Public.Contents()
	if err != nil {
		return fmt.Errorf("%w: sealed blob: %v", api.ErrBadInput, err)
	}
	if !bytes.Equal(pub.AuthPolicy.Buffer, want) {
		return fmt.Errorf("%w: the sealed blob's policy record is not its object's policy (edited, or another seal's)", api.ErrTampered)
	}
	return nil
}

// Unseal returns the secret of a sealed blob when the platform satisfies both
// the PK's policy and the secret's own. The caller clears the result.
func (a *Agent) Unseal(ctx context.Context, data []byte) (secret []byte, err error) {
	defer a.lock()()
	objects := map[string]string{}
	err = a.unseal(ctx, data, objects, &secret)
	if err != nil {
		// Failures are audited; successes are use, not lifecycle.
		if aerr := a.t.Share(func() error { return a.record(ctx, "unseal", objects, err) }); aerr != nil {
			err = errors.Join(err, aerr)
		}
	}
	return secret, err
}

func (a *Agent) unseal(ctx context.Context, data []byte, objects map[string]string, out *[]byte) error {
	b, blob, err := parseSealed(data)
	if err != nil {
		return err
	}
	name, err := blob.Name()
	if err != nil {
		return err
	}
	objects["sealed_object"] = fmt.Sprintf("%x", name.Buffer)
	// One salted policy session does it all: it guards the PK's load, the
	// PK's policy authorizes the sealed object's load, the TPM resets the
	// session after it, the object's own policy authorizes the unseal, and
	// the session encrypts the secret on its way out: a one-shot unseal is
	// 15 TPM commands (issue 14: 17 with a session of its own for the PK's
	// load, 21 with one for the secret's encryption too).
	secretOut := func(auth []byte) (*tpm.PolicySession, error) {
		return a.t.StartSecretPolicySession(tpm.EncryptOut, auth)
	}
	// The object's policy holds PCR values, compared at its PolicyPCR: a
	// POLICY_FAIL of the load or the unseal after a resend is the bus's
	// (policyUse; found by review).
	retries := a.t.Stats().Retries
	return a.policyUse(retries, a.withPKGuarded(ctx, secretOut, func(l *loadedPK, ps *tpm.PolicySession) (err error) {
		if b.PK != l.state.Name {
			return fmt.Errorf("%w: sealed under another provisioning key (%.16s…)", api.ErrNotFound, b.PK)
		}
		expr, err := b.Policy.expr()
		if err != nil {
			return err
		}
		use, useOpts, err := l.usePolicy(tpm2.TPMCCLoad)
		if err != nil {
			return err
		}
		if err := a.apply(ps, l.rec, use, useOpts); err != nil {
			return err
		}
		obj, err := a.t.Load(l.pk, ps.Session(), blob)
		if err != nil {
			return err
		}
		defer a.flush(&err, obj.Handle)
		if err := a.apply(ps, b.Policy, officer.ObjectPolicy(expr), l.opts); err != nil {
			return err
		}
		secret, err := a.t.UnsealWith(obj, ps.Session())
		if err != nil {
			return err
		}
		if b.Envelope == nil {
			*out = secret
			return nil
		}
		defer clear(secret)
		gcm, err := newGCM(secret)
		if err != nil {
			return err
		}
		plain, err := gcm.Open(nil, b.Envelope.Nonce, b.Envelope.Ciphertext, name.Buffer)
		if err != nil {
			return fmt.Errorf("%w: sealed blob envelope fails authentication", api.ErrTampered)
		}
		*out = plain
		return nil
	}))
}
