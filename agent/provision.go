package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// gatedParentAttrs are the attributes of the PK and of D: parents born in the
// TPM that never leave it (fixedTPM|fixedParent) and answer only to their
// policy (userWithAuth clear, adminWithPolicy set). noDA: they have no
// password to guess, and a policy failure does not count against lockout.
var gatedParentAttrs = tpm2.TPMAObject{
	FixedTPM:            true,
	FixedParent:         true,
	SensitiveDataOrigin: true,
	UserWithAuth:        false,
	AdminWithPolicy:     true,
	NoDA:                true,
	Restricted:          true,
	Decrypt:             true,
}

// pkTemplate is the provisioning key: an ECC P-256 restricted-decrypt storage
// key born in the TPM (sensitiveDataOrigin), fixedTPM|fixedParent so it can never
// leave, usable only through its policy (userWithAuth clear, adminWithPolicy
// set).
//
// A movable PK (provision --duplicable-to/--duplicable-by) has fixedTPM and
// fixedParent clear, so that its policy's duplication branch can move it,
// and encryptedDuplication set: the TPM then duplicates it only with an
// inner wrapper and never to TPM_RH_NULL, whatever an approval says.
func pkTemplate(authPolicy []byte, movable bool) tpm2.TPMTPublic {
	attrs := gatedParentAttrs
	if movable {
		attrs.FixedTPM, attrs.FixedParent, attrs.EncryptedDuplication = false, false, true
	}
	return tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgECC,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: attrs,
		AuthPolicy:       tpm2.TPM2BDigest{Buffer: authPolicy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{
				Algorithm: tpm2.TPMAlgAES,
				KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(128)),
				Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
			},
			CurveID: tpm2.TPMECCNistP256,
		}),
	}
}

// dTemplate is the derivation parent: a keyedHash restricted-decrypt key with
// the XOR scheme and KDF1-SP800-108, from which operational keys are derived
// with TPM2_CreateLoaded. Its policy is officer.DerivePolicy: only a recipe the
// crypto officer approved, each approval containing the PK's policy, so every
// derivation re-checks the platform, even with D already loaded.
func dTemplate(authPolicy []byte) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgKeyedHash,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: gatedParentAttrs,
		AuthPolicy:       tpm2.TPM2BDigest{Buffer: authPolicy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{
				Scheme: tpm2.TPMAlgXOR,
				Details: tpm2.NewTPMUSchemeKeyedHash(tpm2.TPMAlgXOR, &tpm2.TPMSSchemeXOR{
					HashAlg: tpm2.TPMAlgSHA256,
					KDF:     tpm2.TPMAlgKDF1SP800108,
				}),
			},
		}),
	}
}

// Provision generates the PK inside the TPM under the SRK, sealed to the
// requested policy, and the derivation parent under it, and records their
// TPM-wrapped blobs. Nothing persistent is created in the TPM before the state
// commit except the SRK (which a retry reuses) and, for signed policies, the
// policy counter and its authorizer (which a retry replaces; the counter's
// value only moves forward): a crash at any moment leaves the old state or
// the new.
func (a *Agent) Provision(ctx context.Context, req api.ProvisionRequest) (api.ProvisionResult, error) {
	defer a.lock()()
	objects := map[string]string{}
	return auditedResult(ctx, a, "provision", objects, func() (api.ProvisionResult, error) {
		res, err := a.provision(ctx, req, objects)
		// Only a provision that happened takes the anchor's handle for
		// its trail (nothing was there, or --force said to replace it):
		// a failed one's record waits in the pending file (found by the
		// reviews: a provision that first contact refused, or one refused
		// on its own request, began a trail over another state's anchor).
		a.replaceAnchor = err == nil
		return res, err
	})
}

