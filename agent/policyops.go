package agent

import (
	"bytes"
	"context"
	"crypto"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// maxCounterSteps bounds the NV increments one policy install may cost: NV
// writes wear a hardware TPM, and a version far ahead is more likely a typo.
const maxCounterSteps = 64

// SignPKPolicy signs, offline, a policy approving vals for devices of class
// whose PK was provisioned with signer's public key ("" for devices
// provisioned without a class). version must be at least each device's
// policy counter; installing it revokes every older version on that device.
func SignPKPolicy(signer crypto.Signer, vals policy.PCRValues, version uint64, class string, allowResettable bool) (*policy.SignedPolicy, error) {
	if err := checkResettable(vals.Indices(), allowResettable); err != nil {
		return nil, err
	}
	ref, err := PolicyRef(class)
	if err != nil {
		return nil, err
	}
	return policy.SignPolicy(signer, vals, version, ref, CounterRef())
}

// InstallPolicy installs a signed policy for the PK: it checks the signature
// against the PK's signer, moves the policy counter up to the policy's version
// (which revokes every older version in the TPM itself) and stores it. An
// older version than the counter is refused: it is revoked. The policy may
// approve PCR values the platform does not have yet (installed before a
// firmware update); the result says whether it is satisfied now.
func (a *Agent) InstallPolicy(ctx context.Context, data []byte) (api.PolicyInstallResult, error) {
	defer a.lock()()
	objects := map[string]string{}
	return auditedResult(ctx, a, "policy-install", objects, func() (api.PolicyInstallResult, error) {
		return a.installPolicy(ctx, data, objects)
	})
}

func (a *Agent) installPolicy(ctx context.Context, data []byte, objects map[string]string) (api.PolicyInstallResult, error) {
	var res api.PolicyInstallResult
	sp, err := policy.ParseSignedPolicy(data)
	if errors.Is(err, policy.ErrBadSignature) {
		// Well-formed, but its signature does not vouch for it: refused.
		return res, fmt.Errorf("%w: %w", api.ErrNotPermitted, err)
	}
	if err != nil {
		return res, fmt.Errorf("%w: %v", api.ErrBadInput, err)
	}
	objects["version"] = fmt.Sprint(sp.Version)
	// One install at a time across processes, for the whole install (the
	// state's read, the policy's write, the counter's move and what
	// follows). Found by review 46: two one-shot installs, each moving the
	// counter by the difference it had read, moved it past the version
	// both installed, revoking it; a lower version written over a higher
	// one was left revoked. Each step still takes the store's lock.
	unhold, err := a.st.Hold(ctx)
	if err != nil {
		return res, err
	}
	defer unhold()
	var st pkState
	if err := a.st.View(ctx, func(tx *store.Tx) (err error) {
		if st, err = a.readPK(tx); err != nil {
			return err
		}
		if err := st.Policy.check(); err != nil {
			return err
		}
		// It moves the policy counter and may create D under the PK.
		return requirePinned(tx)
	}); err != nil {
		return res, err
	}
	if st.Policy.Kind != PolicySigned {
		return res, fmt.Errorf("%w: the PK was provisioned with a plain PCR policy; signed policies need a PK provisioned with a policy signer", api.ErrNotPermitted)
	}
	// A signed policy over PCRs software can reset protects nothing (found
	// by review: one over PCR 23 installed, and PCR_Reset unlocked the PK).
	if err := checkResettable(sp.Values.Indices(), st.AllowResettable); err != nil {
		return res, fmt.Errorf("%w (the PK was provisioned without --allow-resettable)", err)
	}
	signer, err := policy.ParsePublicKeyPEM([]byte(st.Policy.Signer))
	if err != nil {
		return res, err
	}
	if err := sp.Verify(signer); err != nil {
		return res, fmt.Errorf("%w: not signed by the PK's policy signer: %v", api.ErrNotPermitted, err)
	}
	if hex.EncodeToString(sp.PolicyRef) != st.Policy.PolicyRef {
		return res, fmt.Errorf("%w: policy is for another device class or purpose (policyRef %q)", api.ErrNotPermitted, sp.PolicyRef)
	}
	want := CounterRef()
	if sp.Counter.Handle != want.Handle || string(sp.Counter.Name) != string(want.Name) {
		return res, fmt.Errorf("%w: policy names another counter", api.ErrNotPermitted)
	}
	c, err := a.readCounter()
	if err != nil {
		return res, err
	}
	if sp.Version < c {
		return res, &api.PolicyError{Reason: fmt.Sprintf("signed policy version %d is revoked: the policy counter is at %d", sp.Version, c), Err: tpm.ErrPolicyNotSatisfied}
	}
	if sp.Version-c > maxCounterSteps {
		return res, fmt.Errorf("%w: version %d is %d ahead of the counter (%d); at most %d", api.ErrBadInput, sp.Version, sp.Version-c, c, maxCounterSteps)
	}
	// Store first, then revoke: a crash in between leaves the new policy
	// installed and the old one still valid, never neither.
	// Into the state whose PK it is for (found by review 40: across
	// another process's zeroize it was written into the wiped state).
	if err := a.updateUnderPK(ctx, st.Name, func(tx *store.Tx) error { return tx.WriteBlob(blobPolicy, data) }); err != nil {
		return res, err
	}
	a.signed.reset()
	if err := a.moveCounter(ctx, &st, c, sp.Version); err != nil {
		return res, err
	}
	c = sp.Version
	res.Version, res.Counter = sp.Version, c
	// Whether the policy holds now is one policy session: the one that
	// creates the derivation parent (under the first policy that holds), or
	// a session run for the answer alone.
	err = a.withPK(ctx, func(l *loadedPK) error {
		var err error
		if l.state.DName == "" && l.state.Officer != "" {
			err = a.recordD(ctx, l, objects)
		} else {
			var differ []int
			var reason string
			if _, differ, reason, err = a.policyHoldsNow(l); err == nil && (len(differ) > 0 || reason != "") {
				err = &api.PolicyError{Differ: differ, Reason: reason, Err: tpm.ErrPolicyNotSatisfied}
			}
		}
		var pe *api.PolicyError
		if errors.As(err, &pe) {
			res.Differ = pe.Differ
			return nil
		}
		if err != nil {
			return err
		}
		res.Satisfied = true
		return nil
	})
	return res, err
}

// policyHoldsNow says whether the PK's policy holds now, from authenticated
// reads only: the PCRs read in an audit session salted to the pinned SRK, the
// policy counter likewise (readCounter). It returns the current values of
// the PCRs the policy needs, the PCRs that differ, and a reason when no PCR
// does (no signed policy installed, or the installed one revoked). Found by
// review: a policy session run for the answer alone is the bus's word, since
// PolicyPCR's response carries no HMAC, and status said "satisfied" on a
// platform that was not.
func (a *Agent) policyHoldsNow(l *loadedPK) (cur map[int][]byte, differ []int, reason string, err error) {
	var need policy.PCRValues
	switch l.rec.Kind {
	case PolicyPCR:
		if need, err = policy.ParsePCRValues(l.rec.Values); err != nil {
			return nil, nil, "", err
		}
	case PolicySigned:
		if len(l.opts.Signed) == 0 {
			return nil, nil, "no signed policy installed (provd policy install)", nil
		}
		sp := l.opts.Signed[0]
		need = sp.Values
		c, err := a.readCounter()
		if err != nil {
			return nil, nil, "", err
		}
		if c > sp.Version {
			reason = fmt.Sprintf("the installed signed policy (version %d) is revoked: the policy counter is at %d", sp.Version, c)
		}
	}
	if len(need.Values) == 0 {
		return nil, nil, reason, nil
	}
	if cur, err = a.t.PCRReadAuthenticated(need.Bank.Alg(), need.Indices()); err != nil {
		return nil, nil, "", err
	}
	for _, i := range need.Indices() {
		if string(cur[i]) != string(need.Values[i]) {
			differ = append(differ, i)
		}
	}
	return cur, differ, reason, nil
}

// createD creates the derivation parent under the loaded PK (through its
// policy), with the officer's recipes as its policy.
func (a *Agent) createD(l *loadedPK, key crypto.PublicKey) (tpm.Blob, error) {
	d, err := officer.DerivePolicy(key).Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		return tpm.Blob{}, err
	}
	return a.createUnderPK(l, l.state.child(dTemplate(d)), nil)
}

