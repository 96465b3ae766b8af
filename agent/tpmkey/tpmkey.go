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
// goroutines). An in-process *agent.Agent is not, so every Key over the same
// *agent.Agent takes one lock per call; the daemon's client (agent/client) is
// safe for concurrent use and is called as it is (the daemon serializes TPM
// work through its queue). Code that also calls the Agent directly while Keys
// are in use must not do so concurrently with them. Any other Backend must be
// safe for concurrent use.
package tpmkey

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"fmt"
	"io"
	"runtime"
	"sync"
	"weak"

	"github.com/provd/provd/agent"
)

// Backend is what a Key needs of provd: an in-process *agent.Agent or the
// daemon's client (both implement agent.API).
type Backend interface {
	KeyPublic(ctx context.Context, name string) (crypto.PublicKey, agent.KeyInfo, error)
	Sign(ctx context.Context, name string, digest []byte, opts agent.SignOptions) ([]byte, error)
	Decrypt(ctx context.Context, name string, ciphertext []byte, h crypto.Hash) ([]byte, error)
}

var _ Backend = (agent.API)(nil)

// Key is a TPM-resident provd key usable as a crypto.Signer (sign keys) or a
// crypto.Decrypter (RSA decrypt keys).
type Key struct {
	// ctx bounds each call: crypto.Signer has no context parameter.
	ctx  context.Context
	ag   Backend
	mu   *sync.Mutex // the Agent's lock (lockFor); nil for other backends
	name string
	pub  crypto.PublicKey
	info agent.KeyInfo
}

// agentLocks holds one mutex per in-process *agent.Agent that Keys use, so
// that Keys over one Agent serialize among themselves. An entry goes when
// its Agent is garbage collected.
var agentLocks sync.Map // weak.Pointer[agent.Agent] -> *sync.Mutex

// lockFor returns the lock for b when it is an in-process *agent.Agent.
func lockFor(b Backend) *sync.Mutex {
	ag, ok := b.(*agent.Agent)
	if !ok || ag == nil {
		return nil
	}
	wp := weak.Make(ag)
	mu, loaded := agentLocks.LoadOrStore(wp, new(sync.Mutex))
	if !loaded {
		runtime.AddCleanup(ag, func(wp weak.Pointer[agent.Agent]) { agentLocks.Delete(wp) }, wp)
	}
	return mu.(*sync.Mutex)
}

// call runs fn under the Agent's lock, if any.
func (k *Key) call(fn func() error) error {
	if k.mu != nil {
		k.mu.Lock()
		defer k.mu.Unlock()
	}
	return fn()
}

// Compile-time guards.
var (
	_ crypto.Signer    = (*Key)(nil)
	_ crypto.Decrypter = (*Key)(nil)
)

// New returns key name of ag. ctx is used for every call made through the
// Key (cancel it to stop them).
func New(ctx context.Context, ag Backend, name string) (*Key, error) {
	k := &Key{ctx: ctx, ag: ag, mu: lockFor(ag), name: name}
	if err := k.call(func() (err error) {
		k.pub, k.info, err = ag.KeyPublic(ctx, name)
		return err
	}); err != nil {
		return nil, err
	}
	return k, nil
}

// Info describes the key.
func (k *Key) Info() agent.KeyInfo { return k.info }

// Public returns the public key (*ecdsa.PublicKey or *rsa.PublicKey).
func (k *Key) Public() crypto.PublicKey { return k.pub }

// Sign signs digest inside the TPM. ECDSA signatures are ASN.1 DER, as
// crypto.Signer requires; RSA uses PKCS#1 v1.5, or PSS when opts is
// *rsa.PSSOptions (salt length: the hash's size, which is what the TPM uses;
// PSSSaltLengthAuto and PSSSaltLengthEqualsHash are accepted). rand is
// ignored: the TPM draws its own randomness.
func (k *Key) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	so := agent.SignOptions{Hash: opts.HashFunc()}
	switch k.pub.(type) {
	case *ecdsa.PublicKey:
		so.Scheme = agent.SchemeECDSA
	case *rsa.PublicKey:
		so.Scheme = agent.SchemeRSASSA
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			switch pss.SaltLength {
			case rsa.PSSSaltLengthAuto, rsa.PSSSaltLengthEqualsHash, so.Hash.Size():
			default:
				return nil, fmt.Errorf("%w: PSS salt length %d (the TPM uses the hash size)", agent.ErrNotPermitted, pss.SaltLength)
			}
			so.Scheme = agent.SchemeRSAPSS
		}
	}
	var sig []byte
	err := k.call(func() (err error) {
		sig, err = k.ag.Sign(k.ctx, k.name, digest, so)
		return err
	})
	return sig, err
}

// Decrypt decrypts an RSA-OAEP ciphertext inside the TPM. opts must be
// *rsa.OAEPOptions with SHA-256 or SHA-384, the same MGF1 hash and no label;
// PKCS#1 v1.5 decryption is not an approved scheme and is refused.
func (k *Key) Decrypt(_ io.Reader, msg []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	o, ok := opts.(*rsa.OAEPOptions)
	if !ok {
		return nil, fmt.Errorf("%w: only RSA-OAEP decryption (*rsa.OAEPOptions)", agent.ErrNotPermitted)
	}
	if len(o.Label) != 0 || (o.MGFHash != 0 && o.MGFHash != o.Hash) {
		return nil, fmt.Errorf("%w: OAEP with a label or another MGF1 hash", agent.ErrNotPermitted)
	}
	var out []byte
	err := k.call(func() (err error) {
		out, err = k.ag.Decrypt(k.ctx, k.name, msg, o.Hash)
		return err
	})
	return out, err
}
