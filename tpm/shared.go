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
//
// The session is provd's keyed HMAC session (keyedhmac.go): besides
// auditing, it authorizes an entity whose authValue provd holds, the AK's
// quote or a gate's proof (withSharedAuth), keyed by that value in that
// command only, and encrypts the secret a command carries in or out
// (withSharedGuard, WithEncryptSession: a creation's sensitive area, an
// unseal's answer), keyed by the salt alone.
type shared struct {
	s     tpm2.Session // its audit role; nil until the first read, and after a failure
	k     *keyedPolicy
	close func() error
	gen   uint64 // the TPM's generation it started in
	inUse bool   // a read runs in it (its session is in the command)
	// keep: the next StartAuthSession leaves it started (keepShared).
	keep bool
	// spare is the policy session of the operation's last command, kept
	// for its record's gate proof (spare.go); nil when none is.
	spare *PolicySession
	// adopted: the session was kept from an earlier Share (KeepShared) and
	// this Share has not used it yet (useShared).
	adopted bool
	// proven: the session answered for itself (a command in it succeeded,
	// its answer's HMAC checked) since it was started or last kept; until
	// then its number may be another session's (dropSharedOf).
	proven bool
	// start numbers its StartAuthSession (counting.startOf).
	start uint64
}

// Share runs fn with one audit session for the authenticated reads and
// guarded loads it makes (PCRReadAuthenticated, WithAuthenticatedNV, Load
// without an authenticated parent session): started by the first that
// needs it, flushed when fn returns. The caller serializes its use of t
// (the agent's lock), as for every session it holds. A Share inside
// another is the outer one's.
//
// The session holds one of the TPM's session slots only while no other
// session needs it: a StartAuthSession that would leave the connection
// holding maxSessions (no slot to spare; counting.roomForSession) has it
// flushed first (Send, liveSessions), and the next read starts a new
// one. So an operation never holds more sessions at once than the TPM's
// slots (3 on swtpm) and the kernel resource manager's (3 per connection
// on /dev/tpmrm0, where a fourth fails the device's write and flushes the
// connection's every session) allow, and an operation that starts one
// session of its own at a time keeps the shared one for its record (a
// one-use session fewer: issue 14).
//
// With KeepShared (the daemon) the session is not flushed at the end but
// kept for the next Share (KeepShared says what holds).
func (t *TPM) Share(fn func() error) error {
	if t.share != nil {
		return fn()
	}
	t.share = &shared{}
	if k := t.kept; k != nil {
		t.kept, t.share = nil, k
		k.adopted = k.s != nil
	}
	defer func() {
		// fn's work is done, and may be committed: a flush of the shared
		// session that fails is not fn's failure (found by review: a
		// forged error there recorded a deleted key's delete as failed).
		// A failed FlushContext has asked for the sweep (counting).
		_ = t.dropSpare()
		if sh := t.share; t.keepShare && sh.s != nil && t.saltToPin() && sh.gen == t.Generation() {
			sh.keep, sh.inUse, sh.adopted, sh.proven = false, false, false, false
			t.kept = sh
		} else {
			_ = t.dropShared()
		}
		t.share = nil
	}()
	return fn()
}

// KeepShared(true) has every Share after it keep its session for the next
// Share instead of flushing it (issue 14: a StartAuthSession and a FlushContext
// fewer for every audited request of the daemon, which runs them one at a
// time under its lock): for a process whose TPM connection serves one
// operation at a time, for its life. Keeping gives nothing a session per
// Share would not:
//   - Between Shares the session is used by nothing: only a Share adopts
//     it. Its HMACs stay keyed by the salt only provd and the TPM know,
//     and its nonces move with every command, so an answer from one
//     request cannot be replayed in another.
//   - It holds a session slot only while no other session needs it: a
//     StartAuthSession that would leave no slot to spare flushes it first,
//     inside a Share or between Shares (Send).
//   - A moved generation (a lost connection, a reset provd started the TPM
//     from) ends it at the next Share's first use, flushed only if it
//     answers for itself (dropShared); a flush of its handle by anyone
//     ends it (Send); the leak sweep holds it (SharedHandle).
//   - A TPM may lose it unseen (a suspend and resume behind /dev/tpm0,
//     after which loaded sessions are gone and no TPM_RC_INITIALIZE
//     comes), and hand its number, or its slot, to another session of
//     provd's. Its first use in the next Share is a read that is made
//     again in a new session when the TPM refuses it as not this session
//     (TPM_RC_REFERENCE_S*, HANDLE, BAD_AUTH), or a probe whose answer
//     must show it is provd's (useShared); and until it has answered it is
//     never flushed by a number another session of provd's holds
//     (dropSharedOf).
//
// DropKept ends it (zeroize), and KeepShared(false) ends it and stops
// keeping (the agent's Close).
func (t *TPM) KeepShared(on bool) error {
	t.keepShare = on
	if on {
		return nil
	}
	return t.DropKept()
}