// recordD creates the derivation parent under the PK and records it.
func (a *Agent) recordD(ctx context.Context, l *loadedPK, objects map[string]string) error {
	officer, err := l.state.officerKey()
	if err != nil {
		return err
	}
	dBlob, err := a.createD(l, officer)
	if err != nil {
		return err
	}
	dName, err := dBlob.Name()
	if err != nil {
		return err
	}
	l.state.DName = hex.EncodeToString(dName.Buffer)
	objects["derivation_parent"] = l.state.DName
	return a.updateUnderPK(ctx, l.state.Name, func(tx *store.Tx) error {
		if err := tx.WriteBlob(blobD, dBlob.Marshal()); err != nil {
			return err
		}
		return tx.Put(recPK, l.state)
	})
}

// ShowPolicy reports the PK's policy, the PCR values it needs, the current
// ones and which differ, from PCRs and the policy counter read in audit
// sessions salted to the pinned SRK (the TPM's word, not the bus's).
func (a *Agent) ShowPolicy(ctx context.Context) (api.PolicyState, error) {
	defer a.lock()()
	return a.showPolicy(ctx)
}

func (a *Agent) showPolicy(ctx context.Context) (api.PolicyState, error) {
	var ps api.PolicyState
	// The PK is loaded (its blob must still load, and be the state's PK:
	// found by review, a status that read only the blob's public part said
	// "satisfied" over a PK no key could be loaded under any more), but the
	// cached keys stay resident: nothing here needs more than one slot
	// beside them (issue 14: a status polled on the daemon evicted the hot
	// key). The verdict itself comes from the TPM's authenticated PCR and
	// counter reads.
	var in pkInputs
	if err := a.st.View(ctx, func(tx *store.Tx) (err error) {
		in, err = a.readPKInputs(tx)
		return err
	}); err != nil {
		return ps, err
	}
	err := a.withLoadedPK(in, func(l *loadedPK) error { return a.policyState(l, &ps) })
	if errors.Is(err, tpm.ErrNoMemory) {
		// The PK and the SRK it loads under need two slots: the cached
		// keys make room after all (another client's object took one).
		if err = a.keys.EvictResident(); err == nil {
			err = a.withLoadedPK(in, func(l *loadedPK) error { return a.policyState(l, &ps) })
		}
	}
	if ps.Differ == nil {
		ps.Differ = []int{}
	}
	return ps, err
}