func (a *Agent) provision(ctx context.Context, req api.ProvisionRequest, objects map[string]string) (res api.ProvisionResult, err error) {
	provisioned := false
	if err := a.st.View(ctx, func(tx *store.Tx) error {
		_, err := a.readPK(tx)
		provisioned = err == nil
		if errors.Is(err, api.ErrNotProvisioned) {
			return nil
		}
		return err
	}); err != nil {
		return res, err
	}
	if provisioned && !req.Force {
		return res, api.ErrAlreadyProvisioned
	}
	if !provisioned && !req.Force {
		if g, err := a.trailAnchor().gate(); err != nil {
			return res, err
		} else if g == nil && !a.trailAnchor().legacy {
			if err := a.foreignAnchor(); err != nil {
				return res, err
			}
		}
	}

	// Who the TPM is comes first: nothing is created in a TPM that is not
	// verified, and every session from here on is salted to the pinned SRK.
	identity, err := a.firstContact(ctx, req.Identity())
	if err != nil {
		return res, err
	}
	objects["srk"] = identity.SRKName
	objects["tpm_trust"] = identity.Trust
	if err := a.gateThroughPinnedSRK(ctx); err != nil {
		return res, err
	}
	// A movable PK's rule is checked before anything is destroyed or
	// defined (software only: the peer's file, its EK chain).
	rule, err := a.pkRule(req, objects)
	if err != nil {
		return res, err
	}
	if err := a.checkKeysLoad(req); err != nil {
		return res, err
	}
	if provisioned {
		// As zeroize: nothing is destroyed unless the trail takes a record.
		if err := a.record(ctx, opZeroizeStart, map[string]string{"by": "provision --force"}, nil); err != nil {
			return res, fmt.Errorf("provision --force refused, nothing destroyed: %w", err)
		}
		if err := a.zeroize(ctx, api.ZeroizeOptions{}); err != nil {
			return res, fmt.Errorf("zeroize before provisioning again: %w", err)
		}
	}

	rec, counterGate, err := a.provisionPolicy(req, &res)
	if err != nil {
		return res, err
	}
	res.PolicyKind, res.PolicyDigest = rec.Kind, rec.Digest

	expr, err := rec.expr()
	if err != nil {
		return res, err
	}
	pkDigest, err := pkPolicy(expr, rule, nil).Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		return res, err
	}
	// Provision alone persists the SRK (tpm.TransientSRKOnly): the PK and
	// every key provd makes live under it from here on.
	srk, err := a.t.PersistSRK()
	if err != nil {
		return res, err
	}
	objectAuth, err := tpm.RandomAuth(objectAuthSize)
	if err != nil {
		return res, err
	}
	defer clear(objectAuth)
	// D is created under the PK at once when an officer can approve
	// recipes for it (with a signed policy, nothing approves a PCR state
	// yet: D is created when the first signed policy that holds is
	// installed): the PK is then made loaded (CreateAndLoad, one command
	// for Create and Load).
	withD := rec.Kind != PolicySigned && req.Officer != nil
	var pkBlob tpm.Blob
	var pkObj tpm.Object
	if withD {
		pkObj, pkBlob, err = a.t.CreateAndLoad(srk, nil, pkTemplate(pkDigest, rule.set()), tpm.Sensitive{UserAuth: objectAuth})
		if err == nil {
			defer func() { // on the error paths; flushed below otherwise
				if pkObj.Handle != 0 {
					a.flush(&err, pkObj.Handle)
				}
			}()
		}
	} else {
		pkBlob, err = a.t.Create(srk, nil, pkTemplate(pkDigest, rule.set()), tpm.Sensitive{UserAuth: objectAuth})
	}
	if err != nil {
		return res, err
	}
	pkName, err := pkBlob.Name()
	if err != nil {
		return res, err
	}
	st := pkState{Name: hex.EncodeToString(pkName.Buffer), Policy: rec, CreatedAt: a.now().UTC(), CounterGate: counterGate.Blob, CounterGateAuth: counterGate.Auth}
	st.ObjectAuth = hex.EncodeToString(objectAuth)
	st.AllowResettable = req.AllowResettable
	if rule.To != nil {
		st.DupTo = hex.EncodeToString(rule.To)
	}
	st.DupBy = req.DuplicableBy
	res.Movable = st.movableDesc()
	if req.Officer != nil {
		pemBytes, err := policy.MarshalPublicKeyPEM(req.Officer)
		if err != nil {
			return res, err
		}
		st.Officer = string(pemBytes)
		res.Officer = officerName(req.Officer)
		objects["officer"] = res.Officer
	}
	var dMarshalled []byte
	objects["pk"] = st.Name

	// Create D under the freshly created PK, through the PK's policy.
	if withD {
		if string(pkObj.Name.Buffer) != string(pkName.Buffer) {
			return res, fmt.Errorf("%w: TPM2_CreateLoaded: the loaded PK's name is not its blob's", tpm.ErrResponseForged)
		}
		l := &loadedPK{state: st, rec: rec, auth: objectAuth, pk: pkObj}
		if l.expr, err = rec.expr(); err != nil {
			return res, err
		}
		dBlob, err := a.createD(l, req.Officer)
		if err != nil {
			return res, err
		}
		h := pkObj.Handle
		pkObj.Handle = 0
		if err := a.t.Flush(h); err != nil {
			return res, err
		}
		dName, err := dBlob.Name()
		if err != nil {
			return res, err
		}
		st.DName = hex.EncodeToString(dName.Buffer)
		objects["derivation_parent"] = st.DName
		dMarshalled = dBlob.Marshal()
	}
	err = a.st.Update(ctx, func(tx *store.Tx) error {
		// The PK lives under the SRK: it is at 0x81000001 when the state
		// says provisioned, though another process evicted it while this
		// one worked (tpm.PersistSRKAgain; Agent.evictSRKUnowed).
		if err := a.t.PersistSRKAgain(); err != nil {
			return err
		}
		if err := tx.Put(recIdentity, identity); err != nil {
			return err
		}
		if err := tx.Put(recPK, st); err != nil {
			return err
		}
		if err := tx.WriteBlob(blobPK, pkBlob.Marshal()); err != nil {
			return err
		}
		if dMarshalled != nil {
			return tx.WriteBlob(blobD, dMarshalled)
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	res.PKName, res.DName, res.TPMTrust = st.Name, st.DName, identity.Trust
	return res, nil
}

// checkKeysLoad refuses a policy signer or officer key that the TPM
// cannot load (review 71: an RSA-4096 signer, approved in software, which
// swtpm's TPM, like many, refuses with TPM_RC_VALUE: the PK bound to it
// could never be used, while policy install and show said "satisfied").
// It asks the TPM itself, one TPM2_TestParms each, before anything is
// destroyed or made; a refusal of the key's parameters is ErrNotPermitted.
func (a *Agent) checkKeysLoad(req api.ProvisionRequest) error {
	for _, k := range []struct {
		what string
		pub  crypto.PublicKey
	}{{"policy signer", req.Signer}, {"officer key", req.Officer}} {
		if k.pub == nil {
			continue
		}
		pub, err := policy.SignerPublic(k.pub)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", api.ErrNotPermitted, k.what, err)
		}
		err = a.t.TestParms(pub)
		var fe tpm2.TPMFmt1Error
		if errors.As(err, &fe) {
			return fmt.Errorf("%w: this TPM cannot use the %s (%s): %w", api.ErrNotPermitted, k.what, keyDesc(k.pub), err)
		}
		if err != nil {
			return fmt.Errorf("checking the %s with the TPM: %w", k.what, err)
		}
	}
	return nil
}

// provisionPolicy builds the PK's policy record for req and, for a signed
// policy, defines the gated policy counter and returns its gate.
func (a *Agent) provisionPolicy(req api.ProvisionRequest, res *api.ProvisionResult) (rec policyRecord, counterGate counterGateState, err error) {
	// The signer and the officer key are approved, and the TPM can use
	// them: checkKeysLoad, before anything was destroyed.
	if req.Signer != nil {
		c, gate, err := a.ensureCounter()
		if err != nil {
			return policyRecord{}, counterGateState{}, err
		}
		res.Counter = &c
		res.CounterHandle = fmt.Sprintf("0x%08x", uint32(PolicyCounterHandle))
		ref, err := PolicyRef(req.PolicyClass)
		if err != nil {
			return policyRecord{}, counterGateState{}, err
		}
		rec, err := newSignedRecord(req.Signer, ref)
		return rec, gate, err
	}
	var vals policy.PCRValues
	if req.Values != nil {
		vals = *req.Values
	} else {
		bank := req.Bank
		if bank == 0 {
			bank = policy.BankSHA256
		}
		pcrs := req.PCRs
		if len(pcrs) == 0 {
			pcrs = api.DefaultPCRs
		}
		if err := checkResettable(pcrs, req.AllowResettable); err != nil {
			return policyRecord{}, counterGateState{}, err
		}
		cur, err := a.t.PCRReadAuthenticated(bank.Alg(), pcrs)
		if err != nil {
			return policyRecord{}, counterGateState{}, err
		}
		vals = policy.PCRValues{Bank: bank, Values: cur}
	}
	if err := vals.Validate(); err != nil {
		return policyRecord{}, counterGateState{}, fmt.Errorf("%w: %v", api.ErrBadInput, err)
	}
	if err := checkResettable(vals.Indices(), req.AllowResettable); err != nil {
		return policyRecord{}, counterGateState{}, err
	}
	res.Bank, res.PCRs = vals.Bank.String(), vals.Indices()
	rec, err = newPCRRecord(vals)
	return rec, counterGateState{}, err
}

// counterGateState is the policy counter's gate as the PK record keeps it
// (hex): its blob and its authorization value.
type counterGateState struct{ Blob, Auth string }

// ensureCounter defines the policy counter, gated by a new key under the
// SRK with a new authorization value (tpm.DefineGatedCounter), and returns
// its value, read through an authenticated path, and the gate for the
// state. Whatever was at the counter's handles is replaced: a counter never
// goes back, even across undefine and define, so a retry or a counter left
// by another state can only move the version forward.
func (a *Agent) ensureCounter() (uint64, counterGateState, error) {
	srk, err := a.t.SRK()
	if err != nil {
		return 0, counterGateState{}, err
	}
	auth, err := tpm.NewGateAuth(rand.Reader)
	if err != nil {
		return 0, counterGateState{}, err
	}
	defer clear(auth)
	blob, err := a.t.CreateGate(srk, auth)
	if err != nil {
		return 0, counterGateState{}, fmt.Errorf("counter gate key: %w", err)
	}
	gate, err := a.t.LoadGate(srk, blob, auth)
	if err != nil {
		return 0, counterGateState{}, err
	}
	_, err = a.t.DefineGatedCounter(PolicyCounterHandle, CounterAuthorizerHandle, gate)
	if ferr := a.t.Flush(gate.Handle); ferr != nil && err == nil {
		err = ferr
	}
	if err != nil {
		return 0, counterGateState{}, err
	}
	c, err := a.readCounter()
	return c, counterGateState{Blob: hex.EncodeToString(blob.Marshal()), Auth: hex.EncodeToString(auth)}, err
}

// readCounter is the policy counter's value as the TPM states it in an
// audit session salted to the pinned SRK: what provd decides on (the
// install's starting value, whether a policy is revoked) is never the bus's
// word. The index must be provd's counter (provdCounter): another
// program's counter at the handle is errForeignCounter (seen by review 46:
// status reported its value as provd's).
func (a *Agent) readCounter() (uint64, error) {
	c, x, err := a.t.ReadCounterAuthenticated(PolicyCounterHandle)
	if err != nil {
		return 0, err
	}
	if !provdCounter(x.Name.Buffer) {
		return 0, fmt.Errorf("%w (its TPM name is %x): another program defined a counter of its own there (the owner hierarchy has no password?); no signed policy can be checked; provision --force makes a new PK and counter", errForeignCounter, x.Name.Buffer)
	}
	return c, nil
}

// errForeignCounter: the index at the policy counter's handle is not
// provd's. Signed policies name provd's counter (PolicyNV, by name), so
// the TPM checks none of them against it: nothing under the PK is usable
// until provd's counter is back (provision --force makes a new PK and
// counter).
var errForeignCounter = fmt.Errorf("%w: the policy counter at NV 0x%08x is not provd's", api.ErrTampered, uint32(PolicyCounterHandle))

// provdCounter says whether name, the authenticated name of the index at
// the policy counter's handle, is a counter provd defines there: the gated
// counter every signed policy names (CounterRef), or the counter of a
// state provisioned before gates (tpm.CounterPublic, which such states
// still increment). Any other attribute, policy or size gives another
// name. A2 with the owner's authorization can define either shape itself
// (docs/threat-model.md: what the gates do not promise).
func provdCounter(name []byte) bool {
	if bytes.Equal(name, CounterRef().Name) {
		return true
	}
	legacy, err := tpm.NVPublicName(tpm.CounterPublic(PolicyCounterHandle))
	return err == nil && bytes.Equal(name, legacy)
}

// moveCounter moves the policy counter from from to to (from < to) with the
// state's gate (a counter defined before gates takes its empty password),
// then reads it back through an authenticated path: a counter that is not at
// to (an increment dropped on the bus and answered with success) is
// ErrResponseForged, and the install is not reported done. A gate without an
// authorization value (a PK record from before gates had one) is replaced
// first: the counter and its authorizer are defined again under a new gate
// (same names: signed policies still name it), which moves the counter one
// step at least, and st is stored with the new gate.
func (a *Agent) moveCounter(ctx context.Context, st *pkState, from, to uint64) (err error) {
	if to <= from {
		return nil
	}
	switch {
	case st.CounterGate == "":
		for n := to - from; n > 0; n-- {
			if err := a.t.Increment(PolicyCounterHandle); err != nil {
				return err
			}
		}
	default:
		if st.CounterGateAuth == "" {
			c, g, err := a.ensureCounter()
			if err != nil {
				return fmt.Errorf("policy counter: replacing its gate, which has no authorization value: %w", err)
			}
			st.CounterGate, st.CounterGateAuth = g.Blob, g.Auth
			if err := a.updateUnderPK(ctx, st.Name, func(tx *store.Tx) error { return tx.Put(recPK, *st) }); err != nil {
				return err
			}
			if c > to {
				return &api.PolicyError{Reason: fmt.Sprintf("signed policy version %d is revoked: the policy counter, defined again under a new gate, is at %d", to, c), Err: tpm.ErrPolicyNotSatisfied}
			}
			from = c
		}
		if err := a.incrementGated(*st, to-from); err != nil {
			return err
		}
	}
	got, err := a.readCounter()
	if err != nil {
		return err
	}
	if got != to {
		return fmt.Errorf("%w: the policy counter is at %d after the increments, not %d: an increment was dropped or added on the way to the TPM", tpm.ErrResponseForged, got, to)
	}
	return nil
}

// incrementGated moves the policy counter n steps with the state's gate.
func (a *Agent) incrementGated(st pkState, n uint64) (err error) {
	raw, err := hex.DecodeString(st.CounterGate)
	if err != nil {
		return fmt.Errorf("%w: counter gate: %v", api.ErrTampered, err)
	}
	blob, err := tpm.UnmarshalBlob(raw)
	if err != nil {
		return fmt.Errorf("%w: counter gate: %v", api.ErrTampered, err)
	}
	auth, err := hex.DecodeString(st.CounterGateAuth)
	if err != nil || len(auth) != tpm.GateAuthSize {
		return fmt.Errorf("%w: counter gate authorization value", api.ErrTampered)
	}
	defer clear(auth)
	srk, err := a.t.SRK()
	if err != nil {
		return err
	}
	gate, err := a.t.LoadGate(srk, blob, auth)
	if err != nil {
		return fmt.Errorf("counter gate key: %w", err)
	}
	defer a.flush(&err, gate.Handle)
	if err := a.t.IncrementGated(PolicyCounterHandle, CounterAuthorizerHandle, gate, n); err != nil {
		// The load's handle came in an answer with no HMAC: renamed on
		// the bus, the gate's proof fails, the flush above names another
		// handle, and the gate stays loaded; the sweep flushes it (found
		// by review, as for the AK).
		a.t.Unheld()
		return err
	}
	return nil
}

// checkResettable refuses a policy over PCRs that software can reset, unless
// allowed: a reset and a replay of the recorded extends would satisfy it
// again (what locked a secret after a bad boot would unlock it).
func checkResettable(pcrs []int, allow bool) error {
	if r := policy.Resettable(pcrs); len(r) > 0 && !allow {
		return fmt.Errorf("%w: PCRs %v can be reset by software, so a policy over them protects nothing; allow resettable PCRs only for tests and demonstrations", api.ErrNotPermitted, r)
	}
	return nil
}

// keyDesc names a signer's key type for a refusal: RSA-4096, ECDSA P-384.
func keyDesc(k crypto.PublicKey) string {
	switch k := k.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	}
	return fmt.Sprintf("%T", k)
}
