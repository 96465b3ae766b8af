package agent

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// A movable PK (docs/transfer.md, "A movable PK"). Provisioned
// --duplicable-to PEER.json or --duplicable-by AUTHORITY.pub, with a signed
// policy and an officer, the PK has fixedTPM and fixedParent clear,
// encryptedDuplication set, and the policy PolicyOR(ObjectPolicy(P), its
// duplication branch); every use of it takes branch 0 (withPKPolicy). Its
// children have fixedTPM clear and encryptedDuplication set
// (catalog.UnderMovable), and keep fixedParent: they leave only with the
// PK. PKExport duplicates the PK to a peer's transfer key T, as DupExport
// does a key, and seals everything under it (the PK's record with its
// authValue, D, the keys) with a fresh AES-256 key that travels with the
// inner wrapper's key in the credential to the peer's EK for T. The peer
// adopts it with ProvisionFrom: its officer's approval of that PK to its T,
// activation, TPM2_Import under T, and the state is the origin's, under
// this device's identity, counter and audit trail. The same labels then
// derive the same keys.

// movedState is what travels, sealed, with a moved PK (DupFile.State).
type movedState struct {
	PK   pkState      `json:"pk"` // with its authValue; no counter gate, no parent
	D    []byte       `json:"d"`  // D's blob under the PK
	Keys []carriedKey `json:"keys"`
}

// carriedKey is one key record and its blob under the PK.
type carriedKey struct {
	Record keyRecord `json:"record"`
	Blob   []byte    `json:"blob,omitempty"`
}

// stateKeySize is the size of the key that seals a moved PK's state: with
// the inner wrapper's key (16) it fills the credential, as a key's
// authValue does for a key (credentialSecret).
const stateKeySize = credentialSecret - 16

// movedAAD binds the sealed state to the PK and the transfer key it was
// made for.
func movedAAD(pkName, parentName string) []byte {
	return []byte("provd pk move v1\x00" + pkName + "\x00" + parentName)
}

// sealMoved seals ms under key (AES-256-GCM, a random nonce before the
// ciphertext).
func sealMoved(key []byte, ms movedState, aad []byte) ([]byte, error) {
	plain, err := json.Marshal(ms)
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	gcm, err := stateGCM(key)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, gcm.NonceSize(), gcm.NonceSize()+len(plain)+gcm.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return gcm.Seal(nonce, nonce, plain, aad), nil
}

// openMoved opens a sealed state; anything changed is ErrTampered.
func openMoved(key, sealed, aad []byte) (movedState, error) {
	var ms movedState
	gcm, err := stateGCM(key)
	if err != nil {
		return ms, err
	}
	if len(sealed) < gcm.NonceSize() {
		return ms, fmt.Errorf("%w: the moved PK's state is cut short", api.ErrTampered)
	}
	plain, err := gcm.Open(nil, sealed[:gcm.NonceSize()], sealed[gcm.NonceSize():], aad)
	if err != nil {
		return ms, fmt.Errorf("%w: the moved PK's state fails authentication (changed, or made for another PK or transfer key)", api.ErrTampered)
	}
	defer clear(plain)
	if err := strictJSON(plain, &ms); err != nil {
		return ms, fmt.Errorf("%w: the moved PK's state: %v", api.ErrTampered, err)
	}
	return ms, nil
}

func stateGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// pkRule is the duplication rule a movable PK asks for at provisioning,
// checked as a key's (birthRule), refused without a signed policy and an
// officer.
func (a *Agent) pkRule(req api.ProvisionRequest, objects map[string]string) (dupRule, error) {
	if req.DuplicableTo == nil && req.DuplicableBy == "" {
		return dupRule{}, nil
	}
	if req.Signer == nil {
		return dupRule{}, fmt.Errorf("%w: a movable PK needs a signed policy (--policy-signer): a PK sealed to PCR values works only where those values are", api.ErrNotPermitted)
	}
	if req.Officer == nil {
		return dupRule{}, fmt.Errorf("%w: a movable PK needs the crypto officer (--officer-key): a peer adopts a PK only with the officer's approval", api.ErrNotPermitted)
	}
	ref, err := PolicyRef(req.PolicyClass)
	if err != nil {
		return dupRule{}, err
	}
	rec, err := newSignedRecord(req.Signer, ref) // provisionPolicy's, made again
	if err != nil {
		return dupRule{}, err
	}
	rule, err := a.birthRule(birthRuleRequest{PKPolicy: rec.Digest, DuplicableTo: req.DuplicableTo, PeerPK: req.PeerPK,
		DuplicableBy: req.DuplicableBy, EKCA: req.EKCA, Residency: req.Residency}, objects)
	if err != nil {
		return rule, err
	}
	objects["pk_movable"] = "true"
	return rule, nil
}

// movableDesc says where a movable PK may go, for results and status.
func (s pkState) movableDesc() string {
	switch {
	case s.DupTo != "":
		return "to " + s.DupTo
	case s.DupBy != "":
		k, err := policy.ParsePublicKeyPEM([]byte(s.DupBy))
		if err != nil {
			return "by an authority (unreadable key in the state)"
		}
		return "by " + officerName(k)
	}
	return ""
}

// PKExport duplicates the movable PK, with everything under it, to the
// peer req.Peer.
func (a *Agent) PKExport(ctx context.Context, req api.PKExportRequest) (api.DupFile, error) {
	defer a.lock()()
	objects := map[string]string{"peer_transfer_key": req.Peer.ParentName}
	return auditedResult(ctx, a, "pk-export", objects, func() (api.DupFile, error) {
		return a.pkExport(ctx, req, objects)
	})
}

func (a *Agent) pkExport(ctx context.Context, req api.PKExportRequest, objects map[string]string) (api.DupFile, error) {
	return a.pkExportChecked(ctx, req, objects, checkPeer)
}