// policyState fills ps from the loaded PK l: its policy, the PCR values it
// needs, the current ones (read authenticated) and which differ.
func (a *Agent) policyState(l *loadedPK, ps *api.PolicyState) error {
	// What the state says the PK needs is what the PK's policy is
	// (found by review: PCR values edited in the state made status say
	// "satisfied" on a platform whose PCRs the PK refuses).
	rule, err := l.state.rule()
	if err != nil {
		return err
	}
	expr, _ := pkPolicyOf(l.expr, rule, nil, l.pk.Public.AuthPolicy.Buffer)
	want, err := expr.Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		return err
	}
	if !bytes.Equal(want, l.pk.Public.AuthPolicy.Buffer) {
		return fmt.Errorf("%w: the state's policy record is not the PK's policy", api.ErrTampered)
	}
	ps.Kind, ps.Digest = l.rec.Kind, l.rec.Digest
	var need policy.PCRValues
	switch {
	case l.rec.Kind == PolicyPCR:
		v, err := policy.ParsePCRValues(l.rec.Values)
		if err != nil {
			return err
		}
		need = v
	case l.rec.Kind == PolicySigned:
		info := &api.SignedPolicyInfo{}
		signer, err := policy.ParsePublicKeyPEM([]byte(l.rec.Signer))
		if err != nil {
			return err
		}
		name, err := policy.SignerName(signer)
		if err != nil {
			return err
		}
		info.Signer = hex.EncodeToString(name)
		if info.Counter, err = a.readCounter(); errors.Is(err, tpm.ErrNotFound) {
			// Removed under provd (A2 where the owner hierarchy
			// has no password): a state to report, not to fail
			// status on. Nothing under this PK can be used.
			ps.Signed = info
			ps.Reason = fmt.Sprintf("the policy counter (NV 0x%08x) is gone: removed by another process "+
				"(the owner hierarchy has no password?); no signed policy can be checked; provision --force makes a new PK and counter",
				uint32(PolicyCounterHandle))
			return nil
		} else if errors.Is(err, errForeignCounter) {
			// Replaced under provd: reported the same way, with no
			// value (the other program's is not provd's).
			ps.Signed = info
			ps.Reason = err.Error()
			return nil
		} else if err != nil {
			return err
		}
		if len(l.opts.Signed) > 0 {
			info.Installed, info.Version = true, l.opts.Signed[0].Version
			need = l.opts.Signed[0].Values
		}
		ps.Signed = info
	}
	cur, differ, reason, err := a.policyHoldsNow(l)
	if err != nil {
		return err
	}
	if len(need.Values) > 0 {
		ps.Bank = need.Bank.String()
		ps.Needed, ps.Current = map[int]string{}, map[int]string{}
		for _, i := range need.Indices() {
			ps.Needed[i] = hex.EncodeToString(need.Values[i])
			ps.Current[i] = hex.EncodeToString(cur[i])
		}
	}
	ps.Differ, ps.Reason = differ, reason
	ps.Satisfied = len(differ) == 0 && reason == ""
	return nil
}