// DropKept flushes the session kept between Shares (KeepShared), if there
// is one: the next Share starts a new one.
func (t *TPM) DropKept() error {
	k := t.kept
	if k == nil {
		return nil
	}
	t.kept = nil
	return t.dropSharedOf(k)
}

// SharedHandle is the handle of the shared session, the Share's or the one
// kept between Shares, for the leak sweep; 0 when there is none.
func (t *TPM) SharedHandle() tpm2.TPMHandle {
	for _, sh := range []*shared{t.share, t.kept} {
		if sh != nil && sh.s != nil {
			return sh.k.handle
		}
	}
	return 0
}

// withSharedAudit runs fn with the operation's shared audit session (Share),
// starting it if there is none. ok false: there is no Share, or the shared
// session is in the command already (a read inside a read), or no SRK is
// pinned to salt it to; nothing was sent, and the caller uses a session of
// its own. A failure of fn flushes the session.
func (t *TPM) withSharedAudit(fn func(s tpm2.Session) error) (ok bool, err error) {
	return t.withShared(auditRole, fn, false)
}

// withSharedRead is withSharedAudit for a read (a PCR read, an NV read)
// whose command carries no other session and changes nothing in the TPM:
// made again as it is where a session kept from an earlier Share turns out
// lost (useShared).
func (t *TPM) withSharedRead(fn func(s tpm2.Session) error) (ok bool, err error) {
	return t.withShared(auditRole, fn, true)
}

// auditRole is the shared session's audit role (hmacAudit).
func auditRole(k *keyedPolicy) tpm2.Session { return hmacAudit{k} }

// withSharedGuard runs fn with the operation's shared session as an extra
// session that encrypts in direction dir (hmacGuard), starting it if there
// is none: WithEncryptSession's session, where each started and flushed
// its own (issue 14: a StartAuthSession and a FlushContext fewer for every
// secret that crosses the bus in an audited operation). ok false as for
// withSharedAudit.
func (t *TPM) withSharedGuard(dir Direction, fn func(s tpm2.Session) error) (ok bool, err error) {
	return t.withShared(func(k *keyedPolicy) tpm2.Session { return hmacGuard{k: k, dir: dir} }, fn, false)
}

// withShared runs fn with the shared session in the role role gives it,
// starting the session if there is none (withSharedAudit); read: fn is a
// read (withSharedRead).
func (t *TPM) withShared(role func(k *keyedPolicy) tpm2.Session, fn func(s tpm2.Session) error, read bool) (ok bool, err error) {
	sh := t.share
	if sh == nil || sh.inUse {
		return false, nil
	}
	if !t.saltToPin() {
		return false, nil
	}
	if sh.s != nil && sh.gen != t.Generation() {
		_ = t.dropShared() // flushed only if it answers for itself
	}
	if sh.s == nil {
		if err := t.startShared(); err != nil {
			return true, err
		}
	}
	return true, t.useShared(role, fn, read)
}

// startShared starts the Share's session, salted to the pinned SRK.
func (t *TPM) startShared() error {
	sh := t.share
	srk, err := t.SRK()
	if err != nil {
		return err
	}
	gen := t.Generation()
	k, err := t.startKeyedHMAC(srk)
	if err != nil {
		return err
	}
	sh.s, sh.k, sh.close, sh.gen, sh.adopted, sh.proven = hmacAudit{k}, k, t.keyedCloser(k), gen, false, true
	sh.start = t.counting.startOf(k.handle)
	return nil
}

// useShared runs fn with the shared session in the role role gives it
// (inShared). A session kept from an earlier Share (KeepShared) may be
// gone unseen (a suspend and resume behind /dev/tpm0: loaded sessions are
// lost and no TPM_RC_INITIALIZE comes), its number perhaps handed to
// another session of provd's since (swtpm numbers HMAC and policy sessions
// from one set of slots), or swapped for A1's own at its number. Its first
// use in this Share is then
//   - for a read (read: a command with no other session, changing nothing
//     in the TPM), made once more in a new session when the TPM refuses it
//     as not this session's (lostSession); if A1 forged that refusal after
//     the TPM ran it, the read ran twice, which changes nothing;
//   - for anything else (a command beside another session, whose policy a
//     run spends, or that makes an object), made only after a TPM2_GetRandom
//     in the session, whose answer's HMAC is keyed by its salt, showed it
//     is still provd's; otherwise it is made in a new session, once (found
//     by review 11: made again after a refusal A1 forged once the TPM had
//     run it, an import met its spent policy session, exit 3, and a load
//     the object the first run left, TPM_RC_OBJECT_MEMORY).
//
// Either way a session that failed there is given up, flushed by its
// number only if no other session of provd's holds its slot (dropSharedOf;
// found by review 12: the number was provd's own policy session's by
// then). The probe costs a command where a new session costs two.
func (t *TPM) useShared(role func(k *keyedPolicy) tpm2.Session, fn func(s tpm2.Session) error, read bool) error {
	sh := t.share
	adopted := sh.adopted
	sh.adopted = false
	if !adopted {
		return t.inShared(role(sh.k), fn)
	}
	var err error
	if read {
		err = t.inShared(role(sh.k), fn)
	} else {
		err = t.inShared(sh.s, func(s tpm2.Session) error {
			_, err := (tpm2.GetRandom{BytesRequested: 1}).Execute(t, s)
			return err
		})
	}
	switch {
	case err == nil && read:
		return nil
	case err == nil:
		return t.inShared(role(sh.k), fn)
	case read && !lostSession(err):
		return err
	}
	// Given up (inShared): in a new one.
	if serr := t.startShared(); serr != nil {
		return errors.Join(err, serr)
	}
	return t.inShared(role(sh.k), fn)
}