// pkExportChecked is pkExport with the peer file's transfer key checked by
// check (checkPeer).
func (a *Agent) pkExportChecked(ctx context.Context, req api.PKExportRequest, objects map[string]string, check func(api.PeerIdentity) (tpm2.TPMTPublic, []byte, error)) (api.DupFile, error) {
	var in pkInputs
	ms := movedState{}
	var left []string
	if err := a.st.View(ctx, func(tx *store.Tx) (err error) {
		if in, err = a.readPKInputs(tx); err != nil {
			return err
		}
		if !in.state.movable() {
			return fmt.Errorf("%w: this device's PK was not provisioned movable (--duplicable-to or --duplicable-by); it never leaves its TPM", api.ErrNotExtractable)
		}
		if in.state.DName == "" {
			return fmt.Errorf("%w: the PK has no derivation parent yet (it is made when the first signed policy is installed: provd policy install); move it once it has, so that the peer derives the same keys", api.ErrNotPermitted)
		}
		if ms.D, err = tx.ReadBlob(blobD); err != nil {
			return err
		}
		for _, o := range tx.Objects() {
			if !strings.HasPrefix(o, keyPrefix) {
				continue
			}
			var k keyRecord
			if err := tx.Get(o, &k); err != nil {
				return err
			}
			if k.Kind == api.KindTransferred || k.PK != in.state.Name {
				left = append(left, k.Name) // under this device's transfer key, or a stale PK's
				continue
			}
			blob, err := tx.ReadBlob(o)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			ms.Keys = append(ms.Keys, carriedKey{Record: k, Blob: blob})
		}
		return nil
	}); err != nil {
		return api.DupFile{}, err
	}
	objects["pk"] = in.state.Name
	objects["keys"] = fmt.Sprint(len(ms.Keys))
	if len(left) > 0 {
		objects["keys_left"] = strings.Join(left, ",")
	}
	parentPub, parentName, err := check(req.Peer)
	if err != nil {
		return api.DupFile{}, err
	}
	if err := req.Peer.EnrolledAs(req.PeerPK); err != nil {
		return api.DupFile{}, err
	}
	if req.Peer.PKPolicy != in.state.Policy.Digest || req.Peer.Officer != officerName(in.officer) {
		return api.DupFile{}, fmt.Errorf("%w: the PK would not work on the peer: its policy %.16s… and officer %.16s… are not the peer's %.16s… and %.16s… (one fleet: one policy signer and class, one officer)",
			api.ErrNotPermitted, in.state.Policy.Digest, officerName(in.officer), req.Peer.PKPolicy, req.Peer.Officer)
	}
	rule, err := in.state.rule()
	if err != nil {
		return api.DupFile{}, err
	}
	pkName, err := hex.DecodeString(in.state.Name)
	if err != nil {
		return api.DupFile{}, fmt.Errorf("%w: the PK's name in the state", api.ErrTampered)
	}
	opts := in.opts
	switch {
	case rule.To != nil:
		if !bytes.Equal(rule.To, parentName) {
			return api.DupFile{}, fmt.Errorf("%w: the PK was bound at provisioning to the transfer key %.16s…, not this peer's (%.16s…)", api.ErrNotPermitted, in.state.DupTo, req.Peer.ParentName)
		}
	default:
		if req.Approval == nil {
			return api.DupFile{}, fmt.Errorf("%w: moving the PK needs its duplication authority's approval of it to the peer (provd key approve --officer AUTHORITY.key --pk-policy %s --dup-to PEER.json --peer-pk NAME --object-name %s)", api.ErrNotPermitted, in.state.Policy.Digest, in.state.Name)
		}
		if err := checkApproval(req.Approval, rule.By, officer.DupApproved(in.state.Policy.digest(), pkName, parentName), officer.DupRef); err != nil {
			return api.DupFile{}, err
		}
		opts.Approved = []policy.Approved{{Policy: officer.DupApprovedExpr(in.expr, pkName, parentName), Approval: req.Approval}}
	}
	ekPub, ekSum, err := a.peerEK(req.Peer.EKCertificates, req.EKCA)
	if err != nil {
		return api.DupFile{}, err
	}
	objects["peer_ek_cert_sha256"] = ekSum
	// What travels: the PK's record as it is here, but for what belongs to
	// this TPM (the policy counter's gate) or to this device's hierarchy
	// (the PK's parent here).
	ms.PK = in.state
	ms.PK.CounterGate, ms.PK.CounterGateAuth, ms.PK.Parent = "", "", nil
	if err := a.keys.EvictResident(); err != nil {
		return api.DupFile{}, err
	}
	var d tpm.Duplicated
	var pub tpm2.TPMTPublic
	err = a.withPeerParent(parentPub, func(parent tpm2.NamedHandle) error {
		return a.withLoadedPK(in, func(l *loadedPK) error {
			pub = l.pk.Public
			expr, older := pkPolicyOf(in.expr, rule, pkName, pub.AuthPolicy.Buffer)
			b, err := pkBranch(tpm2.TPMCCDuplicate, older)
			if err != nil {
				return err
			}
			opts.Branches = []int{b} // the duplication branch
			// The duplication branch ends in PolicyAuthValue (dupBranch):
			// the session encrypts the inner wrapper key on its way in.
			return a.withFreshSession(a.secretIn, in.state.Policy, expr, opts, in.auth, func(s tpm2.Session) (err error) {
				d, err = a.t.Duplicate(l.pk, s, parent)
				return err
			})
		})
	})
	defer clear(d.InnerKey)
	if err != nil {
		return api.DupFile{}, err
	}
	stateKey := make([]byte, stateKeySize)
	defer clear(stateKey)
	if _, err := rand.Read(stateKey); err != nil {
		return api.DupFile{}, err
	}
	sealed, err := sealMoved(stateKey, ms, movedAAD(in.state.Name, req.Peer.ParentName))
	if err != nil {
		return api.DupFile{}, err
	}
	secret := append(bytes.Clone(d.InnerKey), stateKey...)
	defer clear(secret)
	idObject, encSecret, err := credentialTo(ekPub, parentName, secret)
	if err != nil {
		return api.DupFile{}, err
	}
	return api.DupFile{Format: api.DupFormat, Type: api.DupTypePK, Public: tpm2.Marshal(tpm2.New2B(pub)),
		Duplicate: d.Duplicate, Seed: d.Seed, CredentialBlob: idObject, CredentialSecret: encSecret,
		ParentName: req.Peer.ParentName, PKPolicy: in.state.Policy.Digest, Officer: officerName(in.officer),
		EKCertSHA256: ekSum, DupTo: in.state.DupTo, DupBy: in.state.DupBy, Approval: req.Approval,
		State: sealed, CreatedAt: a.now().UTC()}, nil
}

