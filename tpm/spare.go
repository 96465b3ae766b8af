package tpm

import (
	"time"

	"github.com/google/go-tpm/tpm2"
)

// A spare is the policy session that authorized an operation's last
// command (a seal's or key creation's TPM2_Create, a TPM2_Duplicate), kept
// in the operation's Share for the gate's proof of the operation's audit
// record (gateSession), which would otherwise start and flush a session of
// its own (issue 14: a StartAuthSession and a FlushContext fewer for every
// audited creation and duplication; on the hardware model a one-shot seal
// 60 ms). Whatever gate proof comes next in the Share takes it: the
// record's, a pending record's written first, a gated counter increment's
// (policy install), or, in a process's one Share over several operations
// (agent.Agent.Share), the next operation's, as long as it is young
// enough (review 10: as sound, each proof bound to its own command).
//
// A spare gives nothing a fresh gate session would not:
//   - It is provd's keyed session, salted to the pinned SRK, and the
//     command it authorized succeeded with an answer whose HMAC, keyed by
//     the salt, was checked. A1 may flush it and start a session of its
//     own at that number before the record (review 9): the proof names
//     the spare's nonceTPM, which the HMAC of the session authorizing it
//     covers, so the TPM refuses it there (TPM_RC_NONCE), the session is
//     spent and the record proves anew in a session of its own; and any
//     proof is bound to the one extend by cpHashA, as a fresh session's,
//     whose handle is the bus's word too.
//   - After a command it authorized the TPM resets the session's policy
//     (its digest and what the policy set: TPM 2.0 Part 1, policy
//     sessions): the gate's proof goes into a session that holds no other
//     policy, as in a fresh one. Only a session whose last command used it
//     (Uses moved) and took no policy step after it (stepHandle) is kept.
//   - In the gate's role its HMACs are keyed by the session key alone, as
//     a fresh salted session's (the anchor's authValue is empty): the
//     authValue the operation's objects keyed it with is cleared.
//   - A proof with a nonce expires counting from the session's start
//     (Part 3, PolicySecret; libtpms restarts that time at each command
//     that rolls the session's nonce, here the creation), not the
//     proof's: a spare started more than half a proof's lifetime ago is
//     not taken, as PrepareGatedExtendAgain does, and spend waits, where
//     it must, until the proof has surely expired (proofUntil is counted
//     from the proof, later than the TPM's expiry).
//   - It holds a slot only while no other session needs it (Send drops it
//     before a StartAuthSession that would leave no slot to spare, or once
//     the TPM's generation moved), and it goes with the Share: flushed, or,
//     once the generation moved, flushed only if it answers for itself
//     (dropSpare), otherwise forgotten and the sweep asked for.

// Spare ends the caller's use of p, after the one command p authorized
// once the caller's policy went in, when p.Uses() was usesBefore: in an
// operation's Share, p is kept for the operation's next gate proof
// (gateSession) if that command was made (Uses moved: the TPM reset the
// policy), no policy step was sent after it (found by review 10: a step
// there stays in the digest, and the record's extend is refused), and p is provd's keyed session salted to the pinned SRK, started
// with a cipher (it can guard the probe of dropSpare), in this generation,
// holding no gate proof, and younger than half a proof's lifetime;
// otherwise, and when there is no Share, Spare is Close. A spare already
// kept is given up first.
func (p *PolicySession) Spare(usesBefore int) error {
	t := p.t
	sh := t.share
	if sh == nil || p.keyed == nil || !p.keyed.guard || !p.salted || p.Uses() <= usesBefore || p.Uses() <= p.stepUses ||
		!p.proofUntil.IsZero() || !t.saltToPin() || !p.canProve() {
		return p.Close()
	}
	err := t.dropSpare()
	sh.spare = p
	return err
}

// takeSpare is the operation's spare as a gate session (asGate), or nil
// when there is none that can still prove a gate: there is no Share, the
// generation moved (the spare is then given up), or it is too old.
func (t *TPM) takeSpare() *PolicySession {
	sh := t.share
	if sh == nil || sh.spare == nil {
		return nil
	}
	p := sh.spare
	if !p.canProve() {
		_ = t.dropSpare()
		return nil
	}
	sh.spare = nil
	p.asGate()
	return p
}

// asGate turns p, a spare, into a gate session: its authorization role
// keyed by the session key alone, encrypting nothing, the objects'
// authValue cleared.
func (p *PolicySession) asGate() {
	k := p.keyed
	clear(p.auth)
	p.auth, k.auth, k.dir = nil, nil, 0
	p.s = policyAuth{k}
	p.start = k.handle
}

// dropSpare gives the operation's spare up, if one is kept: flushed. Once
// the TPM's generation moved on a TPM provd has to itself, its number may
// be another session's by now, and a flush by number would take that one:
// it is flushed only once it answers for itself, as the shared session is
// (dropShared: a TPM2_Hash it guards, whose answer's HMAC is keyed by its
// salt), otherwise forgotten and the sweep asked for (a Startup answered
// success on the bus, the TPM never reset, leaves it loaded: found by make
// test, a fourth session behind a resource manager's three).
func (t *TPM) dropSpare() error {
	sh := t.share
	if sh == nil || sh.spare == nil {
		return nil
	}
	p := sh.spare
	sh.spare = nil
	if t.ReopenedSince(p.gen) {
		p.forget() // gone with the old space (dropSharedOf)
		return nil
	}
	if now := t.Generation(); t.ForgetsStale(p.gen) {
		probe := tpm2.Hash{Data: tpm2.TPM2BMaxBuffer{Buffer: []byte{0}}, HashAlg: tpm2.TPMAlgSHA256, Hierarchy: tpm2.TPMRHNull}
		if _, err := probe.Execute(t, policyGuard{p.keyed}); err == nil && t.Generation() == now {
			return p.Close()
		}
		p.forget()
		t.unheld()
		return nil
	}
	return p.Close()
}

// spareHandle is the handle of the operation's spare, 0 when none is kept.
func (t *TPM) spareHandle() tpm2.TPMHandle {
	if sh := t.share; sh != nil && sh.spare != nil {
		return sh.spare.s.Handle()
	}
	return 0
}

// canProve reports whether a gate's proof may still go into p: it is not
// closed, the TPM's generation is the one it started in, and it started
// less than half a proof's lifetime ago (a proof with a nonce expires
// counting from the session's start).
func (p *PolicySession) canProve() bool {
	return !p.closed && p.gen == p.t.Generation() && time.Since(p.started) <= gateProofLifetime/2
}
