package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/attest"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// Module-to-module transfer (docs/transfer.md). The receiver has a
// transfer key T bound to its PK by its policy: a storage key under the
// SRK whose USER and ADMIN roles are its policy's (catalog.TransferTemplate:
// activation with the PK, import and load with T's authValue, nothing
// else). provd peer identity
// publishes T's public area with the device's EK certificates. The sender
// verifies an EK certificate against the manufacturer's roots, duplicates
// the key to T through its officer-approved duplication branch (the TPM
// checks PolicyDuplicationSelect(key, T)) with an inner wrapper, and makes
// the inner wrapper's key and the key's authValue a credential to the EK
// for T's name. Only the TPM holding that EK, with T loaded and the PK
// authorized (the receiver's provd, on a boot the PK's policy accepts),
// recovers them (TPM2_ActivateCredential): a peer identity with a T that
// is not resident in that TPM, or an EK that is not a TPM's, gets nothing
// usable. Nor does root on the receiver get the key out of its wrappers:
// T opens the outer wrapper only to import (review 74).

// transferRecord is the state record "transfer" (its blob: "transfer").
type transferRecord struct {
	Name string `json:"name"` // T's TPM name, hex
	PK   string `json:"pk"`   // the PK it lives under
	Auth string `json:"auth"` // T's authValue, hex (secret, like the PK's object_auth)
	// Parent is "srk" for a T under the SRK (every T made since PKs can
	// move: a T under a movable PK cannot be fixedTPM, and its residency
	// argument needs fixedTPM); "" for one under the PK.
	Parent    string    `json:"parent,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// transferUnderSRK is transferRecord.Parent for a T under the SRK.
const transferUnderSRK = "srk"

const transferRec = "transfer"

// legacyTransferRec is the record (and blob) of the transfer key made
// before review 74 (catalog.LegacyTransferTemplate), kept when peer
// identity makes its successor, for the keys received under it.
const legacyTransferRec = "transfer-legacy"

// credentialSecret is what the credential carries: the inner wrapper's key
// (16 bytes) and the key's authValue (32).
const credentialSecret = 16 + objectAuthSize

// readTransfer reads the transfer key's record and blob under the current
// PK; ok is false when there is none (or it belongs to a replaced PK).
func (a *Agent) readTransfer(ctx context.Context) (pk pkInputs, tr transferRecord, blob []byte, ok bool, err error) {
	return a.readTransferRec(ctx, transferRec)
}

// readTransferRec is readTransfer of record rec (transferRec, or
// legacyTransferRec).
func (a *Agent) readTransferRec(ctx context.Context, rec string) (pk pkInputs, tr transferRecord, blob []byte, ok bool, err error) {
	err = a.st.View(ctx, func(tx *store.Tx) error {
		var err error
		if pk, err = a.readPKInputs(tx); err != nil {
			return err
		}
		err = tx.Get(rec, &tr)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if blob, err = tx.ReadBlob(rec); err != nil {
			return err
		}
		ok = tr.PK == pk.state.Name
		return nil
	})
	return pk, tr, blob, ok, err
}

func (tr transferRecord) auth() ([]byte, error) {
	b, err := hex.DecodeString(tr.Auth)
	if err != nil || len(b) != objectAuthSize {
		return nil, fmt.Errorf("%w: the transfer key's authorization value in the state", api.ErrTampered)
	}
	return b, nil
}

// PeerIdentity makes the transfer key if there is none and returns what a
// peer needs to send keys here.
func (a *Agent) PeerIdentity(ctx context.Context) (api.PeerIdentity, error) {
	defer a.lock()()
	objects := map[string]string{}
	return auditedResult(ctx, a, "peer-identity", objects, func() (api.PeerIdentity, error) {
		return a.peerIdentity(ctx, objects)
	})
}

func (a *Agent) peerIdentity(ctx context.Context, objects map[string]string) (api.PeerIdentity, error) {
	pk, tr, raw, ok, err := a.readTransfer(ctx)
	if err != nil {
		return api.PeerIdentity{}, err
	}
	if pk.officer == nil {
		return api.PeerIdentity{}, errNoOfficer("receiving keys from a peer")
	}
	pkName, _ := hex.DecodeString(pk.state.Name)
	legacy := false
	if ok {
		// One made before transfer keys named their PK is made again; one
		// made before review 74 too, and kept for what came under it.
		b, err := tpm.UnmarshalBlob(raw)
		pub, perr := b.Public.Contents()
		ok = err == nil && perr == nil && catalog.IsTransferKey(*pub, pkName)
		legacy = !ok && err == nil && perr == nil && catalog.IsLegacyTransferKey(*pub, pkName)
	}
	if !ok {
		if tr, raw, err = a.newTransferKey(ctx, pk, tr.Name, legacy); err != nil {
			return api.PeerIdentity{}, err
		}
	} else if err := a.dropLegacyTransfer(ctx, pk.state.Name); err != nil {
		return api.PeerIdentity{}, err
	}
	blob, err := tpm.UnmarshalBlob(raw)
	if err != nil {
		return api.PeerIdentity{}, fmt.Errorf("transfer key blob: %w", err)
	}
	certs, err := a.ekCertificates(ctx)
	if err != nil {
		return api.PeerIdentity{}, err
	}
	objects["transfer_key"] = tr.Name
	return api.PeerIdentity{Format: api.PeerFormat, EKCertificates: certs, Parent: tpm2.Marshal(blob.Public),
		ParentName: tr.Name, PKName: pk.state.Name, PKPolicy: pk.state.Policy.Digest, Officer: officerName(pk.officer), CreatedAt: a.now().UTC()}, nil
}

// newTransferKey creates T under the SRK and records it in place of the
// one named was ("" for none), which is kept as the legacy transfer key
// when keepLegacy (one made before review 74, under which keys may have
// come) and a key lives under it. When another process recorded a transfer
// key meanwhile, that one stands and is returned, and the T made here is
// not recorded (found by review 77: two peer identities at once wrote the
// second new T over the kept legacy one, and the keys under it were lost
// for good).
func (a *Agent) newTransferKey(ctx context.Context, pk pkInputs, was string, keepLegacy bool) (transferRecord, []byte, error) {
	tr, raw, err := a.createTransferKey(pk, false)
	if err != nil {
		return transferRecord{}, nil, err
	}
	err = a.updateUnderPK(ctx, pk.state.Name, func(tx *store.Tx) (err error) {
		tr, raw, err = recordTransferKey(tx, tr, raw, was, keepLegacy)
		return err
	})
	return tr, raw, err
}

// recordTransferKey is newTransferKey's transaction: T (record tr, blob
// raw) recorded in place of the one named was, which is kept as the legacy
// transfer key when keepLegacy and a key lives under it; the transfer key
// recorded, or the one another process recorded meanwhile.
func recordTransferKey(tx *store.Tx, tr transferRecord, raw []byte, was string, keepLegacy bool) (transferRecord, []byte, error) {
	var cur transferRecord
	switch err := tx.Get(transferRec, &cur); {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return tr, raw, err
	}
	if cur.Name != was {
		raw, err := tx.ReadBlob(transferRec)
		return cur, raw, err
	}
	if keepLegacy {
		var kept transferRecord
		switch err := tx.Get(legacyTransferRec, &kept); {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return tr, raw, err
		case legacyTransferUsed(tx, kept):
			return tr, raw, fmt.Errorf("%w: the state keeps a legacy transfer key already (%.16s…), with keys under it, beside the legacy one recorded as current (%.16s…)", api.ErrTampered, kept.Name, cur.Name)
		}
		oldRaw, err := tx.ReadBlob(transferRec)
		if err != nil {
			return tr, raw, err
		}
		if err := tx.WriteBlob(legacyTransferRec, oldRaw); err != nil {
			return tr, raw, err
		}
		if err := tx.Put(legacyTransferRec, cur); err != nil {
			return tr, raw, err
		}
	}
	if err := tx.WriteBlob(transferRec, raw); err != nil {
		return tr, raw, err
	}
	if err := tx.Put(transferRec, tr); err != nil {
		return tr, raw, err
	}
	return tr, raw, dropUnusedLegacyTransfer(tx)
}

// createTransferKey creates a transfer key of the PK pk in the TPM, under
// the SRK, with an authValue of its own (a legacy one, as provd made before
// review 74, when legacy: tests of what came before), and returns its
// record and blob, not recorded.
func (a *Agent) createTransferKey(pk pkInputs, legacy bool) (transferRecord, []byte, error) {
	auth, err := tpm.RandomAuth(objectAuthSize)
	if err != nil {
		return transferRecord{}, nil, err
	}
	defer clear(auth)
	if err := a.keys.EvictResident(); err != nil {
		return transferRecord{}, nil, err
	}
	pkName, err := hex.DecodeString(pk.state.Name)
	if err != nil {
		return transferRecord{}, nil, fmt.Errorf("%w: the PK's name in the state", api.ErrTampered)
	}
	tmpl := catalog.TransferTemplate(catalog.TransferPolicy(pkName))
	if legacy {
		tmpl = catalog.LegacyTransferTemplate(catalog.ActivationPolicy(pkName))
	}
	// Under the SRK: T is fixedTPM, which no child of a movable PK can be,
	// and it is bound to the PK by its policy, not by its parent.
	srk, err := a.t.SRK()
	if err != nil {
		return transferRecord{}, nil, err
	}
	blob, err := a.t.Create(srk, nil, tmpl, tpm.Sensitive{UserAuth: auth})
	if err != nil {
		return transferRecord{}, nil, err
	}
	name, err := blob.Name()
	if err != nil {
		return transferRecord{}, nil, err
	}
	return transferRecord{Name: hex.EncodeToString(name.Buffer), PK: pk.state.Name, Auth: hex.EncodeToString(auth),
		Parent: transferUnderSRK, CreatedAt: a.now().UTC()}, blob.Marshal(), nil
}

// legacyTransferUsed reports whether a key may live under the legacy
// transfer key lt: a transferred key of lt's PK that names it as its
// parent, or names none (received before review 74), or a key record that
// does not read (it may be one: dropping T would lose it for good).
func legacyTransferUsed(tx *store.Tx, lt transferRecord) bool {
	for _, o := range tx.Objects() {
		if !strings.HasPrefix(o, keyPrefix) {
			continue
		}
		var k keyRecord
		if tx.Get(o, &k) != nil {
			return true
		}
		if k.Kind == api.KindTransferred && k.PK == lt.PK && (k.Parent == "" || k.Parent == lt.Name) {
			return true
		}
	}
	return false
}

// dropLegacyTransfer is dropUnusedLegacyTransfer in a transaction of its
// own, when the state keeps a legacy transfer key with no key under it:
// one whose last key went before review 77's mend, which kept it (found
// by review 78: nothing dropped it then).
func (a *Agent) dropLegacyTransfer(ctx context.Context, pk string) error {
	unused := false
	if err := a.st.View(ctx, func(tx *store.Tx) error {
		var lt transferRecord
		unused = tx.Get(legacyTransferRec, &lt) == nil && !legacyTransferUsed(tx, lt)
		return nil
	}); err != nil || !unused {
		return err
	}
	return a.updateUnderPK(ctx, pk, dropUnusedLegacyTransfer)
}

// transferRecorded reports whether the state holds the transfer key named
// name of the PK named pk, current or legacy.
func transferRecorded(tx *store.Tx, pk, name string) bool {
	for _, rec := range []string{transferRec, legacyTransferRec} {
		var tr transferRecord
		if tx.Get(rec, &tr) == nil && tr.PK == pk && tr.Name == name {
			return true
		}
	}
	return false
}

// dropUnusedLegacyTransfer removes the legacy transfer key (record and
// blob) once no key lives under it: kept, it loads under the SRK, and its
// value takes any duplicate once made for it out of its outer wrapper
// (TPM2_Rewrap), the same key moved again to the new T included (found by
// review 77). Against a copy of the state from before, only a new key
// helps (docs/transfer.md).
func dropUnusedLegacyTransfer(tx *store.Tx) error {
	var lt transferRecord
	switch err := tx.Get(legacyTransferRec, &lt); {
	case errors.Is(err, store.ErrNotFound):
		return nil
	case err != nil:
		return err
	}
	if legacyTransferUsed(tx, lt) {
		return nil
	}
	if err := tx.Delete(legacyTransferRec); err != nil {
		return err
	}
	if slices.Contains(tx.Blobs(), legacyTransferRec) {
		return tx.RemoveBlob(legacyTransferRec)
	}
	return nil
}

// transferKey is T loaded, with what authorizes it.
type transferKey struct {
	tpm.Object
	// user authorizes T's USER role (TPM2_Import, TPM2_Load under T).
	user tpm.ParentAuth
	// branches are T's policy's branches, which the activation's session
	// ends with (PolicyOR); nil for a legacy T, whose policy is the
	// activation's alone.
	branches [][]byte
}

// transferAuth is what authorizes transfer key pub of the PK named pkName,
// whose authValue is value (transferKey): its policy's branch by value, or
// for a legacy T its value alone. Any other key is tampering.
func transferAuth(pub tpm2.TPMTPublic, pkName, value []byte) (transferKey, error) {
	switch {
	case catalog.IsTransferKey(pub, pkName):
		branches := catalog.TransferBranches(pkName)
		return transferKey{branches: branches, user: tpm.ParentAuth{Value: value, Branch: func(ps *tpm.PolicySession, cc tpm2.TPMCC) error {
			if err := ps.PolicyAuthValue(); err != nil {
				return err
			}
			if err := ps.PolicyCommandCode(cc); err != nil {
				return err
			}
			return ps.PolicyOR(branches)
		}}}, nil
	case catalog.IsLegacyTransferKey(pub, pkName):
		return transferKey{user: tpm.ParentAuth{Value: value}}, nil
	}
	return transferKey{}, fmt.Errorf("%w: the transfer key's blob is not a transfer key of this PK", api.ErrTampered)
}

// withTransfer loads T (under the SRK, or under the PK through its policy
// for a T made before PKs could move) and runs fn with T loaded and
// authorized, and with the PK loaded when needPK (activation: T's ADMIN
// role is PolicySecret(PK)) or T is under it (l is nil otherwise); then
// flushes what it loaded.
func (a *Agent) withTransfer(pk pkInputs, tr transferRecord, raw []byte, needPK bool, fn func(l *loadedPK, t transferKey) error) error {
	auth, err := tr.auth()
	if err != nil {
		return err
	}
	defer clear(auth)
	blob, err := tpm.UnmarshalBlob(raw)
	if err != nil {
		return fmt.Errorf("transfer key blob: %w", err)
	}
	pkName, _ := hex.DecodeString(pk.state.Name)
	withT := func(l *loadedPK) (err error) {
		var t tpm.Object
		if tr.Parent == transferUnderSRK {
			var srk tpm.Object
			if srk, err = a.t.SRK(); err != nil {
				return err
			}
			t, err = a.t.Load(srk, nil, blob)
		} else {
			t, err = a.loadUnderPK(l, blob)
		}
		if err != nil {
			return err
		}
		defer a.flush(&err, t.Handle)
		if hex.EncodeToString(t.Name.Buffer) != tr.Name {
			return fmt.Errorf("%w: the transfer key's blob is not the recorded transfer key of this PK", api.ErrTampered)
		}
		tk, err := transferAuth(t.Public, pkName, auth)
		if err != nil {
			return err
		}
		tk.Object = t
		return fn(l, tk)
	}
	if !needPK && tr.Parent == transferUnderSRK {
		// Loading a key under T takes T's authValue alone: the key's own
		// policy checks the platform at use.
		return withT(nil)
	}
	return a.withLoadedPK(pk, withT)
}

// checkPeer validates a peer identity and returns the transfer key's
// public area and name. Nothing in it is trusted yet.
func checkPeer(p api.PeerIdentity) (tpm2.TPMTPublic, []byte, error) {
	return p.TransferKey()
}

// peerEK verifies the peer's EK certificates against roots and returns the
// first that chains and whose EK can receive a credential (RSA 2048 or ECC
// P-256, the TCG templates whose policy is PolicySecret(endorsement)): its
// public area as the template gives it, and its certificate's SHA-256.
func (a *Agent) peerEK(certs [][]byte, roots []byte) (tpm2.TPMTPublic, string, error) {
	return peerEK(certs, roots, a.now)
}

func peerEK(certs [][]byte, roots []byte, now func() time.Time) (tpm2.TPMTPublic, string, error) {
	if len(roots) == 0 {
		return tpm2.TPMTPublic{}, "", fmt.Errorf("%w: no manufacturer certificates to verify the peer's EK with (--ek-ca, or ek_ca in provd.yaml); a peer is never trusted on first use", api.ErrUntrustedTPM)
	}
	var errs []error
	for _, der := range certs {
		ek, err := verifyEK(der, api.IdentityRequest{EKCA: roots}, now)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := credentialEK(ek.PublicKey); err != nil {
			errs = append(errs, err)
			continue
		}
		_, pub, _, _, err := ekPublic(ek.PublicKey)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sum := sha256.Sum256(ek.Cert.Raw)
		return pub, hex.EncodeToString(sum[:]), nil
	}
	err := errors.Join(errs...)
	if !errors.Is(err, api.ErrUntrustedTPM) && !errors.Is(err, attest.ErrUntrustedEK) {
		return tpm2.TPMTPublic{}, "", err
	}
	why := strings.TrimPrefix(errs[0].Error(), api.ErrUntrustedTPM.Error()+": ")
	return tpm2.TPMTPublic{}, "", fmt.Errorf("%w: the peer's EK certificate does not chain to the manufacturer roots given, nothing was wrapped (%s)", api.ErrUntrustedTPM, why)
}

// DupExport duplicates extractable key req.Name to the peer req.Peer: only
// after its EK certificate chains to req.EKCA, and only with the crypto
// officer's approval of exactly this key to exactly the peer's transfer key,
// which the TPM checks.
func (a *Agent) DupExport(ctx context.Context, req api.DupExportRequest) (api.DupFile, error) {
	defer a.lock()()
	objects := map[string]string{"key": req.Name, "peer_transfer_key": req.Peer.ParentName}
	return auditedResult(ctx, a, "dup-export", objects, func() (api.DupFile, error) {
		return a.dupExport(ctx, req, objects)
	})
}

func (a *Agent) dupExport(ctx context.Context, req api.DupExportRequest, objects map[string]string) (api.DupFile, error) {
	return a.dupExportChecked(ctx, req, objects, checkPeer)
}

// dupExportChecked is dupExport with the peer file's transfer key checked
// by check (checkPeer).
func (a *Agent) dupExportChecked(ctx context.Context, req api.DupExportRequest, objects map[string]string, check func(api.PeerIdentity) (tpm2.TPMTPublic, []byte, error)) (api.DupFile, error) {
	if err := checkKeyName(req.Name); err != nil {
		return api.DupFile{}, err
	}
	ks, err := a.readKeyState(ctx, req.Name, true)
	if err != nil {
		return api.DupFile{}, err
	}
	if ks.rec.Kind == api.KindKEK || ks.rec.Kind == api.KindDerived || !ks.rec.Extractable {
		return api.DupFile{}, fmt.Errorf("%w: %q was not created --extractable; it never leaves its TPM", api.ErrNotExtractable, req.Name)
	}
	parentPub, parentName, err := check(req.Peer)
	if err != nil {
		return api.DupFile{}, err
	}
	rule, err := ks.rec.rule()
	if err != nil {
		return api.DupFile{}, err
	}
	officerWanted := officerName(ks.pk.officer)
	if rule.set() {
		officerWanted = req.Peer.Officer // the officer is not in such a key's policy
	}
	if req.Peer.PKPolicy != ks.pk.state.Policy.Digest || req.Peer.Officer != officerWanted {
		return api.DupFile{}, fmt.Errorf("%w: the key would not work on the peer: its policy names this device's PK policy %.16s… and officer %.16s…, the peer's are %.16s… and %.16s… (one fleet: one policy signer, or the same golden values, and one officer)",
			api.ErrNotPermitted, ks.pk.state.Policy.Digest, officerName(ks.pk.officer), req.Peer.PKPolicy, req.Peer.Officer)
	}
	if rule.To != nil && !bytes.Equal(rule.To, parentName) {
		return api.DupFile{}, fmt.Errorf("%w: %q was bound at birth to the transfer key %.16s…, not this peer's (%.16s…)", api.ErrNotPermitted, req.Name, ks.rec.DupTo, req.Peer.ParentName)
	}
	ekPub, ekSum, err := a.peerEK(req.Peer.EKCertificates, req.EKCA)
	if err != nil {
		return api.DupFile{}, err
	}
	objects["peer_ek_cert_sha256"] = ekSum
	auth, err := ks.objectAuth()
	if err != nil {
		return api.DupFile{}, err
	}
	var d tpm.Duplicated
	var pub tpm2.TPMTPublic
	err = a.withPeerParent(parentPub, func(parent tpm2.NamedHandle) error {
		return a.withDupBranch(ctx, ks, parentName, req.Approval, "--dup-to PEER.json", func(obj tpm.Object, s tpm2.Session) (err error) {
			pub = obj.Public
			d, err = a.t.Duplicate(obj, s, parent)
			return err
		})
	})
	defer clear(d.InnerKey)
	if err != nil {
		return api.DupFile{}, err
	}
	secret := append(bytes.Clone(d.InnerKey), auth...)
	defer clear(secret)
	idObject, encSecret, err := credentialTo(ekPub, parentName, secret)
	if err != nil {
		return api.DupFile{}, err
	}
	return api.DupFile{Format: api.DupFormat, Key: req.Name, Type: ks.rec.Type, Usage: ks.rec.Usage,
		Public: tpm2.Marshal(tpm2.New2B(pub)), Duplicate: d.Duplicate, Seed: d.Seed,
		CredentialBlob: idObject, CredentialSecret: encSecret, ParentName: req.Peer.ParentName,
		PKPolicy: ks.pk.state.Policy.Digest, Officer: officerName(ks.pk.officer), EKCertSHA256: ekSum,
		DupTo: ks.rec.DupTo, DupBy: ks.rec.DupBy, Approval: req.Approval, CreatedAt: a.now().UTC()}, nil
}

// withPeerParent loads a peer's transfer key's public area as the new
// parent of a TPM2_Duplicate, runs fn with it, and flushes it. The keys
// the cache holds loaded are evicted first: beside the peer's parent a
// duplication loads the key (and the PK, when the key is not cached),
// starts a session salted to the SRK (which the TPM loads into a slot) and
// loads a policy signer's key, and two resident keys left no slot for them
// (found in issue 14's work: through the daemon, a dup
// export after signs with two keys failed TPM_RC_OBJECT_MEMORY).
func (a *Agent) withPeerParent(pub tpm2.TPMTPublic, fn func(parent tpm2.NamedHandle) error) error {
	if err := a.keys.EvictResident(); err != nil {
		return err
	}
	parent, err := a.t.LoadPublic(pub)
	if err != nil {
		return err
	}
	err = fn(parent.Named())
	if ferr := a.t.Flush(parent.Handle); err == nil {
		err = ferr
	}
	return err
}

// dupApprovedBy reports whether one of approvals (the file's, the one
// given at import; nil ones skipped) is officerKey's approval of want, a
// duplication to this device's transfer key: what a receiver takes a key
// or a PK on, since nothing in a duplicate says where it came from.
func dupApprovedBy(officerKey crypto.PublicKey, want []byte, approvals ...*policy.Approval) bool {
	for _, ap := range approvals {
		if ap != nil && checkApproval(ap, officerKey, want, officer.DupRef) == nil {
			return true
		}
	}
	return false
}

// credentialTo makes secret a credential to the EK ekPub for the object
// named name (TPM2_MakeCredential in software): only that TPM, with that
// object loaded and authorized in the ADMIN role, recovers it.
func credentialTo(ekPub tpm2.TPMTPublic, name, secret []byte) (idObject, encSecret []byte, err error) {
	encap, err := tpm2.ImportEncapsulationKey(&ekPub)
	if err != nil {
		return nil, nil, err
	}
	return tpm2.CreateCredential(rand.Reader, encap, name, secret)
}

// DupImport imports a key duplicated to this device's transfer key as
// req.Name: the credential activated with the EK and T (which only this
// TPM, with T loaded by provd, can do), TPM2_Import under T with the inner
// key, and a load that proves it.
func (a *Agent) DupImport(ctx context.Context, req api.DupImportRequest) (api.KeyInfo, error) {
	defer a.lock()()
	// The origin's key name is the file's word (nothing authenticates it):
	// recorded only when it is a key name at all.
	origin := req.Dup.Key
	if checkKeyName(origin) != nil {
		origin = "invalid"
	}
	objects := map[string]string{"key": req.Name, "origin_key": origin}
	return auditedResult(ctx, a, "dup-import", objects, func() (api.KeyInfo, error) {
		return a.dupImport(ctx, req, objects)
	})
}

func (a *Agent) dupImport(ctx context.Context, req api.DupImportRequest, objects map[string]string) (_ api.KeyInfo, err error) {
	if err := checkKeyName(req.Name); err != nil {
		return api.KeyInfo{}, err
	}
	f := req.Dup
	if err := f.Check(); err != nil {
		return api.KeyInfo{}, err
	}
	ks, err := a.freshKeyState(ctx, req.Name)
	if err != nil {
		return api.KeyInfo{}, err
	}
	_, tr, traw, ok, err := a.readTransfer(ctx)
	if err != nil {
		return api.KeyInfo{}, err
	}
	if !ok {
		return api.KeyInfo{}, fmt.Errorf("%w: this device has no transfer key: run provd peer identity, and send the sender that file", api.ErrNotFound)
	}
	if f.ParentName != tr.Name {
		return api.KeyInfo{}, fmt.Errorf("%w: the duplicate was made for another transfer key (%.16s…), this device's is %.16s…", api.ErrNotPermitted, f.ParentName, tr.Name)
	}
	pub, err := api.ParsePublicArea(f.Public)
	if err != nil {
		return api.KeyInfo{}, fmt.Errorf("the duplicate's key: %w", err)
	}
	kt, usage, err := catalog.TypeOf(*pub)
	if err != nil {
		return api.KeyInfo{}, fmt.Errorf("%w: %w", api.ErrNotPermitted, err)
	}
	rule, err := keyRecord{Name: req.Name, DupTo: f.DupTo, DupBy: f.DupBy}.rule()
	if err != nil {
		return api.KeyInfo{}, fmt.Errorf("%w: the duplicate's duplication rule: %w", api.ErrBadInput, err)
	}
	if rule.To != nil && f.DupTo != tr.Name {
		return api.KeyInfo{}, fmt.Errorf("%w: the key was bound at birth to another transfer key", api.ErrNotPermitted)
	}
	cc, _ := useCommand(kt.Alg, usage)
	expr, err := keyPolicyMatching(ks.pk, keyShape{use: cc, duplicable: true, extractable: true}, rule, nil, pub.AuthPolicy.Buffer)
	if err != nil {
		return api.KeyInfo{}, err
	}
	digest, err := expr.Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		return api.KeyInfo{}, err
	}
	want := kt.CreatedTemplate(usage, digest, true)
	got := *pub
	// Set by a rule, or by the origin's movable PK (catalog.UnderMovable).
	want.ObjectAttributes.EncryptedDuplication = rule.set() || got.ObjectAttributes.EncryptedDuplication
	got.Unique = want.Unique
	want.ObjectAttributes.SensitiveDataOrigin = got.ObjectAttributes.SensitiveDataOrigin // born here or brought in at the origin
	if !bytes.Equal(tpm2.Marshal(got), tpm2.Marshal(want)) {
		return api.KeyInfo{}, fmt.Errorf("%w: the duplicated key is not an extractable %s %s key with this device's policy (the fleet's PK policy and officer)", api.ErrNotPermitted, kt.Name, usage)
	}
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		return api.KeyInfo{}, err
	}
	objects["object_name"] = hex.EncodeToString(name.Buffer)
	// Nothing in a duplicate says where it came from: anyone with the peer
	// file can make one of a key of their own with the fleet's policy
	// (found by review). The receiver takes a key only with its own
	// officer's approval of that key to its transfer key: the sender's,
	// when it was the officer's, or one given here.
	tName, _ := hex.DecodeString(tr.Name)
	wantApproval := officer.DupApproved(ks.pk.state.Policy.digest(), name.Buffer, tName)
	if !dupApprovedBy(ks.pk.officer, wantApproval, f.Approval, req.Approval) {
		return api.KeyInfo{}, fmt.Errorf("%w: this device takes a key only with its crypto officer's approval of that key to its transfer key (provd key approve --dup-to PEER.json --object-name %s; dup import --approval)", api.ErrNotPermitted, objects["object_name"])
	}
	if err := a.st.View(ctx, func(tx *store.Tx) error {
		for _, o := range tx.Objects() {
			var k keyRecord
			if !strings.HasPrefix(o, keyPrefix) || tx.Get(o, &k) != nil {
				continue
			}
			if k.Object == objects["object_name"] {
				return fmt.Errorf("%w: this device holds the key already, as %q", api.ErrKeyExists, k.Name)
			}
		}
		return nil
	}); err != nil {
		return api.KeyInfo{}, err
	}
	cert, err := a.ekCertBySum(ctx, f.EKCertSHA256)
	if err != nil {
		return api.KeyInfo{}, err
	}
	ekHandle, ekPub, ekTmpl, _, err := ekPublic(cert)
	if err != nil {
		return api.KeyInfo{}, err
	}
	if err := a.keys.EvictResident(); err != nil {
		return api.KeyInfo{}, err
	}
	var blob tpm.Blob
	var keyAuth []byte
	defer func() { clear(keyAuth) }()
	err = a.withTransfer(ks.pk, tr, traw, true, func(l *loadedPK, t transferKey) error {
		secret, err := a.activate(l, t, ekHandle, ekPub, ekTmpl, f)
		defer clear(secret)
		if err != nil {
			return err
		}
		inner := secret[:16]
		keyAuth = bytes.Clone(secret[16:])
		if bytes.IndexByte(keyAuth, 0) >= 0 {
			// provd's authValues have no zero byte (tpm.RandomAuth):
			// go-tpm would cut the HMAC key there, and the key would
			// never work.
			return fmt.Errorf("%w: the key's authorization value in the credential is not one provd makes", api.ErrTampered)
		}
		// The load proves the blob works here.
		var obj tpm.Object
		if blob, obj, err = a.t.ImportAndLoad(t.Object, t.user, *pub, tpm.Duplicated{Duplicate: f.Duplicate, Seed: f.Seed, InnerKey: inner}); err != nil {
			return err
		}
		return a.t.Flush(obj.Handle)
	})
	if err != nil {
		return api.KeyInfo{}, err
	}
	tmpl := want
	tmpl.Unique = kt.CreatedTemplate(usage, digest, true).Unique
	rec := keyRecord{Name: req.Name, Kind: api.KindTransferred, Type: kt.Name, Usage: usage, Extractable: true,
		PK: ks.pk.state.Name, Object: hex.EncodeToString(name.Buffer), Template: tpm2.Marshal(tmpl), Public: f.Public,
		Policy: hex.EncodeToString(digest), Auth: hex.EncodeToString(keyAuth), CreatedAt: a.now().UTC(),
		DupTo: f.DupTo, DupBy: f.DupBy, Parent: tr.Name}
	if err = a.commitKey(ctx, rec, blob.Marshal()); err != nil {
		return api.KeyInfo{}, err
	}
	return rec.info(), nil
}

// activate recovers what a duplicate's credential carries (the inner
// wrapper's key, then the key's authValue or the moved PK's state key):
// TPM2_ActivateCredential with this TPM's EK and T, loaded with the PK l,
// which T's policy names. The caller clears the secret.
func (a *Agent) activate(l *loadedPK, t transferKey, ekHandle tpm2.TPMHandle, ekPub, ekTmpl tpm2.TPMTPublic, f api.DupFile) ([]byte, error) {
	// T's ADMIN role, which activation needs, is its policy's:
	// PolicySecret(this PK), which only provd can satisfy, then
	// PolicyCommandCode(ActivateCredential), then T's PolicyOR (a legacy
	// T has none).
	// Salted to the SRK: satisfied here and used three commands
	// later, it must be of no use to whoever watched (found by
	// review: an unsalted one was used first by an attacker's
	// TPM2_ActivateCredential, which read the secret).
	retries := a.t.Stats().Retries
	ps, err := a.t.StartSaltedPolicySession(nil)
	if err != nil {
		return nil, err
	}
	defer ps.Close()
	if err := a.withPKPolicy(l, tpm2.TPMCCPolicySecret, func(s tpm2.Session) error { return ps.PolicySecretOf(l.pk, s) }); err != nil {
		return nil, err
	}
	if err := ps.PolicyCommandCode(tpm2.TPMCCActivateCredential); err != nil {
		return nil, err
	}
	if t.branches != nil {
		if err := ps.PolicyOR(t.branches); err != nil {
			return nil, err
		}
	}
	ek, flushEK, err := a.t.EK(ekHandle, ekPub, ekTmpl)
	if err != nil {
		return nil, err
	}
	secret, err := a.t.ActivateCredential(t.Object, ps.Session(), ek, f.CredentialBlob, f.CredentialSecret)
	err = a.policyUse(retries, err) // T's policy passed at its steps
	if ferr := flushEK(); err == nil {
		err = ferr
	}
	if err == nil && len(secret) != credentialSecret {
		err = fmt.Errorf("%w: the credential carries %d bytes, want %d", api.ErrTampered, len(secret), credentialSecret)
	}
	if err != nil {
		clear(secret)
		return nil, err
	}
	return secret, nil
}

// ekCertBySum is this TPM's EK certificate with SHA-256 sum, as a
// duplicate names the one its credential was made to, and its key: the
// copy first contact verified, which the state keeps (identityRecord.EKCert:
// issue 14, no NV_ReadPublic and NV_Read; a certificate given as a file at
// provision, which the TPM's NV does not hold, is found too), else the
// TPM's NV. A copy changed in the state has another sum, and is not taken;
// nor does the certificate vouch for anything here: its key is the EK the
// credential is opened with, in the TPM (ActivateCredential), where only
// the EK that sum's certificate names opens it.
//
// Only an EK whose policy is PolicySecret(endorsement) alone can open a
// credential here (RSA 2048, ECC P-256: credentialEK); a sum naming
// another (this TPM's P-384 EK) is refused before any TPM command (found
// by review: it failed in the TPM as a PCR policy, exit 3).
func (a *Agent) ekCertBySum(ctx context.Context, sum string) (any, error) {
	if r, ok, err := a.readIdentity(ctx); err == nil && ok && r.EKCertSHA256 == sum {
		// None kept, or a copy changed in the state (not the certificate
		// the record names): the TPM's NV, as before.
		if ek, err := r.ekCert(); err == nil && ek != nil {
			return ek.PublicKey, credentialEK(ek.PublicKey)
		}
	}
	for _, c := range tpm.EKCertIndices {
		der, err := a.t.ReadNV(c.Handle)
		if errors.Is(err, tpm.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if s := sha256.Sum256(der); hex.EncodeToString(s[:]) == sum {
			ek, err := attest.ParseEKCertificate(der)
			if err != nil {
				return nil, err
			}
			return ek.PublicKey, credentialEK(ek.PublicKey)
		}
	}
	return nil, fmt.Errorf("%w: the duplicate was made for an EK certificate this TPM does not hold (another device)", api.ErrNotPermitted)
}

// credentialEK refuses an EK that cannot receive a credential here: the
// TCG templates whose policy is PolicySecret(endorsement) alone are RSA
// 2048 and ECC P-256 (a P-384 EK's is not).
func credentialEK(key any) error {
	if k, ok := key.(*ecdsa.PublicKey); ok && k.Curve != elliptic.P256() {
		return fmt.Errorf("%w: an ECC %s EK: its policy is not PolicySecret(endorsement) alone", api.ErrNotPermitted, k.Curve.Params().Name)
	}
	return nil
}

// loadTransferred loads a key duplicated here: under the T it was
// imported under (keyRecord.Parent; the legacy T for a key that names
// none), authorized by T's value. The caller owns the returned object.
func (a *Agent) loadTransferred(ctx context.Context, ks keyState) (tpm.Object, error) {
	_, tr, traw, ok, err := a.readTransfer(ctx)
	if err != nil {
		return tpm.Object{}, err
	}
	if ok && ks.rec.Parent != tr.Name {
		// Received under a legacy T (made before review 74): kept
		// beside the current one, or still the current one.
		_, ltr, lraw, lok, err := a.readTransferRec(ctx, legacyTransferRec)
		if err != nil {
			return tpm.Object{}, err
		}
		switch {
		case lok && (ks.rec.Parent == "" || ks.rec.Parent == ltr.Name):
			tr, traw = ltr, lraw
		case ks.rec.Parent != "":
			ok = false
		}
	}
	if !ok {
		return tpm.Object{}, fmt.Errorf("%w: key %q lives under the transfer key, which the state no longer has", api.ErrNotFound, ks.rec.Name)
	}
	blob, err := tpm.UnmarshalBlob(ks.keyBlob)
	if err != nil {
		return tpm.Object{}, fmt.Errorf("key %s blob: %w", ks.rec.Name, err)
	}
	var obj tpm.Object
	err = a.withTransfer(ks.pk, tr, traw, false, func(_ *loadedPK, t transferKey) (err error) {
		obj, err = a.t.LoadWithAuth(t.Object, t.user, blob)
		return err
	})
	if err == nil && hex.EncodeToString(obj.Name.Buffer) != ks.rec.Object {
		err = fmt.Errorf("%w: key %q blob is not the recorded key", api.ErrTampered, ks.rec.Name)
	}
	return a.loadedOrFlush(obj, err)
}

// birthRuleRequest is what a new key or PK asks for its duplication rule
// (CreateRequest's and ProvisionRequest's fields of the same names), and
// the PK policy digest it is made under (the peer's must be the same).
type birthRuleRequest struct {
	PKPolicy     string
	DuplicableTo *api.PeerIdentity
	PeerPK       string
	DuplicableBy string
	EKCA         []byte
	Residency    *api.Residency
}

// birthRule is the duplication rule a new key or PK asks for (dupRule):
// bound to a peer enrolled as req.PeerPK whose EK certificate chains to
// req.EKCA, or approved by an authority; the zero rule otherwise.
func (a *Agent) birthRule(req birthRuleRequest, objects map[string]string) (dupRule, error) {
	var r dupRule
	if req.DuplicableTo != nil && req.DuplicableBy != "" {
		return r, fmt.Errorf("%w: a key is bound to a peer or approved by an authority, not both", api.ErrBadInput)
	}
	if req.DuplicableTo != nil {
		_, name, err := checkPeer(*req.DuplicableTo)
		if err != nil {
			return r, err
		}
		if err := req.DuplicableTo.EnrolledAs(req.PeerPK); err != nil {
			return r, err
		}
		if req.DuplicableTo.PKPolicy != req.PKPolicy {
			return r, fmt.Errorf("%w: the key would not work on the peer: its policy names this device's PK policy %.16s…, the peer's is %.16s…", api.ErrNotPermitted, req.PKPolicy, req.DuplicableTo.PKPolicy)
		}
		_, sum, err := a.peerEK(req.DuplicableTo.EKCertificates, req.EKCA)
		if err != nil {
			return r, err
		}
		if req.Residency == nil {
			return r, fmt.Errorf("%w: binding to a peer needs proof that its transfer key lives in its TPM: provd peer challenge (you), provd peer prove (on the peer), then --challenge and --proof", api.ErrNotPermitted)
		}
		if req.Residency.Challenge.EKCertSHA256 != sum {
			return r, fmt.Errorf("%w: the residency challenge was made to another EK certificate than the one that chains", api.ErrNotPermitted)
		}
		if err := req.Residency.Challenge.Proven(req.Residency.Proof, *req.DuplicableTo); err != nil {
			return r, err
		}
		// The caller is the verifier: which challenge it proved with is
		// on the record (found by review: the daemon cannot tell a
		// challenge of the caller's own making from the officer's).
		objects["residency_commitment"] = req.Residency.Challenge.Commitment
		objects["residency_challenge_at"] = req.Residency.Challenge.CreatedAt.UTC().Format(time.RFC3339)
		r.To = name
		objects["duplicable_to"] = hex.EncodeToString(name)
		objects["duplicable_to_ek_cert_sha256"] = sum
	}
	if req.DuplicableBy != "" {
		k, err := policy.ParsePublicKeyPEM([]byte(req.DuplicableBy))
		if err != nil {
			return r, fmt.Errorf("%w: the duplication authority's key: %v", api.ErrBadInput, err)
		}
		r.By = k
		objects["duplicable_by"] = officerName(k)
	}
	return r, nil
}