// ProvisionFrom adopts the PK moved here in req.Dup, with everything under
// it, in place of this device's own PK.
func (a *Agent) ProvisionFrom(ctx context.Context, req api.PKAdoptRequest) (api.ProvisionResult, error) {
	defer a.lock()()
	objects := map[string]string{}
	return auditedResult(ctx, a, "provision-from", objects, func() (api.ProvisionResult, error) {
		return a.provisionFrom(ctx, req, objects)
	})
}

func (a *Agent) provisionFrom(ctx context.Context, req api.PKAdoptRequest, objects map[string]string) (api.ProvisionResult, error) {
	var res api.ProvisionResult
	f := req.Dup
	if err := f.Check(); err != nil {
		return res, err
	}
	if f.Type != api.DupTypePK {
		return res, fmt.Errorf("%w: not a moved PK (provd dup export --pk writes one)", api.ErrBadInput)
	}
	in, tr, traw, ok, err := a.readTransfer(ctx)
	if err != nil {
		return res, err
	}
	if !req.Force {
		// Found by review: what this device sealed under its own PK
		// (files outside the state) would silently stop unsealing.
		return res, fmt.Errorf("%w: adopting a PK replaces this device's own, and what was sealed under it no longer unseals: pass --force", api.ErrAlreadyProvisioned)
	}
	if in.officer == nil {
		return res, errNoOfficer("adopting a PK")
	}
	if !ok {
		return res, fmt.Errorf("%w: this device has no transfer key: run provd peer identity, and send the sender that file", api.ErrNotFound)
	}
	if tr.Parent != transferUnderSRK {
		return res, fmt.Errorf("%w: this device's transfer key was made under its PK by an earlier provd, and a moved PK cannot live under it: provision --force (this device holds no keys to lose), then peer identity again", api.ErrNotPermitted)
	}
	if f.ParentName != tr.Name {
		return res, fmt.Errorf("%w: the PK was sent to another transfer key (%.16s…), this device's is %.16s…", api.ErrNotPermitted, f.ParentName, tr.Name)
	}
	if f.PKPolicy != in.state.Policy.Digest || f.Officer != officerName(in.officer) {
		return res, fmt.Errorf("%w: the PK's policy and officer (%.16s…, %.16s…) are not this device's (%.16s…, %.16s…): provision this device for the same fleet (policy signer, class and officer) first",
			api.ErrNotPermitted, f.PKPolicy, f.Officer, in.state.Policy.Digest, officerName(in.officer))
	}
	if err := a.st.View(ctx, func(tx *store.Tx) error {
		var held []string
		for _, o := range tx.Objects() {
			if strings.HasPrefix(o, keyPrefix) {
				held = append(held, strings.TrimPrefix(o, keyPrefix))
			}
		}
		if len(held) > 0 {
			return fmt.Errorf("%w: adopting a PK replaces this device's, and it holds keys (%s): a device receives a PK before it has keys of its own", api.ErrNotPermitted, strings.Join(held, ", "))
		}
		return nil
	}); err != nil {
		return res, err
	}
	pub, err := api.ParsePublicArea(f.Public)
	if err != nil {
		return res, fmt.Errorf("the moved PK: %w", err)
	}
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		return res, err
	}
	pkName := hex.EncodeToString(name.Buffer)
	objects["pk"] = pkName
	rule, err := pkState{DupTo: f.DupTo, DupBy: f.DupBy}.rule()
	if err != nil || !rule.set() {
		return res, fmt.Errorf("%w: the moved PK's duplication rule", api.ErrBadInput)
	}
	// The PK must be a movable provd PK of this fleet's policy: a movable
	// PK's template with PolicyOR(ObjectPolicy(P), its duplication branch).
	expr, _ := pkPolicyOf(in.expr, rule, nil, pub.AuthPolicy.Buffer) // a PK moved by an earlier provd keeps its policy
	digest, err := expr.Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		return res, err
	}
	want := pkTemplate(digest, true)
	got := *pub
	got.Unique = want.Unique
	if !bytes.Equal(tpm2.Marshal(got), tpm2.Marshal(want)) {
		return res, fmt.Errorf("%w: the moved key is not a movable provd PK with this fleet's policy", api.ErrNotPermitted)
	}
	// Nothing in the file says where it came from: anyone with this
	// device's peer identity can make a PK of their own with the fleet's
	// policy. The device takes one only with its officer's approval of
	// that PK to its transfer key.
	tName, _ := hex.DecodeString(tr.Name)
	wantApproval := officer.DupApproved(in.state.Policy.digest(), name.Buffer, tName)
	if !dupApprovedBy(in.officer, wantApproval, f.Approval, req.Approval) {
		return res, fmt.Errorf("%w: this device adopts a PK only with its crypto officer's approval of that PK to its transfer key (provd key approve --dup-to PEER.json --peer-pk NAME --object-name %s; provision --from --approval)", api.ErrNotPermitted, pkName)
	}
	cert, err := a.ekCertBySum(ctx, f.EKCertSHA256)
	if err != nil {
		return res, err
	}
	ekHandle, ekPub, ekTmpl, _, err := ekPublic(cert)
	if err != nil {
		return res, err
	}
	if err := a.keys.EvictResident(); err != nil {
		return res, err
	}
	var pkBlob tpm.Blob
	var ms movedState
	err = a.withTransfer(in, tr, traw, true, func(l *loadedPK, t transferKey) error {
		secret, err := a.activate(l, t, ekHandle, ekPub, ekTmpl, f)
		defer clear(secret)
		if err != nil {
			return err
		}
		if ms, err = openMoved(secret[16:], f.State, movedAAD(pkName, tr.Name)); err != nil {
			return err
		}
		// Proven below: the PK loads under T, and D under it.
		pkBlob, err = a.t.ImportDuplicate(t.Object, t.user, *pub, tpm.Duplicated{Duplicate: f.Duplicate, Seed: f.Seed, InnerKey: secret[:16]})
		return err
	})
	if err != nil {
		return res, err
	}
	st, err := adoptedState(in, ms, pkName, f)
	if err != nil {
		return res, err
	}
	st.Parent = &pkParent{Name: tr.Name, Blob: hex.EncodeToString(traw), Auth: tr.Auth, PK: tr.PK}
	// The PK works here before anything is replaced: it loads under T
	// and takes its policy (D loads under it).
	next := in
	next.state, next.blob = st, pkBlob.Marshal()
	if next.auth, err = st.objectAuth(); err != nil {
		return res, err
	}
	defer clear(next.auth)
	if err := a.withLoadedPK(next, func(l *loadedPK) error {
		b, err := tpm.UnmarshalBlob(ms.D)
		if err != nil {
			return fmt.Errorf("%w: the moved derivation parent: %v", api.ErrTampered, err)
		}
		d, err := a.loadUnderPK(l, b)
		if err != nil {
			return err
		}
		return a.t.Flush(d.Handle)
	}); err != nil {
		return res, fmt.Errorf("the moved PK does not work on this device yet, nothing was replaced: %w", err)
	}
	// The state this device had: another process's zeroize meanwhile
	// leaves it wiped (found by review 40: the moved PK was written into
	// the wiped state, which then read as provisioned, and pinned nothing).
	err = a.updateUnderPK(ctx, in.state.Name, func(tx *store.Tx) error {
		for _, o := range tx.Objects() {
			if strings.HasPrefix(o, keyPrefix) {
				return fmt.Errorf("%w: this device took a key meanwhile (%s)", api.ErrNotPermitted, o)
			}
		}
		if err := tx.Put(recPK, st); err != nil {
			return err
		}
		if err := tx.WriteBlob(blobPK, next.blob); err != nil {
			return err
		}
		if err := tx.WriteBlob(blobD, ms.D); err != nil {
			return err
		}
		for _, k := range ms.Keys {
			if k.Blob != nil {
				if err := tx.WriteBlob(keyRecName(k.Record.Name), k.Blob); err != nil {
					return err
				}
			}
			if err := tx.Put(keyRecName(k.Record.Name), k.Record); err != nil {
				return err
			}
		}
		// T is now the PK's parent (in its record); a new peer identity
		// makes a new T bound to this PK.
		if err := tx.Delete(transferRec); err != nil {
			return err
		}
		if err := tx.RemoveBlob(transferRec); err != nil {
			return err
		}
		return dropUnusedLegacyTransfer(tx) // no keys here: nothing under it
	})
	if err != nil {
		// The moved PK's check kept its context (savePK): not adopted,
		// not kept (found by review 41).
		a.pk = nil
		return res, err
	}
	objects["keys"] = fmt.Sprint(len(ms.Keys))
	objects["derivation_parent"] = st.DName
	id, _, err := a.readIdentity(ctx)
	if err != nil {
		return res, err
	}
	res = api.ProvisionResult{PKName: st.Name, DName: st.DName, PolicyKind: st.Policy.Kind, PolicyDigest: st.Policy.Digest,
		TPMTrust: id.Trust, Officer: officerName(in.officer), Movable: st.movableDesc(), Adopted: true}
	return res, nil
}