// lostSession reports whether err is the TPM's refusal of a command for a
// session that is not the one named: not loaded (TPM_RC_REFERENCE_S*),
// another kind of session at that number (TPM_RC_HANDLE), or another
// session whose key the command's HMAC does not match (TPM_RC_BAD_AUTH).
func lostSession(err error) bool {
	for _, rc := range []tpm2.TPMRC{tpm2.TPMRCReferenceS0, tpm2.TPMRCReferenceS1, tpm2.TPMRCReferenceS2,
		tpm2.TPMRCReferenceS3, tpm2.TPMRCReferenceS4, tpm2.TPMRCReferenceS5, tpm2.TPMRCReferenceS6,
		tpm2.TPMRCHandle, tpm2.TPMRCBadAuth} {
		if errors.Is(err, rc) {
			return true
		}
	}
	return false
}

// withSharedAuth runs fn with the operation's shared session authorizing
// entity, whose authValue is auth, and encrypting in direction dir (0:
// none) keyed by it (hmacAuth, authorizeChecked): fn puts it on that
// entity's handle only. ok false: there is no shared session
// started in this generation of the TPM, or it is in the command already;
// nothing was sent, and the caller authorizes in a session of its own
// (starting the shared one for this alone would cost its flush as well). A
// failure of fn flushes the session.
func (t *TPM) withSharedAuth(entity Object, auth []byte, dir Direction, fn func(s tpm2.Session) error) (ok bool, err error) {
	sh := t.share
	if sh == nil || sh.s == nil || sh.inUse || sh.gen != t.Generation() {
		return false, nil
	}
	return true, t.useShared(auditRole, func(tpm2.Session) error { return t.authorizeChecked(sh.k, entity, auth, dir, fn) }, false)
}

// inShared runs fn with s, a role of the shared session, marking the
// session in use. A success proves the session (its answer's HMAC, keyed
// by its salt, was checked); a failure flushes it (its nonces may be out
// of step).
func (t *TPM) inShared(s tpm2.Session, fn func(s tpm2.Session) error) error {
	sh := t.share
	sh.inUse = true
	err := func() error {
		defer func() { sh.inUse = false }()
		return fn(s)
	}()
	if err != nil {
		return errors.Join(err, t.dropShared())
	}
	sh.proven = true
	return nil
}

// keepShared has the next StartAuthSession leave the shared session
// started, when one is (in this generation), for a command after it that
// the shared session authorizes (a gate's proof: gateSession starts the
// policy session, then proves the gate in the shared one). The caller
// calls the returned func once that start is sent. Slots: the shared
// session then stands where the one-use session it saves stood, beside
// the policy session, so no more sessions are held at once than before.
func (t *TPM) keepShared() (done func()) {
	sh := t.share
	if sh == nil || sh.s == nil || sh.inUse || sh.gen != t.Generation() {
		return func() {}
	}
	sh.keep = true
	return func() { sh.keep = false }
}

// dropShared gives the shared session up, if one is started: flushed. When
// the TPM's generation moved since it started (the connection was lost,
// the TPM started up or was migrated), its number may be another
// session's by now, and a flush by number would take that one (found by
// review: the operation's own policy session, in the same slot): it is
// flushed only once it answers for itself, otherwise forgotten, and the
// sweep flushes it if it is still there.
func (t *TPM) dropShared() error { return t.dropSharedOf(t.share) }

// forget clears sh of its session, which it returns: the caller flushes
// it, or ends it where its number may be another's.
func (sh *shared) forget() *keyedPolicy {
	k := sh.k
	sh.s, sh.k, sh.close, sh.keep, sh.proven = nil, nil, nil, false, false
	return k
}

