package tpm

import (
	"github.com/google/go-tpm/tpm2"
)

// Direction says which way a session encrypts parameters: the TPM refuses
// (TPM_RC_ATTRIBUTES) to decrypt a command whose first parameter is not a sized
// buffer, such as TPM2_Unseal's, so the direction follows the command.
type Direction int

// Directions of parameter encryption.
const (
	EncryptIn    Direction = iota + 1 // secret goes into the TPM (Create, Import)
	EncryptOut                        // secret comes out (Unseal, Duplicate)
	EncryptInOut                      // both
)

func (d Direction) option() tpm2.AuthOption {
	switch d {
	case EncryptIn:
		return tpm2.AESEncryption(128, tpm2.EncryptIn)
	case EncryptOut:
		return tpm2.AESEncryption(128, tpm2.EncryptOut)
	default:
		return tpm2.AESEncryption(128, tpm2.EncryptInOut)
	}
}

// startHMACSession starts a SHA-256 HMAC session with opts and returns it
// with its flush, which flushes the handle the session started with
// (sessionCloser) and names the command that failed.
func (t *TPM) startHMACSession(opts ...tpm2.AuthOption) (tpm2.Session, func() error, error) {
	s, _, err := tpm2.HMACSession(t, tpm2.TPMAlgSHA256, 16, opts...)
	if err != nil {
		return nil, nil, Wrap("TPM2_StartAuthSession", err)
	}
	return s, t.sessionCloser(s), nil
}

// withHMACSession runs fn with an HMAC session started with opts and flushes
// it after, reporting a flush failure when fn succeeded.
func (t *TPM) withHMACSession(fn func(s tpm2.Session) error, opts ...tpm2.AuthOption) (err error) {
	s, closer, err := t.startHMACSession(opts...)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := closer(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	return fn(s)
}

// sessionCloser returns the flush of session s, in place of go-tpm's
// closer: it flushes the handle s had when it started. go-tpm forgets a
// session's handle when a response says the session ended (continueSession
// clear), before it checks that response's HMAC; after a forged response its
// own closer would flush TPM_RH_NULL and leave the session loaded, one of
// three slots on a TPM without a resource manager (found by review).
// A session the TPM no longer holds (a reset under provd) is already
// flushed, not an error (t.Flush).
func (t *TPM) sessionCloser(s tpm2.Session) func() error {
	h, gen := s.Handle(), t.counting.generation.Load()
	return func() error {
		if t.ReopenedSince(gen) {
			return nil // gone with the space the device was opened again without
		}
		return t.Flush(h)
	}
}

// WithEncryptSession runs fn with an encryption session: a salted HMAC
// session with AES-128-CFB parameter encryption in direction dir, salted
// with the SRK's public key, flushed after (a flush failure reported when
// fn succeeded); in an operation's Share, the shared session in its guard
// role (withSharedGuard). Use it as an extra session on every command that
// carries a secret in or out (unseal, import, create with sensitive data,
// duplicate): an interposer on the TPM bus then sees only ciphertext, and
// cannot forge responses without the session key that only the SRK's
// holder can compute.
//
// The session is salted, not also bound to the SRK: binding mixes the bind
// entity's authValue into the session key, and the SRK's is empty, so it
// adds no secret; and on swtpm a salted+bound session needs a second object
// slot for the SRK at StartAuthSession, which fails with
// TPM_RC_OBJECT_MEMORY while the PK and a sealed object are loaded
// (measured).
func (t *TPM) WithEncryptSession(dir Direction, fn func(s tpm2.Session) error) error {
	if ok, err := t.withSharedGuard(dir, fn); ok {
		return err
	}
	srk, err := t.SRK()
	if err != nil {
		return err
	}
	return t.withHMACSession(fn, tpm2.Salted(srk.Handle, srk.Public), dir.option())
}

// guarded runs cmd guarded by a session salted to the SRK, whose HMACs bind
// what goes in and what comes back: cmd's own authorization when enough
// (self: a salted session, and one that also encrypts where cmd carries a
// secret), otherwise an extra session salted to the SRK that encrypts the
// input (issue 14: the extra one costs two commands). index is the session
// whose refused command HMAC means the bus changed the command (guarded).
func (t *TPM) guarded(self bool, cmd func(extra ...tpm2.Session) error) (index int, err error) {
	if self {
		return 1, cmd()
	}
	return 2, t.WithEncryptSession(EncryptIn, func(enc tpm2.Session) error { return cmd(enc) })
}

// guardedLoad is guarded for a command that carries no secret in (a load:
// the private area is the parent's ciphertext already): the extra session
// is the operation's shared audit session when there is one (Share), whose
// HMACs bind the command and its answer as the encrypting one's do.
func (t *TPM) guardedLoad(self bool, cmd func(extra ...tpm2.Session) error) (index int, err error) {
	if !self {
		if ok, err := t.withSharedAudit(func(s tpm2.Session) error { return cmd(s) }); ok {
			return 2, err
		}
	}
	return t.guarded(self, cmd)
}