// adoptedState checks the moved state against what this device knows (its
// own PK's policy and officer, the file's PK and rule) and returns the
// PK record to keep: the origin's, with this device's policy counter gate.
// Every blob in it is checked again by the TPM when it loads.
// derivedRecipe is a derived key record's recipe, checked, its type and
// its public template, under a PK of policy digest pkDigest, movable or
// not; a record whose template is not the one its recipe gives is
// tampered. The one reading of a derived record's recipe: every
// derivation (deriveObject) and a moved PK's adoption (checkCarried).
func (r keyRecord) derivedRecipe(pkDigest []byte, movable bool) (officer.Recipe, catalog.Type, tpm2.TPMTPublic, error) {
	rc, kt, err := officer.Recipe{Type: r.Type, Usage: r.Usage, Label: r.Label, Context: r.Context}.Check()
	if err != nil {
		return rc, kt, tpm2.TPMTPublic{}, fmt.Errorf("key %s: %w", r.Name, err)
	}
	rc.Movable = movable
	tmpl := officer.DerivedPublic(kt, rc.Usage, pkDigest, movable)
	if !bytes.Equal(r.Template, tpm2.Marshal(tmpl)) {
		return rc, kt, tmpl, fmt.Errorf("%w: key %q: its recorded template is not the one its recipe gives", api.ErrTampered, r.Name)
	}
	return rc, kt, tmpl, nil
}