// dropSharedOf is dropShared for sh, the Share's session or the one kept
// between Shares.
func (t *TPM) dropSharedOf(sh *shared) error {
	if sh == nil || sh.s == nil {
		return nil
	}
	s, closer, gen, proven, start := sh.s, sh.close, sh.gen, sh.proven, sh.start
	k := sh.forget()
	// A session kept between Shares that has not answered since may have
	// ended unseen (a suspend and resume behind /dev/tpm0), and its slot be
	// another session's of provd's by now: a flush by its number would
	// take that one (found by review 12: provd's own policy session). Then
	// it is gone (a slot holds one session), and only forgotten; the sweep
	// is asked for all the same, as the other session's handle was the
	// bus's word.
	if !proven && t.Exclusive() && t.counting.slotTaken(k.handle, start) {
		k.end()
		t.unheld()
		return nil
	}
	if t.ReopenedSince(gen) {
		// Gone with the space the device was opened again without; its
		// number, not virtualized by the manager, may be another
		// connection's session, never to be used (found by review 14:
		// probed by its number).
		k.end()
		return nil
	}
	if now := t.Generation(); gen != now {
		// Flushed only if an answer of the session, whose HMAC is keyed
		// by its salt, shows that the session at its number is still
		// this one, and the generation stays (a migrated TPM, or a lost
		// connection, keeps it: found by review, forgotten it held a
		// slot the operation needed).
		if _, err := (tpm2.GetRandom{BytesRequested: 1}).Execute(t, s); err == nil && t.Generation() == now {
			return closer()
		}
		k.end()
		t.unheld()
		return nil
	}
	return closer()
}

// Send sends cmd to the TPM (counting.Send). A StartAuthSession while the
// shared session is started (its own comes before) has it flushed first,
// while no command is using it (Share), unless a slot stays spare beside
// it (counting.roomForSession): sharing never holds a slot another session
// needs. A flush that fails marks the sweep (counting), and the
// session is never used again either way. A read in progress starts no
// session: its session is the shared one.
//
// A FlushContext of the shared session's handle that someone else sends
// (zeroize flushes every session it lists) ends it here too, once the TPM
// says it is gone: the next read starts a new one (found by make test: a
// provision --force flushed it, and its next read named a session no
// longer loaded), and the sweep is asked for, in case the answer was A1's.
func (t *TPM) Send(cmd []byte) ([]byte, error) {
	var cc tpm2.TPMCC
	if len(cmd) >= headerSize {
		cc = tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
	}
	if cc == tpm2.TPMCCStartAuthSession {
		// The spare goes first: the shared session may authorize the
		// gate's proof that a session started now is for. A spare of
		// another generation goes too: no proof can take it
		// (takeSpare), and the sessions count, emptied by the Startup
		// that moved the generation, no longer holds it (dropSpare
		// flushes it if it answers for itself).
		if sh := t.share; sh != nil && sh.spare != nil && (sh.spare.gen != t.Generation() || !t.counting.roomForSession()) {
			_ = t.dropSpare()
		}
		if sh := t.share; sh != nil && sh.s != nil && !sh.inUse && !sh.keep && !t.counting.roomForSession() {
			_ = t.dropShared()
		}
		// Between Shares, the session kept for the next (KeepShared)
		// gives its slot up alike.
		if k := t.kept; k != nil && !t.counting.roomForSession() {
			t.kept = nil
			_ = t.dropSharedOf(k)
		}
	}
	rsp, err := t.counting.Send(cmd)
	if err == nil && srkGone(cc, cmd, rsp) {
		switch again, aerr := t.srkAgain(cmd); {
		case aerr != nil:
			rsp, err = nil, aerr
		case again != nil:
			rsp, err = t.counting.Send(again)
		}
	}
	if cc == tpm2.TPMCCFlushContext && err == nil && len(cmd) >= headerSize+4 && len(rsp) >= headerSize {
		sh := t.share
		h := tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[headerSize:]))
		rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
		gone := rc == tpm2.TPMRCSuccess || errors.Is(rc, tpm2.TPMRCHandle)
		if sh != nil && sh.spare != nil && h == t.spareHandle() && gone {
			// Flushed by someone else (zeroize's flush of every session):
			// the spare is forgotten, and the sweep asked for, as for the
			// shared session below.
			p := sh.spare
			sh.spare = nil
			p.forget()
			t.counting.unheld()
		}
		for _, sh := range []*shared{sh, t.kept} {
			if sh != nil && sh.s != nil && sh.k.handle == h && gone {
				sh.forget().end()
				// The flush's answer has no HMAC: if A1 answered it, the
				// session is still loaded and now held by nobody (found by
				// review). The owner's sweep flushes it.
				t.counting.unheld()
			}
		}
		if k := t.kept; k != nil && k.s == nil {
			t.kept = nil
		}
	}
	return rsp, err
}
