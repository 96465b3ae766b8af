package tpm

import (
	"encoding/binary"
	"errors"

	"github.com/google/go-tpm/tpm2"
)

// shared is the one audit session, salted to the pinned SRK, that the
// authenticated reads and guarded loads of an operation share (Share),
// where each started and flushed its own (issue 14): a one-shot seal reads
// the audit anchor, loads the PK and reads the PCRs it seals to, three
// sessions (six commands: StartAuthSession and FlushContext each) where
// one does.
//
// Sharing gives the bus nothing a session of each's own would not: every
// command's HMAC is keyed by the salt, which only provd and the TPM know,
// and covers that command's parameters and a nonce of each side that moves
// with every command, so an answer can be neither forged nor replayed from
// an earlier command. A command that fails in it, for any reason (the
// TPM's error, an answer lost or changed on the bus, which may put the
// nonces out of step), flushes it: the next read starts a new one.
type shared struct {
	s     tpm2.Session // nil until the first read, and after a failure
	close func() error
	gen   uint64 // the TPM's generation it started in
	inUse bool   // a read runs in it (its session is in the command)
	off   bool   // Unshare: the reads go in sessions of their own again
}

// Share runs fn with one audit session for the authenticated reads and
// guarded loads it makes (PCRReadAuthenticated, WithAuthenticatedNV, Load
// without an authenticated parent session): started by the first that
// needs it, flushed when fn returns. The caller serializes its use of t
// (the agent's lock), as for every session it holds. A Share inside
// another is the outer one's.
//
// The session holds one of the TPM's session slots until fn returns. A
// session started meanwhile that the TPM refuses for want of a slot
// (TPM_RC_SESSION_MEMORY) has the shared one flushed and is sent again
// (Send), so fn never needs a slot the operation had before sharing.
func (t *TPM) Share(fn func() error) (err error) {
	if t.share != nil {
		return fn()
	}
	t.share = &shared{}
	defer func() {
		if ferr := t.dropShared(); ferr != nil && err == nil {
			err = ferr
		}
		t.share = nil
	}()
	return fn()
}

// withSharedAudit runs fn with the operation's shared audit session (Share),
// starting it if there is none. ok false: there is no Share, or the shared
// session is in the command already (a read inside a read), or no SRK is
// pinned to salt it to; nothing was sent, and the caller uses a session of
// its own. A failure of fn flushes the session.
func (t *TPM) withSharedAudit(fn func(s tpm2.Session) error) (ok bool, err error) {
	sh := t.share
	if sh == nil || sh.inUse || sh.off {
		return false, nil
	}
	salt, err := t.pinnedSalt()
	if err != nil || salt == nil {
		return err != nil, err
	}
	if sh.s != nil && sh.gen != t.Generation() {
		// The connection was lost or the TPM started up since: the
		// session is gone, or the handle is another client's. Flushed
		// either way (not there counts as flushed), never used again.
		if err := t.dropShared(); err != nil {
			return true, err
		}
	}
	if sh.s == nil {
		gen := t.Generation()
		s, closer, err := t.startHMACSession(append(salt, tpm2.Audit())...)
		if err != nil {
			return true, err
		}
		sh.s, sh.close, sh.gen = s, closer, gen
	}
	sh.inUse = true
	err = fn(sh.s)
	sh.inUse = false
	if err != nil {
		return true, errors.Join(err, t.dropShared())
	}
	return true, nil
}

// Unshare flushes the shared session and shares none for the rest of the
// operation's Share: for a step that needs every session slot the TPM has
// (a duplicate's import holds three), where sharing would cost a refused
// StartAuthSession and its sweep (Send).
func (t *TPM) Unshare() error {
	if t.share == nil {
		return nil
	}
	t.share.off = true
	return t.dropShared()
}

// dropShared flushes the shared session, if one is started.
func (t *TPM) dropShared() error {
	sh := t.share
	if sh == nil || sh.s == nil {
		return nil
	}
	closer := sh.close
	sh.s, sh.close = nil, nil
	return closer()
}

// sharedSlot reports whether an answer rsp to cmd is a StartAuthSession the
// TPM refused for want of a session slot while the shared session holds
// one it could give up: not in a command (its handle may be in the one
// this session starts for).
func (t *TPM) sharedSlot(cmd, rsp []byte) bool {
	sh := t.share
	if sh == nil || sh.s == nil || sh.inUse || len(cmd) < headerSize || len(rsp) < headerSize {
		return false
	}
	return tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) == tpm2.TPMCCStartAuthSession &&
		tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10])) == tpm2.TPMRCSessionMemory
}

// Send sends cmd to the TPM (counting.Send). A StartAuthSession refused for
// want of a slot that the operation's shared session holds (Share) is sent
// again once that session is flushed: sharing never costs an operation a
// slot it had. The refused command made nothing; a refusal forged on the
// bus costs the shared session and one command, as any dropped answer
// would.
func (t *TPM) Send(cmd []byte) ([]byte, error) {
	rsp, err := t.counting.Send(cmd)
	if err != nil || !t.sharedSlot(cmd, rsp) {
		return rsp, err
	}
	if err := t.dropShared(); err != nil {
		return nil, err
	}
	return t.counting.Send(cmd)
}