// checkCarried holds a key record a moved PK brings to what this provd
// would have written itself for the key it names: a kind that lives under
// a movable PK (created or derived: no KEK, no import from a backup, none
// transferred; review 60), an
// approved type and one of its usages, no KCV (found by review 53: the
// origin's root edited a derived key's context into terminal control
// characters, and every key list on the receiver showed them). A key with
// a blob (created, imported): the record's public area is the blob's, and
// its type, usage, extractability and policy are the blob's public area's
// (review 57: the origin's root gave a record another public key, which
// the receiver's key pub then served as its TPM key, or another type, or
// "not extractable" on a key that is), and the key is one provd makes
// under this PK: its policy and, its point aside, its public area what
// createKey gives it (review 58: a key with userWithAuth, or a policy of
// the origin's choosing, was adopted). A derived key: the officer's
// approval of its recipe under this PK policy (movable), its template and
// policy the recipe's, not extractable, and a public area of the name the
// record gives and of the template's shape (its point is the TPM's to
// give: the first derivation holds the object to the record's name).
func (r keyRecord) checkCarried(blob *tpm.Blob, in pkInputs) error {
	pkDigest, officerKey := in.state.Policy.digest(), in.officer
	derived := false
	switch r.Kind {
	case api.KindDerived:
		derived = true
	case api.KindCreated: // created, or brought in by import-blob (imports from a backup are refused under a movable PK)
	default:
		return fmt.Errorf("kind %q", r.Kind)
	}
	kt, err := lookupType(r.Type, derived)
	if err != nil {
		return fmt.Errorf("type %q", r.Type)
	}
	if !slices.Contains(kt.Usages, r.Usage) {
		return fmt.Errorf("usage %q of type %s", r.Usage, r.Type)
	}
	if r.KCV != "" || r.Check != "" {
		return errors.New("a KEK's check value")
	}
	pub, err := r.public()
	if err != nil {
		return errors.New("its public area does not parse")
	}
	if name, err := tpm2.ObjectName(&pub); err != nil || hex.EncodeToString(name.Buffer) != r.Object {
		return errors.New("its public area is not the key it names")
	}
	if !derived {
		if r.Label != "" || r.Context != "" {
			return errors.New("a label or context on a key that is not derived")
		}
		// Only an extractable key has a duplication rule or an
		// authValue of its own, and the authValue is objectAuthSize
		// bytes (review 60: records provd never writes were adopted).
		if !r.Extractable && (r.DupTo != "" || r.DupBy != "" || r.Auth != "") {
			return errors.New("a duplication rule or an authValue on a key that is not extractable")
		}
		if b, err := hex.DecodeString(r.Auth); err != nil || (r.Auth != "" && len(b) != objectAuthSize) {
			return errors.New("its authValue")
		}
		if blob == nil || !bytes.Equal(r.Public, tpm2.Marshal(blob.Public)) {
			return errors.New("its public area is not its blob's")
		}
		got, usage, err := catalog.TypeOf(pub)
		switch {
		case err != nil || got.Name != r.Type || usage != r.Usage:
			return errors.New("its type or usage is not its key's")
		case r.Extractable == pub.ObjectAttributes.FixedParent:
			return errors.New("its extractability is not its key's")
		case r.Policy != hex.EncodeToString(pub.AuthPolicy.Buffer):
			return errors.New("its policy is not its key's")
		}
		// And the key is one provd makes under this PK (found by review
		// 58: a key of any attributes, userWithAuth or restricted among
		// them, and of any policy was adopted as the record said): the
		// policy this PK's keys get for the record's extractability and
		// duplication rule, and, its point aside, the template createKey
		// and import-blob give a key under a movable PK (a moved PK is one).
		rule, err := r.rule()
		if err != nil {
			return errors.New("its duplication rule")
		}
		expr, err := r.policyUnder(in, rule, nil)
		if err != nil {
			return err
		}
		digest, err := expr.Digest(tpm2.TPMAlgSHA256)
		if err != nil {
			return err
		}
		if r.Policy != hex.EncodeToString(digest) {
			return errors.New("its policy is not the one this PK's keys get")
		}
		want := catalog.UnderMovable(got.CreatedTemplate(usage, digest, r.Extractable), true)
		shape := pub
		shape.Unique = want.Unique
		if !bytes.Equal(tpm2.Marshal(shape), tpm2.Marshal(want)) {
			return errors.New("its public area is not one provd creates")
		}
		return nil
	}
	rc, kt, tmpl, err := r.derivedRecipe(pkDigest, true)
	if err != nil {
		return err
	}
	approved, err := officer.DeriveApproved(kt, rc, pkDigest)
	if err != nil {
		return err
	}
	if r.Approval == nil || checkApproval(r.Approval, officerKey, approved, officer.DeriveRef) != nil {
		return errors.New("no approval of its recipe by this device's officer")
	}
	if r.Policy != hex.EncodeToString(officer.ObjectPolicyDigest(pkDigest)) {
		return errors.New("its policy is not its recipe's")
	}
	if r.Extractable || r.Auth != "" || r.DupTo != "" || r.DupBy != "" {
		return errors.New("a duplication rule on a derived key")
	}
	shape := pub
	shape.Unique = tmpl.Unique
	if !bytes.Equal(tpm2.Marshal(shape), tpm2.Marshal(tmpl)) {
		return errors.New("its public area is not its template's")
	}
	return nil
}

