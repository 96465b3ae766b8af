package agent

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// Names of the PK's records in the state store.
const (
	recPK      = "pk"     // pkState
	blobPK     = "pk"     // the PK's TPM-wrapped blob (under the SRK)
	blobD      = "d"      // the derivation parent's blob (under the PK)
	blobPolicy = "policy" // the installed signed policy (policy.json)
)

// pkPolicyRef is the policyRef signed policies for the PK carry, so that a
// signature made for another purpose by the same signer cannot unlock the PK.
var pkPolicyRef = []byte("provd/pk")

// maxClass bounds a device class so that its policyRef fits the 32 bytes
// PolicyAuthorize takes.
const maxClass = 32 - len("provd/pk/")

// PolicyRef is the policyRef of signed policies for devices of class: the
// fleet or device class provisioned with them ("provd/pk/" + class), or
// "provd/pk" for none. PolicyAuthorize checks it in the TPM, so a policy
// signed for one class does not unlock a device of another. A class is 1..23
// of a-z, 0-9, '.', '_' and '-'.
func PolicyRef(class string) ([]byte, error) {
	if class == "" {
		return pkPolicyRef, nil
	}
	if len(class) > maxClass || strings.Trim(class, "abcdefghijklmnopqrstuvwxyz0123456789._-") != "" {
		return nil, fmt.Errorf("%w: device class %q: 1..%d of a-z, 0-9, '.', '_', '-'", api.ErrBadInput, class, maxClass)
	}
	return append(slices.Clone(pkPolicyRef), "/"+class...), nil
}

