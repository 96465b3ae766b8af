// Package tpmkey exposes provd's operational keys as Go crypto.Signer and
// crypto.Decrypter, so Go programs use keys that never leave the TPM: TLS
// client certificates (tls.Certificate{PrivateKey: key}), CSRs
// (x509.CreateCertificateRequest), JWS, OAEP key transport.
//
// Every Sign or Decrypt is one key use through the agent: the key's policy
// (the PK's PCR policy) is checked by the TPM on each call, so a Key stops
// working when the platform stops satisfying it (an error wrapping
// tpm.ErrPolicyNotSatisfied).
//
// A Key is safe for concurrent use (Go's TLS stack may call Sign from several
// goroutines), because its Backend is: an in-process *agent.Agent runs one
// operation at a time, and the daemon's client (agent/client) sends each call
// to the daemon, which serializes TPM work through its queue. Any other
// Backend must be safe for concurrent use too.
//
// crypto.Signer and crypto.Decrypter take no context, so a Key holds none:
// Sign and Decrypt are each bounded by the Key's timeout (DefaultTimeout,
// WithTimeout), and SignContext and DecryptContext take the caller's context
// for callers that have one (CSR does).
package tpmkey

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"fmt"
	"io"
	"time"

	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
)

// Backend is what a Key needs of provd: an in-process *agent.Agent or the
// daemon's client (both implement api.Service).
type Backend interface {
	KeyPublic(ctx context.Context, name string) (crypto.PublicKey, api.KeyInfo, error)
	Sign(ctx context.Context, name string, digest []byte, opts api.SignOptions) ([]byte, error)
	Decrypt(ctx context.Context, name string, ciphertext []byte, h crypto.Hash) ([]byte, error)
}

var _ Backend = (api.Service)(nil)

// Key is a TPM-resident provd key usable as a crypto.Signer (sign keys) or a
// crypto.Decrypter (RSA decrypt keys).
type Key struct {
	ag      Backend
	name    string
	pub     crypto.PublicKey
	info    api.KeyInfo
	timeout time.Duration
}

// DefaultTimeout bounds one Sign or Decrypt made through the context-free
// crypto interfaces: above one TPM command's timeout, so that it ends a call
// only when the backend is stuck (a wedged daemon), not a slow key.
const DefaultTimeout = 3 * time.Minute

// Option configures a Key.
type Option func(*Key)

// WithTimeout bounds each Sign and Decrypt of the Key (d > 0).
func WithTimeout(d time.Duration) Option {
	return func(k *Key) {
		if d > 0 {
			k.timeout = d
		}
	}
}

// Compile-time guards.
var (
	_ crypto.Signer    = (*Key)(nil)
	_ crypto.Decrypter = (*Key)(nil)
)

// New returns key name of ag; ctx bounds looking the key up.
func New(ctx context.Context, ag Backend, name string, opts ...Option) (*Key, error) {
	pub, info, err := ag.KeyPublic(ctx, name)
	if err != nil {
		return nil, err
	}
	k := &Key{ag: ag, name: name, pub: pub, info: info, timeout: DefaultTimeout}
	for _, o := range opts {
		o(k)
	}
	return k, nil
}

// bounded is a context for one call through the context-free interfaces.
func (k *Key) bounded() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), k.timeout)
}

// Info describes the key.
func (k *Key) Info() api.KeyInfo { return k.info }

// Public returns the public key (*ecdsa.PublicKey or *rsa.PublicKey).
func (k *Key) Public() crypto.PublicKey { return k.pub }

// Sign signs digest inside the TPM. ECDSA signatures are ASN.1 DER, as
// crypto.Signer requires; RSA uses PKCS#1 v1.5, or PSS when opts is
// *rsa.PSSOptions (salt length: the hash's size, which is what the TPM uses;
// PSSSaltLengthAuto and PSSSaltLengthEqualsHash are accepted). rand is
// ignored: the TPM draws its own randomness.
func (k *Key) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	ctx, cancel := k.bounded()
	defer cancel()
	return k.SignContext(ctx, digest, opts)
}

// SignContext is Sign for a caller with a context: the call ends with ctx.
//
// opts must name the digest's hash, approved (SHA-256, SHA-384): a zero
// hash is crypto.Signer's "the message was not hashed", which a TPM key
// does not sign (found by review 58: the agent read it as the key's
// default hash and signed the bytes as a SHA-256 digest; and *rsa.PSSOptions
// with no hash and a salt length panicked on the hash's size).
func (k *Key) SignContext(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil || opts.HashFunc() == 0 {
		return nil, fmt.Errorf("%w: no hash named: a TPM key signs a digest, not an unhashed message", api.ErrNotPermitted)
	}
	if _, err := catalog.HashOf(opts.HashFunc()); err != nil {
		return nil, fmt.Errorf("%w: %w", api.ErrNotPermitted, err)
	}
	so := api.SignOptions{Hash: opts.HashFunc()}
	switch k.pub.(type) {
	case *ecdsa.PublicKey:
		so.Scheme = api.SchemeECDSA
	case *rsa.PublicKey:
		so.Scheme = api.SchemeRSASSA
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			switch pss.SaltLength {
			case rsa.PSSSaltLengthAuto, rsa.PSSSaltLengthEqualsHash, so.Hash.Size():
			default:
				return nil, fmt.Errorf("%w: PSS salt length %d (the TPM uses the hash size)", api.ErrNotPermitted, pss.SaltLength)
			}
			so.Scheme = api.SchemeRSAPSS
		}
	}
	return k.ag.Sign(ctx, k.name, digest, so)
}

// Decrypt decrypts an RSA-OAEP ciphertext inside the TPM. opts must be
// *rsa.OAEPOptions with SHA-256 or SHA-384, the same MGF1 hash and no label;
// PKCS#1 v1.5 decryption is not an approved scheme and is refused.
func (k *Key) Decrypt(_ io.Reader, msg []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	ctx, cancel := k.bounded()
	defer cancel()
	return k.DecryptContext(ctx, msg, opts)
}

// DecryptContext is Decrypt for a caller with a context: the call ends with
// ctx.
func (k *Key) DecryptContext(ctx context.Context, msg []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	o, ok := opts.(*rsa.OAEPOptions)
	if !ok {
		return nil, fmt.Errorf("%w: only RSA-OAEP decryption (*rsa.OAEPOptions)", api.ErrNotPermitted)
	}
	if len(o.Label) != 0 || (o.MGFHash != 0 && o.MGFHash != o.Hash) {
		return nil, fmt.Errorf("%w: OAEP with a label or another MGF1 hash", api.ErrNotPermitted)
	}
	return k.ag.Decrypt(ctx, k.name, msg, o.Hash)
}