func adoptedState(in pkInputs, ms movedState, pkName string, f api.DupFile) (pkState, error) {
	bad := func(what string) (pkState, error) {
		return pkState{}, fmt.Errorf("%w: the moved PK's state: %s", api.ErrTampered, what)
	}
	st := ms.PK
	switch {
	case st.Name != pkName:
		return bad("it names another PK")
	case st.Policy.Digest != in.state.Policy.Digest || st.Policy.Kind != in.state.Policy.Kind:
		return bad("its policy is not this device's")
	case st.Officer == "" || st.Officer != in.state.Officer:
		return bad("its officer is not this device's")
	case st.DupTo != f.DupTo || st.DupBy != f.DupBy:
		return bad("its duplication rule is not the file's")
	case st.Parent != nil || st.CounterGate != "":
		return bad("it carries another device's parent or counter")
	}
	if _, err := st.objectAuth(); err != nil {
		return pkState{}, err
	}
	d, err := tpm.UnmarshalBlob(ms.D)
	if err != nil {
		return bad("its derivation parent does not parse")
	}
	if dn, err := d.Name(); err != nil || hex.EncodeToString(dn.Buffer) != st.DName {
		return bad("its derivation parent is not the one it names")
	}
	seen := map[string]bool{}
	for _, k := range ms.Keys {
		r := k.Record
		if checkKeyName(r.Name) != nil || seen[r.Name] || r.PK != pkName || r.Kind == api.KindTransferred {
			return bad(fmt.Sprintf("key %q", r.Name))
		}
		seen[r.Name] = true
		var blob *tpm.Blob
		if k.Blob != nil {
			b, err := tpm.UnmarshalBlob(k.Blob)
			if err != nil {
				return bad(fmt.Sprintf("key %q's blob", r.Name))
			}
			if n, err := b.Name(); err != nil || hex.EncodeToString(n.Buffer) != r.Object {
				return bad(fmt.Sprintf("key %q's blob is not the key it names", r.Name))
			}
			blob = &b
		}
		if err := r.checkCarried(blob, in); err != nil {
			return bad(fmt.Sprintf("key %q: %v", r.Name, err))
		}
	}
	// D must be a movable PK's D with the officer's recipes as its policy
	// (found by review: an origin's root could have put a D of its own
	// there, whose policy restricts nothing).
	dPolicy, err := officer.DerivePolicy(in.officer).Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		return pkState{}, err
	}
	dPub, err := d.Public.Contents()
	if err != nil {
		return bad("its derivation parent does not parse")
	}
	want := st.child(dTemplate(dPolicy))
	got := *dPub
	got.Unique = want.Unique
	if !bytes.Equal(tpm2.Marshal(got), tpm2.Marshal(want)) {
		return bad("its derivation parent is not a movable PK's, with the officer's recipes as its policy")
	}
	// What this device knows stays its own: the policy record (the
	// digest is checked equal; its parts are what provd rebuilds the
	// policy from), the counter gate, the resettable choice.
	st.Policy = in.state.Policy
	st.CounterGate, st.CounterGateAuth = in.state.CounterGate, in.state.CounterGateAuth
	st.AllowResettable = in.state.AllowResettable
	return st, nil
}
