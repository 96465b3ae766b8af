package agent

import (
	"bytes"
	"context"
	"errors"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/policy"
	"github.com/provd/provd/tpm"
)

// opSession is the one policy session a key use (Sign, HMAC, ECDH, Decrypt,
// EncryptData, DecryptData) authorizes all its commands with, where each
// used to start and flush its own (issue 14): loading the key under the PK,
// deriving it, and the use itself; before those, as the extra session that
// guards it, the PK's load under the SRK (loadPK). It is salted to the
// pinned SRK and keyed by the objects' authValue (PolicyAuthValue), so its
// HMACs are secret to anyone on the bus and its answers are the TPM's own:
// that spares TPM2_Load its separate salted session (tpm.TPM.Load). It does not
// encrypt: the uses that carry secrets (HMAC, ECDH, decryption, a
// derivation's sensitive area) add their own encryption session, and a
// command takes one decrypting session only.
//
// Reuse gives the TPM nothing it would not give a fresh session: the TPM
// resets a policy session's digest after each command it authorizes, so
// every command satisfies its policy afresh, as with a new session. A
// session that saw any failure (a policy step, the command, a forged answer)
// is flushed, never reused: its digest or nonces may be out of step.
//
// A one-shot process flushes it when the operation ends. The daemon keeps
// it between key uses (Config.KeepSession): a warm sign is then PolicyPCR,
// PolicyAuthValue and Sign, three commands where five were. Every other
// operation flushes it first (lock), so it never holds a session slot that
// operation needs; a TPM reset under it drops it (its handle is gone).
type opSession struct {
	ps   *tpm.PolicySession
	auth []byte // the authValue it is keyed with
	gen  uint64 // the TPM's generation (tpm.TPM.Generation) it started in
	// applied: a policy was applied in it (withOpPolicy). Until then it
	// is fresh: it may guard the PK's load (loadPK), and a failure of its
	// first policy is final, as a new session's is.
	applied bool
}

// opPolicy returns the operation's session for objects whose authValue is
// auth, starting it when there is none; fresh when no policy was applied
// in it yet; nil (and no error) when the operation is not a key use, or its
// session is keyed with another authValue (an extractable key's own): the
// caller then starts its own.
func (a *Agent) opPolicy(auth []byte) (ps *tpm.PolicySession, fresh bool, err error) {
	if !a.hot || auth == nil {
		return nil, false, nil
	}
	if a.op != nil && a.op.gen != a.t.Generation() {
		// A new connection, or a TPM reset: the session is gone, or (a
		// migrated TPM keeps its sessions) another connection's leftover;
		// flushed either way (t.Flush takes "not there" as flushed) and
		// never used again.
		if err := a.dropOp(); err != nil {
			a.log.Debug("flush of the policy session after a TPM reset failed", "err", err)
		}
	}
	if a.op != nil {
		if bytes.Equal(a.op.auth, auth) {
			return a.op.ps, !a.op.applied, nil
		}
		return nil, false, nil
	}
	gen := a.t.Generation()
	ps, err = a.t.StartGuardingPolicySession(auth)
	if err != nil {
		return nil, false, err
	}
	a.op = &opSession{ps: ps, auth: bytes.Clone(auth), gen: gen}
	return ps, true, nil
}

// withOpPolicy runs fn in the operation's session, satisfying expr first;
// ok false says there is none for auth (opPolicy) and nothing was done. Any
// failure flushes the session. A session a policy was applied in before
// (kept from an earlier operation, or used earlier in this one) that fails
// while its policy is satisfied, before fn's command is sent, is tried
// once more afresh: it may have died with a TPM reset or resume the channel
// did not see (found by review: the first use after a resume failed), and
// policy commands run again change nothing. A failure of fn's command is
// not retried here (the one retry after a command is useKey's, for a stale
// cached handle, at most once: docs/threat-model.md): an error answer has
// no HMAC, so whoever sits on the bus can pass the command on and answer a
// failure, and a retry would have the TPM run it twice
// (found by review: two signatures, two loads, for one request).
func (a *Agent) withOpPolicy(rec policyRecord, expr policy.Policy, opts policy.ApplyOptions, auth []byte, fn func(s tpm2.Session) error) (ok bool, err error) {
	gen := a.t.Generation() // the caller's handles (the key's) are of this generation
	for {
		ps, fresh, err := a.opPolicy(auth)
		if err != nil || ps == nil {
			return err != nil, err
		}
		a.op.applied = true
		retries := a.t.Stats().Retries
		if err := a.apply(ps, rec, expr, opts); err != nil {
			err = errors.Join(err, a.dropOp())
			if fresh || a.t.ReopenedSince(gen) {
				// Not afresh with the handles of a space the device was
				// opened again without: the key's names nothing in the
				// new one (found by review 14: a device opened again
				// under a sign, the sign went to the old space's key
				// handle). After a TPM reset the retry stands: the
				// key's stale handle is refused, and useKey loads it
				// again.
				return true, err
			}
			continue
		}
		if err := a.policyUse(retries, fn(ps.Session())); err != nil {
			return true, errors.Join(err, a.dropOp())
		}
		return true, nil
	}
}

// loadPK loads the PK's blob under the SRK, guarded by guard when there is
// one (withPKGuarded's session, which the caller flushes). In a key use
// whose session is fresh (opPolicy), that session guards the load
// (tpm.TPM.LoadGuarded: its HMACs bind the blob and the name answered, as
// a session of the load's own would) before it authorizes the loads and
// uses under the PK: 2 commands fewer than the load's own session (issue
// 14). Otherwise, and in a session kept from an earlier operation (it may
// have died with a TPM reset the channel did not see), the load has a
// session of its own (tpm.TPM.Load). A failed guarded load flushes the
// key use's session.
func (a *Agent) loadPK(srk tpm.Object, blob tpm.Blob, auth []byte, guard *tpm.PolicySession) (tpm.Object, error) {
	if guard != nil {
		return a.t.LoadGuarded(srk, blob, guard.Guard())
	}
	ps, fresh, err := a.opPolicy(auth)
	if err != nil {
		return tpm.Object{}, err
	}
	if ps == nil || !fresh {
		return a.t.Load(srk, nil, blob)
	}
	pk, err := a.t.LoadGuarded(srk, blob, ps.Guard())
	if err != nil {
		return pk, errors.Join(err, a.dropOp())
	}
	return pk, nil
}

// withPKGuarded is withPK for an operation that is no key use but runs in
// one policy session of its own (an unseal): start makes the session,
// keyed by the PK's objects' authValue, before the PK's load, which it
// guards when the PK is loaded from its blob (loadPK; issue 14: 2
// commands); fn runs with the PK and the session, which is flushed after,
// the first error winning.
func (a *Agent) withPKGuarded(ctx context.Context, start func(auth []byte) (*tpm.PolicySession, error), fn func(l *loadedPK, ps *tpm.PolicySession) error) (err error) {
	in, err := a.pkInputs(ctx)
	if err != nil {
		return err
	}
	ps, err := start(in.auth)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := ps.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	return a.withLoadedPKGuard(in, ps, func(l *loadedPK) error { return fn(l, ps) })
}

// dropOp flushes the operation's session, if any.
func (a *Agent) dropOp() error {
	if a.op == nil {
		return nil
	}
	ps := a.op.ps
	clear(a.op.auth)
	a.op = nil
	return ps.Close() // clears the session's own copy
}

// opHandle is the operation session's handle, for the leak sweep; 0 when
// there is none.
func (a *Agent) opHandle() tpm2.TPMHandle {
	if a.op == nil {
		return 0
	}
	return a.op.ps.Handle()
}