// pkState is the manifest record of the provisioning key.
type pkState struct {
	Name   string       `json:"name"`   // hex TPM name of the PK
	DName  string       `json:"d_name"` // hex TPM name of the derivation parent
	Policy policyRecord `json:"policy"`
	// Officer is the crypto officer's approval key (PEM), when one was named
	// at provisioning: D's policy and extractable keys' duplication branch
	// name it (officer.go).
	Officer   string    `json:"officer,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// ObjectAuth (hex) is the authValue of the PK and every object under it
	// (D, keys, sealed objects), whose policies end in PolicyAuthValue
	// (officer.ObjectPolicy): random, made at provisioning, sent to the TPM
	// only inside encrypted sessions, and otherwise only in this state.
	ObjectAuth string `json:"object_auth"`
	// AllowResettable: provisioned with --allow-resettable (tests and
	// demonstrations); only then does policy install accept a signed policy
	// over PCRs software can reset.
	AllowResettable bool `json:"allow_resettable,omitempty"`
	// CounterGate is the blob (hex) of the key that gates the policy
	// counter's increments (signed policies; empty for a counter defined
	// before gates, incremented with its empty password).
	CounterGate string `json:"counter_gate,omitempty"`
	// CounterGateAuth is the counter gate's authorization value (hex); empty
	// for a gate from before gates had one (replaced at the next increment).
	CounterGateAuth string `json:"counter_gate_auth,omitempty"`
	// DupTo and DupBy make the PK movable (provision --duplicable-to,
	// --duplicable-by; docs/transfer.md): its duplication rule, as a key
	// record's (dupRule). Both "": the PK never leaves its TPM.
	DupTo string `json:"dup_to,omitempty"`
	DupBy string `json:"dup_by,omitempty"`
	// Parent is the PK's parent when it is not the SRK: the transfer key
	// of this device that a moved PK was imported under (provision
	// --from).
	Parent *pkParent `json:"parent,omitempty"`
}

// pkParent is the transfer key a moved PK lives under: a storage key under
// the SRK (fixedTPM, born in this TPM), used as a parent with its
// authValue, which is as secret as the PK's own.
type pkParent struct {
	Name string `json:"name"` // hex TPM name
	Blob string `json:"blob"` // hex, under the SRK
	Auth string `json:"auth"` // hex authValue
	// PK is the name (hex) of the PK the transfer key's policy names, the
	// receiver's PK when it adopted this one: "" for a legacy transfer
	// key, whose USER role is its value alone (review 74).
	PK string `json:"pk,omitempty"`
}

// rule is the PK's duplication rule (the zero rule: not movable).
func (s pkState) rule() (dupRule, error) {
	return keyRecord{Name: "the PK", DupTo: s.DupTo, DupBy: s.DupBy}.rule()
}

// movable reports whether the PK was provisioned movable.
func (s pkState) movable() bool { return s.DupTo != "" || s.DupBy != "" }

// child is template t for an object under this PK (catalog.UnderMovable).
func (s pkState) child(t tpm2.TPMTPublic) tpm2.TPMTPublic {
	return catalog.UnderMovable(t, s.movable())
}

// policyRecord says how an object's authPolicy was built, so it can be applied
// again at use. Kind "pcr": PolicyPCR over Values. Kind "signed":
// PolicyAuthorize(Signer, PolicyRef); the approved policy comes from the
// installed signed policy.
type policyRecord struct {
	Kind      string          `json:"kind"`
	Values    json.RawMessage `json:"pcr_values,omitempty"`
	Signer    string          `json:"signer,omitempty"` // PEM
	PolicyRef string          `json:"policy_ref,omitempty"`
	Digest    string          `json:"digest"`
}

// PolicyKind names.
const (
	PolicyPCR    = "pcr"
	PolicySigned = "signed"
)

// expr rebuilds the policy expression the record describes.
func (r policyRecord) expr() (policy.Policy, error) {
	switch r.Kind {
	case PolicyPCR:
		vals, err := policy.ParsePCRValues(r.Values)
		if err != nil {
			return nil, err
		}
		return policy.Policy{policy.PCR{Values: vals}}, nil
	case PolicySigned:
		pub, err := policy.ParsePublicKeyPEM([]byte(r.Signer))
		if err != nil {
			return nil, err
		}
		ref, err := hex.DecodeString(r.PolicyRef)
		if err != nil {
			return nil, err
		}
		return policy.Policy{policy.Authorize{Signer: pub, PolicyRef: ref}}, nil
	}
	return nil, fmt.Errorf("unknown policy kind %q in state", r.Kind)
}

// newPCRRecord makes a record for PolicyPCR over vals.
func newPCRRecord(vals policy.PCRValues) (policyRecord, error) {
	raw, err := json.Marshal(vals)
	if err != nil {
		return policyRecord{}, err
	}
	rec := policyRecord{Kind: PolicyPCR, Values: raw}
	return rec.withDigest()
}

// newSignedRecord makes a record for PolicyAuthorize(signer, ref).
func newSignedRecord(signer crypto.PublicKey, ref []byte) (policyRecord, error) {
	pemBytes, err := policy.MarshalPublicKeyPEM(signer)
	if err != nil {
		return policyRecord{}, err
	}
	rec := policyRecord{Kind: PolicySigned, Signer: string(pemBytes), PolicyRef: hex.EncodeToString(ref)}
	return rec.withDigest()
}

func (r policyRecord) withDigest() (policyRecord, error) {
	p, err := r.expr()
	if err != nil {
		return r, err
	}
	d, err := p.Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		return r, err
	}
	r.Digest = hex.EncodeToString(d)
	return r, nil
}

// check refuses r as tampered unless its digest is the one its values or
// signer give (review 71: the record's digest text was reported unchecked
// by status and policy show, and used as the PK's policy in peer
// identities and approvals, while the values and signer beside it were
// checked against the PK).
func (r policyRecord) check() error {
	want, err := r.withDigest()
	if err != nil {
		return fmt.Errorf("%w: the state's policy record: %w", api.ErrTampered, err)
	}
	if want.Digest != r.Digest {
		return fmt.Errorf("%w: the state's policy record names digest %.16s…, its policy's is %.16s…", api.ErrTampered, r.Digest, want.Digest)
	}
	return nil
}

func (r policyRecord) digest() []byte {
	d, _ := hex.DecodeString(r.Digest)
	return d
}

// CounterRef is the policy counter as signed policies name it. Its name is
// computed offline from the index's public area, which is the same on every
// device provd provisions: one signed policy serves a whole fleet.
func CounterRef() policy.NVCounterRef {
	pub, err := tpm.GatedCounterPublic(PolicyCounterHandle, CounterAuthorizerHandle)
	if err != nil {
		panic(err) // a constant public area always has a name
	}
	name, err := tpm2.NVName(&pub)
	if err != nil {
		panic(err)
	}
	return policy.NVCounterRef{Handle: PolicyCounterHandle, Name: name.Buffer}
}

// pkPolicy is the PK's own policy: officer.ObjectPolicy(p), or for a
// movable PK PolicyOR of one use branch per command the PK authorizes
// (pkUses: p, PolicyCommandCode of that command, PolicyAuthValue) and its
// duplication branch last (dupBranch of the PK's rule; objName, the PK's
// name, is needed to execute a bound branch, not for the digest). The
// command codes keep the use branches from authorizing TPM2_Duplicate: p
// is PolicyAuthorize(signer) on a movable PK, the signer approves any
// digest, one holding PolicyCommandCode(Duplicate) among them, and the TPM
// keeps that command code through PolicyAuthorize (review 70: an
// extractable key's plaintext through its use branch; a movable PK's, and
// with it every key under it, the same way). A PK that does not move
// needs no such bound: the TPM duplicates no fixedParent object. A bound
// branch starts with p: a key's is checked when the key loads under the
// PK, through the PK's policy, but the PK loads under its parent with no
// policy at all, so its branch is where the platform is checked (found by
// review: without p, the PK left on a bad boot). An authority's branch
// holds p only as its approvals do (officer.DupApproved, which refuses a
// zero digest): a stolen authority key moves the PK anywhere, on any boot
// (docs/transfer.md).
func pkPolicy(p policy.Policy, rule dupRule, objName []byte) policy.Policy {
	if !rule.set() {
		return officer.ObjectPolicy(p)
	}
	var branches []policy.Policy
	for _, cc := range pkUses {
		branches = append(branches, useBranch(p, cc))
	}
	return policy.Policy{policy.Or{Branches: append(branches, pkDupBranch(p, rule, objName))}}
}

// pkUses are the commands a movable PK authorizes, in the order of its use
// branches: its children's loads, creations and imports, and
// PolicySecret (a duplicate's import proves the PK with it).
var pkUses = []tpm2.TPMCC{tpm2.TPMCCLoad, tpm2.TPMCCCreate, tpm2.TPMCCImport, tpm2.TPMCCPolicySecret}

// pkDupBranch is a movable PK's duplication branch.
func pkDupBranch(p policy.Policy, rule dupRule, objName []byte) policy.Policy {
	dup, _ := dupBranch(rule, nil, objName) // a set rule needs no officer
	if rule.To != nil {
		dup = append(slices.Clone(p), dup...)
	}
	return dup
}

// pkPolicyBefore70 is a movable PK's policy as provd made it before review
// 70: one use branch bound to no command. PKs made then keep it, and the
// TPM lets the policy signer move them (docs/transfer.md says how to
// replace one).
func pkPolicyBefore70(p policy.Policy, rule dupRule, objName []byte) policy.Policy {
	return policy.Policy{policy.Or{Branches: []policy.Policy{officer.ObjectPolicy(p), pkDupBranch(p, rule, objName)}}}
}

// pkPolicyOf is the PK's policy that authPolicy, the PK's own, is:
// pkPolicy's, or for a movable PK made before review 70
// pkPolicyBefore70's (then older is true). Any other authPolicy gets
// pkPolicy's, which the caller's check then refuses.
func pkPolicyOf(p policy.Policy, rule dupRule, objName, authPolicy []byte) (expr policy.Policy, older bool) {
	if rule.set() {
		if old := pkPolicyBefore70(p, rule, objName); digestIs(old, authPolicy) {
			return old, true
		}
	}
	return pkPolicy(p, rule, objName), false
}

// pkBranch is the branch of a movable PK's policy (pkPolicyOf) that
// authorizes command cc, or with cc TPM2_Duplicate its duplication branch.
func pkBranch(cc tpm2.TPMCC, older bool) (int, error) {
	if older {
		if cc == tpm2.TPMCCDuplicate {
			return 1, nil
		}
		return 0, nil
	}
	if cc == tpm2.TPMCCDuplicate {
		return len(pkUses), nil
	}
	if i := slices.Index(pkUses, cc); i >= 0 {
		return i, nil
	}
	return 0, fmt.Errorf("the PK authorizes no %v", cc)
}

// loadedPK is the PK and, when asked, the derivation parent, loaded.
type loadedPK struct {
	state pkState
	pk    tpm.Object
	rec   policyRecord
	expr  policy.Policy // P; the PK itself carries officer.ObjectPolicy(P)
	opts  policy.ApplyOptions
	auth  []byte
}

// objectAuthSize is the size of the objects' authValue: a SHA-256 digest's,
// the most an authValue of a SHA-256 object may be.
const objectAuthSize = 32

// objectAuth decodes the objects' authValue; a state without one was
// provisioned before objects had one, and its objects could be used by
// anyone who satisfies the PK's policy: refused, with the way out.
func (s pkState) objectAuth() ([]byte, error) {
	auth, err := hex.DecodeString(s.ObjectAuth)
	if err != nil || len(auth) != objectAuthSize {
		return nil, fmt.Errorf("%w: this PK was provisioned by an earlier provd, whose objects anyone satisfying the PK's policy can use (no authorization value); provision --force replaces it (a new PK)", api.ErrNotPermitted)
	}
	return auth, nil
}

// readPK reads the PK's state, or api.ErrNotProvisioned.
func (a *Agent) readPK(tx *store.Tx) (pkState, error) {
	var s pkState
	err := tx.Get(recPK, &s)
	if errors.Is(err, store.ErrNotFound) {
		return s, api.ErrNotProvisioned
	}
	return s, err
}

// updateUnderPK is a.st.Update for what an operation made with the PK the
// state named pk when it began: fn runs only while the state still names
// it. Another process may have zeroized the state, or provisioned it again,
// while the operation worked in the TPM (found with review 39's race: a
// key create across another program's zeroize recorded its key in the
// wiped state; a derivation parent's record would have brought the
// zeroized PK's record back): errZeroizedMeanwhile, or api.ErrStateChanged
// where the PK was replaced (updateWhile).
func (a *Agent) updateUnderPK(ctx context.Context, pk string, fn func(*store.Tx) error) error {
	return a.updateWhile(ctx, func(tx *store.Tx) (refusal, err error) {
		now, err := a.readPK(tx)
		switch {
		case errors.Is(err, api.ErrNotProvisioned):
			return errZeroizedMeanwhile, nil
		case err != nil:
			return nil, err
		case now.Name != pk:
			return fmt.Errorf("%w: the provisioning key (provision --force); nothing recorded: run the command again", api.ErrStateChanged), nil
		}
		return nil, nil
	}, fn)
}

// errZeroizedMeanwhile refuses to record what an operation made in a state
// another process zeroized while it ran (updateWhile).
var errZeroizedMeanwhile = fmt.Errorf("%w (the state was zeroized while the operation ran; nothing recorded)", api.ErrNotProvisioned)

// updateWhile is a.st.Update for what an operation made in the TPM: under
// the store's lock, still reads whether the state is still the one the
// operation began with (refusal otherwise, err for a failed read), and fn
// runs only then. A refusal records nothing and drops what the daemon kept
// of the state's PK (forgetStatePK).
func (a *Agent) updateWhile(ctx context.Context, still func(*store.Tx) (refusal, err error), fn func(*store.Tx) error) error {
	refused := false
	err := a.st.Update(ctx, func(tx *store.Tx) error {
		refusal, err := still(tx)
		if err != nil {
			return err
		}
		if refusal != nil {
			refused = true
			return refusal
		}
		return fn(tx)
	})
	if refused {
		a.forgetStatePK()
	}
	return err
}

// forgetStatePK drops what the daemon keeps of a PK the state no longer
// names, once an operation found it gone (another process's zeroize or
// provision --force): the PK's saved context and the cached keys, as
// its own zeroize does (found by review 41: a refused provision --from
// kept the saved context of a PK no state records, loadable until a TPM
// reset). The state's next PK loads from its blob.
func (a *Agent) forgetStatePK() {
	a.pk = nil
	// Flushed and forgotten, saved contexts included (found by review 42:
	// an eviction kept each key's saved context, loadable until a reset).
	if err := a.keys.Close(); err != nil {
		a.log.Debug("flush of the cached keys failed", "err", err)
	}
}

// pkInputs is what loading the PK and satisfying its policy take from the
// state: its record, its blob under the SRK, its policy expression and the
// installed signed policy (if any). Every path that loads the PK reads them
// with readPKInputs and loads with withLoadedPK.
type pkInputs struct {
	state   pkState
	blob    []byte
	expr    policy.Policy // the PK's policy P; objects carry officer.ObjectPolicy(P)
	opts    policy.ApplyOptions
	officer crypto.PublicKey // nil when none was named
	auth    []byte           // the objects' authValue (pkState.ObjectAuth)
}

// readPKInputs reads the PK's inputs in tx, or api.ErrNotProvisioned.
func (a *Agent) readPKInputs(tx *store.Tx) (pkInputs, error) {
	var in pkInputs
	var err error
	if in.state, err = a.readPK(tx); err != nil {
		return in, err
	}
	if err := in.state.Policy.check(); err != nil {
		return in, err
	}
	if err := requirePinned(tx); err != nil {
		return in, err
	}
	if in.blob, err = tx.ReadBlob(blobPK); err != nil {
		return in, err
	}
	if in.expr, err = in.state.Policy.expr(); err != nil {
		return in, err
	}
	if in.officer, err = in.state.officerKey(); err != nil {
		return in, fmt.Errorf("officer key in state: %w", err)
	}
	if in.auth, err = in.state.objectAuth(); err != nil {
		return in, err
	}
	if in.state.Policy.Kind != PolicySigned {
		return in, nil
	}
	signed, err := tx.ReadBlob(blobPolicy)
	if errors.Is(err, store.ErrNotFound) {
		return in, nil // none installed yet
	}
	if err != nil {
		return in, err
	}
	sp, err := a.signed.parse(signed, in.state.Policy)
	if err != nil {
		return in, fmt.Errorf("installed signed policy: %w", err)
	}
	in.opts.Signed = []*policy.SignedPolicy{sp}
	return in, nil
}

// withPK loads the PK under the SRK, runs fn with it, and flushes it. The PK
// itself needs only the SRK's empty password to load; every use of it as a
// parent needs its policy (authorize). It evicts cached keys first, to free
// the object slots they hold; callers that read the PK's state in their own
// transaction evict themselves and use readPKInputs and withLoadedPK.
func (a *Agent) withPK(ctx context.Context, fn func(l *loadedPK) error) error {
	in, err := a.pkInputs(ctx)
	if err != nil {
		return err
	}
	return a.withLoadedPK(in, fn)
}

// pkInputs evicts the resident keys (the operation may need every object
// slot) and reads what loading the PK needs from the state.
func (a *Agent) pkInputs(ctx context.Context) (in pkInputs, err error) {
	if err := a.keys.EvictResident(); err != nil {
		return pkInputs{}, err
	}
	err = a.st.View(ctx, func(tx *store.Tx) (err error) {
		in, err = a.readPKInputs(tx)
		return err
	})
	return in, err
}

// withLoadedPK loads the PK of in under the SRK, checks that it is the PK the
// state names (api.ErrTampered otherwise), runs fn with it, and flushes it.
// The daemon (Config.KeepSession) keeps the PK's saved context between
// operations (savedPK) and loads it back with TPM2_ContextLoad, checked
// with a TPM2_ReadPublic of what was loaded.
func (a *Agent) withLoadedPK(in pkInputs, fn func(l *loadedPK) error) error {
	return a.withLoadedPKGuard(in, nil, fn)
}

// withLoadedPKGuard is withLoadedPK with guard, when not nil, the session
// that guards the PK's load from its blob (loadPK).
func (a *Agent) withLoadedPKGuard(in pkInputs, guard *tpm.PolicySession, fn func(l *loadedPK) error) (err error) {
	l := &loadedPK{state: in.state, rec: in.state.Policy, expr: in.expr, opts: in.opts, auth: in.auth}
	id := pkContextID(in)
	// The PK lives under the SRK: a provisioned state whose SRK was
	// evicted (by anyone but zeroize, which destroys the PK first) has it
	// persisted again, as provision did (tpm.PersistSRK), in a new process
	// here, in a running daemon that cached it when a command of the
	// operation meets the empty handle (tpm.PersistMissingSRK, until the
	// operation ends: unlock; found by reviews 36 to 38: a transient copy
	// made there left the SRK unpersisted, and sat beside the PK, a
	// transfer key or an AK and the EK, TPM_RC_OBJECT_MEMORY). No command
	// while it is there: it is cached.
	srk, err := a.srkForUse()
	if err != nil {
		return err
	}
	if l.pk = a.loadSavedPK(id, in.state.Name); l.pk.Handle != 0 {
		// A failure with the kept context drops it: the next operation
		// loads the PK from its blob (found by review: a context planted
		// by A1 was kept for the daemon's life); and the handles are swept
		// after it, since what the ContextLoad loaded may not be the
		// handle flushed (found by the third review: A1 passed the load
		// on and answered another handle, and the PK stayed loaded, held
		// by nobody).
		defer func() {
			if err != nil {
				a.pk = nil
				a.t.Unheld()
			}
		}()
	} else {
		blob, err := tpm.UnmarshalBlob(in.blob)
		if err != nil {
			return fmt.Errorf("PK blob: %w", err)
		}
		if in.state.Parent == nil {
			l.pk, err = a.loadPK(srk, blob, in.auth, guard)
		} else {
			l.pk, err = a.loadUnderPKParent(srk, *in.state.Parent, blob)
		}
		if err != nil {
			return err
		}
		if hex.EncodeToString(l.pk.Name.Buffer) != in.state.Name {
			return errors.Join(fmt.Errorf("%w: PK blob does not match the state's PK name", api.ErrTampered), a.t.Flush(l.pk.Handle))
		}
		a.savePK(id, l.pk)
	}
	defer a.flush(&err, l.pk.Handle)
	return fn(l)
}

// srkForUse is the SRK for an operation that uses what lives under it in
// a provisioned state (a PK, an AK): where 0x81000001 is empty it is
// persisted (tpm.PersistSRK), and so it is when a command of the operation
// meets it evicted behind the connection (tpm.PersistMissingSRK, set until
// the operation ends: unlock, which evicts it again where the state was
// wiped meanwhile, evictSRKUnowed). Every such use goes through here
// (found by review 40: the AK's creation persisted it unreported, and it
// stayed in a state another process zeroized).
func (a *Agent) srkForUse() (tpm.Object, error) {
	a.t.PersistMissingSRK(true)
	return a.t.PersistSRK()
}

// savedPK is the PK's context as the daemon keeps it between operations
// (issue 14: a PK load is a session salted to the SRK, the load and the
// session's flush, where TPM2_ContextLoad and a TPM2_ReadPublic of what it
// loaded are two commands; a warm unseal through the daemon went from 13
// commands to 12). The TPM encrypts and integrity-protects a saved context
// with a key of its own: it is useless on another TPM and after a TPM reset
// (ContextLoad fails, and the PK is loaded from its blob again), and it
// holds no authority (every use of the PK still satisfies its policy). It
// is never resident between operations, so it holds no slot and no handle
// that another client could flush or take. id binds it to the state's PK
// (its name, blob and parent). The ContextSave answer that gave it is the
// bus's word: what a ContextLoad of it gives must read back with the PK's
// name (found by review: A1 answered the save with the context of an
// object of its own, with noDA clear, and left; every later PK use failed
// its authorization, each counted toward the TPM's lockout, until
// restart), and any failure of an operation that used it drops it.
type savedPK struct {
	id  string
	ctx tpm2.TPMSContext
	obj tpm.Object // the PK as first loaded (its Public and Name; no handle)
}

// pkContextID names the PK of in: its TPM name and the digest of its blob
// and of its parent's.
func pkContextID(in pkInputs) string {
	h := sha256.New()
	h.Write(in.blob)
	if p := in.state.Parent; p != nil {
		h.Write([]byte(p.Blob))
	}
	return in.state.Name + "/" + hex.EncodeToString(h.Sum(nil))
}

// loadSavedPK loads the kept PK context when it is id's, and reads back
// what the TPM loaded: it must have the PK's name, the state's. The zero
// Object when there is none, the TPM no longer takes it, or the answer is
// not the PK's: the context is dropped and the PK loaded from its blob. A
// handle a cached key holds is a forged answer (the TPM gives a loaded
// object's handle to nothing else, as objcache.Get checks; one that is no
// transient object's the channel refuses, tpm.madeHandle), and whatever
// another name reads back at is not
// flushed as the PK (it may be provd's, or anyone's: the leak sweep
// decides), so provd never flushes what it holds as the PK's. The
// ReadPublic answer has no HMAC: A1 still on the bus can answer it too,
// and then the PK's uses fail (their HMACs bind the PK's name) and the
// context is dropped (withLoadedPK).
func (a *Agent) loadSavedPK(id, name string) tpm.Object {
	s := a.pk
	if s == nil || s.id != id {
		return tpm.Object{}
	}
	h, err := a.t.ContextLoad(s.ctx)
	if err != nil || slices.Contains(a.keys.Handles(), h) {
		a.pk = nil
		if err == nil {
			a.t.Unheld()
		}
		return tpm.Object{}
	}
	if o, err := a.t.ReadPublic(h); err != nil || hex.EncodeToString(o.Name.Buffer) != name {
		a.pk = nil
		a.t.Unheld()
		return tpm.Object{}
	}
	obj := s.obj
	obj.Handle = h
	return obj
}

// savePK keeps pk's context as id's, in the daemon only (a one-shot
// process would spend a command on a context it never uses); a PK whose
// context the TPM does not save is loaded from its blob next time.
func (a *Agent) savePK(id string, pk tpm.Object) {
	a.pk = nil
	if !a.keepOp {
		return
	}
	ctx, err := a.t.ContextSave(pk.Handle)
	if err != nil {
		return
	}
	obj := pk
	obj.Handle = 0
	a.pk = &savedPK{id: id, ctx: ctx, obj: obj}
}

// loadUnderPKParent loads a moved PK's blob under the transfer key it was
// imported under (pkState.Parent), which it loads under the SRK and
// flushes once the PK is loaded.
func (a *Agent) loadUnderPKParent(srk tpm.Object, p pkParent, blob tpm.Blob) (pk tpm.Object, err error) {
	raw, err := hex.DecodeString(p.Blob)
	if err != nil {
		return tpm.Object{}, fmt.Errorf("%w: the PK's parent in the state", api.ErrTampered)
	}
	pb, err := tpm.UnmarshalBlob(raw)
	if err != nil {
		return tpm.Object{}, fmt.Errorf("%w: the PK's parent in the state: %v", api.ErrTampered, err)
	}
	auth, err := hex.DecodeString(p.Auth)
	if err != nil || len(auth) != objectAuthSize {
		return tpm.Object{}, fmt.Errorf("%w: the PK's parent's authorization value in the state", api.ErrTampered)
	}
	defer clear(auth)
	parent, err := a.t.Load(srk, nil, pb)
	if err != nil {
		return tpm.Object{}, err
	}
	defer a.flush(&err, parent.Handle)
	if hex.EncodeToString(parent.Name.Buffer) != p.Name {
		return tpm.Object{}, fmt.Errorf("%w: the PK's parent's blob is not the recorded transfer key", api.ErrTampered)
	}
	var tk transferKey
	if p.PK == "" && parent.Public.ObjectAttributes.UserWithAuth {
		tk.user = tpm.ParentAuth{Value: auth} // a legacy T, adopted under before review 74
	} else {
		tName, err := hex.DecodeString(p.PK)
		if err != nil {
			return tpm.Object{}, fmt.Errorf("%w: the PK's parent's PK in the state", api.ErrTampered)
		}
		if tk, err = transferAuth(parent.Public, tName, auth); err != nil {
			return tpm.Object{}, err
		}
	}
	pk, err = a.t.LoadWithAuth(parent, tk.user, blob)
	return a.loadedOrFlush(pk, err)
}

// withPolicySession runs fn with a policy session that satisfies expr
// (rec explains a failure: which PCRs differ), for exactly one command (the
// TPM resets the session after use): in a key use, the operation's own
// (opSession); otherwise a fresh one, flushed after; the first error wins. Every "policy session, one command, close" in the agent goes
// through it. When the flush fails after fn loaded an object, the caller
// still owns that object and must flush it (loadedOrFlush).
func (a *Agent) withPolicySession(rec policyRecord, expr policy.Policy, opts policy.ApplyOptions, auth []byte, fn func(s tpm2.Session) error) (err error) {
	if ok, err := a.withOpPolicy(rec, expr, opts, auth, fn); ok {
		return err
	}
	start := a.t.StartAuthPolicySession
	if auth != nil {
		// Salted to the pinned SRK: its HMACs guard the command and its
		// answer, so TPM2_Load under it needs no session of its own
		// (issue 14: 2 commands). Not encrypting: the command may carry
		// its own encryption session, and takes one decrypting session
		// only (createUnderPKWith encrypts through its policy session).
		start = a.t.StartSaltedPolicySession
	}
	return a.withFreshSession(start, rec, expr, opts, auth, fn)
}

// withFreshSession runs fn with a policy session start makes (keyed by
// auth) that satisfies expr, for one command, then flushes it; the first
// error wins. A session whose command the TPM made (an authenticated
// success) is kept instead, in an audited operation, for its record's gate
// proof (tpm.PolicySession.Spare: issue 14, 2 commands).
func (a *Agent) withFreshSession(start func(auth []byte) (*tpm.PolicySession, error), rec policyRecord, expr policy.Policy, opts policy.ApplyOptions, auth []byte, fn func(s tpm2.Session) error) (err error) {
	retries := a.t.Stats().Retries
	ps, err := a.satisfy(start, rec, expr, opts, auth)
	if err != nil {
		return err
	}
	uses := ps.Uses()
	defer func() {
		end := ps.Close
		if err == nil {
			end = func() error { return ps.Spare(uses) }
		}
		if cerr := end(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	return a.policyUse(retries, fn(ps.Session()))
}

// policyUse is err, the error of the one command a policy session
// authorized once every step of its policy had passed, with a
// TPM_RC_POLICY_FAIL told apart: the platform's state is compared at the
// steps (PolicyPCR with the values, the counter's PolicyNV: their failures
// name the PCRs, explain), so at the command the TPM compares only the
// session's digest with the object's authPolicy, which is provd's. An
// honest TPM that answers a warning (RETRY, YIELDED, TESTING, NV_RATE) has
// not started the command: sent again, it meets the session as it was. A
// POLICY_FAIL after a command was sent again since the steps began (retries
// is the TPM's retry count then) means the session was used: a copy of
// the command ran and its answer was replaced with a warning, or a step
// ran twice. That is something on the bus answering for the TPM
// (ErrResponseForged), not a platform that fails the policy (found by
// review: exit 3 on a platform that satisfies it). An honest warning
// followed by a POLICY_FAIL of provd's own making (a command its own policy
// forbids, a bug) is reported the same way.
func (a *Agent) policyUse(retries int64, err error) error {
	var pe *api.PolicyError
	if err == nil || !errors.Is(err, tpm2.TPMRCPolicyFail) || errors.As(err, &pe) || a.t.Stats().Retries == retries {
		return err
	}
	return fmt.Errorf("%w: the TPM refused the policy session of a command it had accepted every step for, after a command was sent again for a warning: a copy of it ran first (%v)", tpm.ErrResponseForged, err)
}

// secretIn starts a policy session salted to the pinned SRK that also
// encrypts its command's first parameter (a secret going in), keyed by
// auth: for policies that hold PolicyAuthValue, with which the TPM keys
// both the HMAC and the encryption (tpm.TPM.StartSaltedPolicySession says
// why a policy without it cannot encrypt).
func (a *Agent) secretIn(auth []byte) (*tpm.PolicySession, error) {
	return a.t.StartSecretPolicySession(tpm.EncryptIn, auth)
}

// withPKPolicy is withPolicySession for the PK's own policy
// (officer.ObjectPolicy(P), with the objects' authValue): fn's one command,
// cc, uses the PK.
func (a *Agent) withPKPolicy(l *loadedPK, cc tpm2.TPMCC, fn func(s tpm2.Session) error) error {
	expr, opts, err := l.usePolicy(cc)
	if err != nil {
		return err
	}
	return a.withPolicySession(l.rec, expr, opts, l.auth, fn)
}

// usePolicy is the PK's policy and the options that satisfy it for a use
// of the PK by command cc (a movable PK's branch for cc, pkBranch): every
// use of the PK goes through it.
func (l *loadedPK) usePolicy(cc tpm2.TPMCC) (policy.Policy, policy.ApplyOptions, error) {
	rule, err := l.state.rule()
	if err != nil {
		return nil, policy.ApplyOptions{}, err
	}
	opts := l.opts
	expr, older := pkPolicyOf(l.expr, rule, nil, l.pk.Public.AuthPolicy.Buffer)
	if rule.set() {
		b, err := pkBranch(cc, older)
		if err != nil {
			return nil, policy.ApplyOptions{}, err
		}
		opts.Branches = []int{b}
	}
	return expr, opts, nil
}

// loadedOrFlush ends every function that returns a loaded object: with err
// nil it returns obj; otherwise it flushes obj when it was loaded and
// returns err (joined with a failed flush), so no error path leaks a slot.
func (a *Agent) loadedOrFlush(obj tpm.Object, err error) (tpm.Object, error) {
	if err == nil {
		return obj, nil
	}
	if obj.Handle != 0 {
		if ferr := a.t.Flush(obj.Handle); ferr != nil {
			err = errors.Join(err, ferr)
		}
	}
	return tpm.Object{}, err
}

// satisfy runs expr in a fresh policy session that start makes, keyed by
// auth (the objects' authValue; expr then holds PolicyAuthValue). On
// failure the session is flushed and the error says which PCRs differ.
func (a *Agent) satisfy(start func(auth []byte) (*tpm.PolicySession, error), rec policyRecord, expr policy.Policy, opts policy.ApplyOptions, auth []byte) (*tpm.PolicySession, error) {
	ps, err := start(auth)
	if err != nil {
		return nil, err
	}
	if err := a.apply(ps, rec, expr, opts); err != nil {
		return nil, errors.Join(err, ps.Close())
	}
	return ps, nil
}

// apply runs expr on a policy session that may already have served other
// commands (the TPM resets its digest after each one); a failure says which
// PCRs differ.
func (a *Agent) apply(ps *tpm.PolicySession, rec policyRecord, expr policy.Policy, opts policy.ApplyOptions) error {
	if err := expr.Apply(ps, opts); err != nil {
		return a.explain(rec, opts, err)
	}
	return nil
}

// explain turns a failed policy into a api.PolicyError naming the PCRs that differ.
func (a *Agent) explain(rec policyRecord, opts policy.ApplyOptions, err error) error {
	if errors.Is(err, policy.ErrNoSignedPolicy) {
		return &api.PolicyError{Reason: "no signed policy installed (provd policy install)", Err: err}
	}
	if !errors.Is(err, tpm.ErrPolicyNotSatisfied) {
		return err
	}
	var want policy.PCRValues
	switch {
	case rec.Kind == PolicyPCR:
		if want, err = policy.ParsePCRValues(rec.Values); err != nil {
			return err
		}
	case len(opts.Signed) > 0:
		want = opts.Signed[0].Values
	}
	pe := &api.PolicyError{Bank: want.Bank.String(), Err: err}
	if len(want.Values) > 0 {
		cur, rerr := a.t.PCRReadAuthenticated(want.Bank.Alg(), want.Indices())
		if rerr != nil {
			return errors.Join(pe, rerr)
		}
		for _, i := range want.Indices() {
			if string(cur[i]) != string(want.Values[i]) {
				pe.Differ = append(pe.Differ, i)
			}
		}
	}
	if len(pe.Differ) == 0 && rec.Kind == PolicySigned && len(opts.Signed) > 0 {
		if c, cerr := a.readCounter(); cerr == nil && c > opts.Signed[0].Version {
			pe.Reason = fmt.Sprintf("the installed signed policy (version %d) is revoked: the policy counter is at %d", opts.Signed[0].Version, c)
		}
	}
	slices.Sort(pe.Differ)
	return pe
}

// loadD loads the derivation parent under the PK (authorized by its policy).
func (a *Agent) loadD(ctx context.Context, l *loadedPK) (tpm.Object, error) {
	var dBlob []byte
	if err := a.st.View(ctx, func(tx *store.Tx) (err error) {
		dBlob, err = tx.ReadBlob(blobD)
		return err
	}); err != nil {
		return tpm.Object{}, err
	}
	blob, err := tpm.UnmarshalBlob(dBlob)
	if err != nil {
		return tpm.Object{}, fmt.Errorf("derivation parent blob: %w", err)
	}
	return a.loadUnderPK(l, blob)
}

// loadUnderPK loads blob with the PK as parent, satisfying the PK's policy.
// The caller owns the returned object; on error nothing stays loaded.
func (a *Agent) loadUnderPK(l *loadedPK, blob tpm.Blob) (tpm.Object, error) {
	var obj tpm.Object
	err := a.withPKPolicy(l, tpm2.TPMCCLoad, func(s tpm2.Session) (err error) {
		obj, err = a.t.Load(l.pk, s, blob)
		return err
	})
	return a.loadedOrFlush(obj, err)
}

// createUnderPK creates an object under the PK, satisfying the PK's policy;
// the object's authValue is the objects' (its policy ends in
// PolicyAuthValue), data its sealed data if any.
func (a *Agent) createUnderPK(l *loadedPK, tmpl tpm2.TPMTPublic, data []byte) (tpm.Blob, error) {
	return a.createUnderPKWith(l, tmpl, nil, data)
}

// createUnderPKWith is createUnderPK with the object's own authValue auth
// (nil: the objects').
func (a *Agent) createUnderPKWith(l *loadedPK, tmpl tpm2.TPMTPublic, auth, data []byte) (blob tpm.Blob, err error) {
	if auth == nil {
		auth = l.auth
	}
	// One policy session salted to the pinned SRK that also encrypts the
	// sensitive area on its way in: TPM2_Create needs no session of its
	// own (issue 14: 2 commands fewer per creation).
	expr, opts, err := l.usePolicy(tpm2.TPMCCCreate)
	if err != nil {
		return tpm.Blob{}, err
	}
	err = a.withFreshSession(a.secretIn, l.rec, expr, opts, l.auth, func(s tpm2.Session) (err error) {
		blob, err = a.t.Create(l.pk, s, tmpl, tpm.Sensitive{UserAuth: auth, Data: data})
		return err
	})
	return blob, err
}
