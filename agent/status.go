package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"os"

	"github.com/google/go-tpm/tpm2"
	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// api.Status reports the provisioning state, the PCR state against the policy,
// the number of keys and the audit chain's length and head.
func (a *Agent) Status(ctx context.Context) (api.Status, error) {
	defer a.lock()()
	var s api.Status
	var st pkState
	err := a.st.View(ctx, func(tx *store.Tx) error {
		var err error
		st, err = a.readPK(tx)
		if errors.Is(err, api.ErrNotProvisioned) {
			return nil
		}
		if err != nil {
			return err
		}
		s.Provisioned = true
		if err := st.Policy.check(); err != nil {
			return err
		}
		var id identityRecord
		if err := tx.Get(recIdentity, &id); err == nil {
			s.TPMTrust = id.Trust
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		for _, name := range tx.Objects() {
			if len(name) > len(keyPrefix) && name[:len(keyPrefix)] == keyPrefix {
				s.Keys++
			}
		}
		if s.Attestation, err = lastVerdict(tx); err != nil {
			return err
		}
		if raw, err := tx.ReadBlob(blobPK); err == nil {
			if b, err := tpm.UnmarshalBlob(raw); err == nil {
				s.PKPublic = tpm2.Marshal(b.Public)
			}
		}
		return nil
	})
	if err != nil {
		return s, err
	}
	if s.Provisioned {
		s.PKName, s.DName, s.PolicyKind, s.PolicyDigest = st.Name, st.DName, st.Policy.Kind, st.Policy.Digest
		s.Movable = st.movableDesc()
		if k, err := st.officerKey(); err == nil {
			s.Officer = officerName(k)
		}
		if st.DName != "" && st.Officer == "" {
			s.Warnings = append(s.Warnings, "this PK's derivation parent predates the crypto officer's approvals: "+
				"whoever satisfies the PK's policy can derive its keys' secrets in another form and read them; "+
				"provision --force --officer-key PUB replaces it (a new PK)")
		}
	}
	// Checking the policy loads the PK, which an unpinned state refuses.
	if s.Provisioned && s.TPMTrust != "" {
		ps, err := a.showPolicy(ctx)
		if err != nil {
			return s, err
		}
		s.Policy = &ps
	}
	rep, err := audit.Verify(a.auditPath(), a.trailAnchor())
	if err == nil {
		err = a.pendingError()
	}
	s.AuditLines = rep.Lines
	s.AuditHead = hex.EncodeToString(rep.Head)
	if err != nil {
		s.AuditError = err.Error()
	}
	perm, err := a.t.PermanentStateAsIs() // never creates the SRK (zeroize --srk evicted it)
	if err != nil {
		return s, err
	}
	if !perm.OwnerAuthSet {
		s.Warnings = append(s.Warnings, "the TPM's owner hierarchy has no authorization: any local process with TPM access "+
			"can undefine and redefine NV indices in the owner range and evict persistent objects. provd's indices take writes "+
			"only from provd, but removing them stays possible: a removed or replaced audit anchor stops audited operations "+
			"until provd audit reanchor, a re-created policy counter revokes signed policies early. Set an owner password "+
			"after provisioning (tpm2_changeauth -c owner)")
	}
	// Found by review: with an empty lockout authorization any local
	// process can send TPM2_Clear, which beats the owner password: a new
	// owner seed, the SRK, the PK and every key gone for good.
	if !perm.LockoutAuthSet && !perm.DisableClear {
		s.Warnings = append(s.Warnings, "the TPM's lockout hierarchy has no authorization and TPM2_Clear is not disabled: "+
			"any local process can clear the TPM (a new owner seed: the SRK, the PK and every key and sealed secret are lost "+
			"for good, whatever the owner password). Set a lockout password (tpm2_changeauth -c lockout) or disable clear "+
			"(tpm2_clearcontrol -C l s)")
	}
	if perm.InLockout {
		s.Warnings = append(s.Warnings, "the TPM is in dictionary-attack lockout (too many wrong authorization values, none of them provd's): "+
			"provd's keys and sealed secrets are unaffected (they are noDA), but the TPM refuses DA-protected objects of other "+
			"software until it recovers (provd tpm info: lockout) or the lockout hierarchy resets it (tpm2_dictionarylockout -c)")
	}
	if s.Provisioned && !perm.Authenticated {
		s.Warnings = append(s.Warnings, "the TPM's authorization state above was read without authentication (no pinned SRK, or none at its handle)")
	}
	if s.Provisioned && s.TPMTrust == "" {
		s.Warnings = append(s.Warnings, "the TPM's identity is not pinned (provisioned before provd pinned it, or its record was removed): "+
			"provd refuses to seal, unseal, install policies and create, derive or use keys (exit 15) until "+
			"`provision --force --ek-ca BUNDLE` establishes and pins it (a new PK: what the old one kept is lost); "+
			"the PK's policy is not checked")
	}
	return s, nil
}

// keyPrefix prefixes the manifest records of operational keys.
const keyPrefix = "key."

// AuditRecords returns the audit trail's records. A trail that fails
// verification is still shown, as far as it parses, with the verification
// error (api.ErrTampered): that is when an operator most needs to read it.
func (a *Agent) AuditRecords(context.Context) ([]audit.Record, error) {
	defer a.lock()()
	recs, err := audit.ReadRecords(a.auditPath())
	if err != nil {
		return recs, errors.Join(api.ErrTampered, err)
	}
	if _, err := a.auditVerify(); err != nil {
		return recs, err
	}
	return recs, nil
}

// AuditVerify replays the audit chain and compares it with the TPM's anchor.
// A failure unwraps to api.ErrTampered (exit 14) with the line where it breaks.
func (a *Agent) AuditVerify(context.Context) (audit.Report, error) {
	defer a.lock()()
	return a.auditVerify()
}

func (a *Agent) auditVerify() (audit.Report, error) {
	rep, err := audit.Verify(a.auditPath(), a.trailAnchor())
	if err == nil {
		err = a.pendingError()
	}
	if errors.Is(err, audit.ErrTampered) || errors.Is(err, audit.ErrTornTail) {
		return rep, errors.Join(api.ErrTampered, err)
	}
	return rep, err
}

// AuditRepair fixes what a crash can leave in the audit trail: a torn last
// line (cut away: it was never acknowledged) and, with anchorLast, a last line
// written but not anchored (the operator accepts it as genuine after reading
// it). A move to a new anchor that a crash left unfinished is made again
// first (finishMove). Anything else is tampering and is refused. The repair
// is recorded.
func (a *Agent) AuditRepair(ctx context.Context, anchorLast bool) (audit.Report, error) {
	defer a.lock()()
	// A move to a new anchor left unfinished is made again first: the
	// repair then sees the trail in its new anchor (the move leaves the
	// log open).
	if err := a.finishMove(); err != nil {
		return audit.Report{}, err
	}
	if a.audit != nil {
		if err := a.audit.Close(); err != nil {
			return audit.Report{}, err
		}
		a.audit = nil
	}
	rep, err := audit.Repair(a.auditPath(), a.trailAnchor(), audit.RepairOptions{AnchorLast: anchorLast, UID: a.callerUID(ctx), Now: a.now})
	if errors.Is(err, audit.ErrTampered) {
		return rep, errors.Join(api.ErrTampered, err)
	}
	if err != nil {
		return rep, err
	}
	// Records of operations that ran and wait to be written go in now.
	if _, perr := os.Stat(a.pendingPath()); perr == nil {
		if err := a.openAudit(); err != nil {
			return rep, err
		}
		if err := a.writePending(ctx); err != nil {
			return rep, err
		}
		return a.auditVerify()
	}
	return rep, nil
}
