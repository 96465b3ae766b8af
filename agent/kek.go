package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/keywrap"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/tpm"
)

// Key ceremonies as HSM custodians run them (docs/transfer.md):
//
//   - ImportKEK: an AES key-encryption key entered from custodians'
//     components, each checked against its key check value (KCV), combined
//     by XOR in memory, created in the TPM under the PK (the key bits cross
//     the bus inside the session salted to the pinned SRK) and checked
//     there: the TPM must reproduce the key's check value, AES(key, 0).
//   - ExportKey: an extractable key as PKCS#8 under AES key wrap with
//     padding (RFC 5649) with that KEK. The private part leaves the TPM only
//     through the key's duplication branch with the crypto officer's
//     approval of exactly this export (a duplicate to TPM_RH_NULL, opened
//     by provd), and goes under no KEK but the one that approval names
//     (checkExportKEK); the wrap runs block by block inside the TPM, so the
//     KEK never leaves it. The plaintext lives in provd's memory for the call.
//   - ImportKey: a PKCS#8 backup unwrapped inside the TPM and brought in
//     under the PK with TPM2_Import; not extractable unless asked.

// maxBackup bounds a wrapped key that key import takes.
const maxBackup = 8 << 10

// errKEKOnly refuses a KEK where a key that signs or decrypts is needed.
func errKEKOnly(name string) error {
	return fmt.Errorf("%w: %q is a KEK: it only wraps and unwraps key backups (provd key export/import --kek)", api.ErrNotPermitted, name)
}

// ImportKEK enters an AES KEK from custodians' components: every KCV is
// checked before the TPM sees anything, and a mismatch imports nothing
// (api.ErrKCVMismatch). The audit record names each component's KCV and
// the combined key's, never a component.
func (a *Agent) ImportKEK(ctx context.Context, req api.KEKImportRequest) (api.KeyInfo, error) {
	defer a.lock()()
	objects := map[string]string{"key": req.Name, "kcv": auditKCV(req.KCV), "components": fmt.Sprint(len(req.Components))}
	if len(req.KCVs) <= MaxComponents {
		for i, k := range req.KCVs {
			objects[fmt.Sprintf("component_%d_kcv", i+1)] = auditKCV(k)
		}
	}
	return auditedResult(ctx, a, "kek-import", objects, func() (api.KeyInfo, error) {
		return a.importKEK(ctx, req, objects)
	})
}

// MaxComponents bounds how many custodians a key is split among
// (keywrap.Combine's bound).
const MaxComponents = keywrap.MaxComponents

// auditKCV is a KCV as the audit trail records it: what the caller sent
// when it is one, "invalid" otherwise (the trail does not take arbitrary
// strings from a request).
func auditKCV(s string) string {
	if _, err := parseKCV(s); err != nil {
		return "invalid"
	}
	return strings.ToLower(strings.TrimSpace(s))
}

// parseKCV reads a KCV as custodians write it: 6 hex digits.
func parseKCV(s string) ([3]byte, error) {
	var kcv [3]byte
	b, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != len(kcv) {
		// Never the value: a custodian's slip puts a component (or part
		// of one) where the KCV goes, and this error reaches stderr and
		// the audit trail's result (review 45).
		what := ""
		if err != nil {
			what = ", not all hex digits"
		}
		return kcv, fmt.Errorf("%w: a key check value is 6 hex digits; this one is %d characters%s", api.ErrBadInput, len(strings.TrimSpace(s)), what)
	}
	copy(kcv[:], b)
	return kcv, nil
}

// CombineComponents checks each component against its KCV and the combined
// key against kcv, and returns the combined key (the caller clears it). It
// is the one check the CLI runs at entry, provd key recover runs offline and
// the agent runs again before the TPM.
func CombineComponents(components [][]byte, kcvs []string, kcv string) ([]byte, error) {
	if len(kcvs) != len(components) {
		return nil, fmt.Errorf("%w: %d components and %d key check values", api.ErrBadInput, len(components), len(kcvs))
	}
	if len(components) > MaxComponents {
		return nil, fmt.Errorf("%w: a key from at most %d components, not %d", api.ErrBadInput, MaxComponents, len(components))
	}
	for i, c := range components {
		if err := CheckComponent(i, c, kcvs[i]); err != nil {
			return nil, err
		}
	}
	want, err := parseKCV(kcv)
	if err != nil {
		return nil, err
	}
	key, err := keywrap.Combine(components)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", api.ErrBadInput, err)
	}
	if got, _ := keywrap.KCV(key); got != want {
		clear(key)
		return nil, fmt.Errorf("%w: the combined key's KCV is not the one given (a component was mistyped or swapped); nothing was imported", api.ErrKCVMismatch)
	}
	return key, nil
}

// CheckComponent checks component i (0-based) against its KCV.
func CheckComponent(i int, component []byte, kcv string) error {
	want, err := parseKCV(kcv)
	if err != nil {
		return fmt.Errorf("component %d: %w", i+1, err)
	}
	got, err := keywrap.KCV(component)
	if err != nil {
		return fmt.Errorf("%w: component %d: %w", api.ErrBadInput, i+1, err)
	}
	if got != want {
		return fmt.Errorf("%w: component %d does not match its KCV; nothing was imported", api.ErrKCVMismatch, i+1)
	}
	return nil
}

func (a *Agent) importKEK(ctx context.Context, req api.KEKImportRequest, objects map[string]string) (api.KeyInfo, error) {
	if err := checkKeyName(req.Name); err != nil {
		return api.KeyInfo{}, err
	}
	key, err := CombineComponents(req.Components, req.KCVs, req.KCV)
	if err != nil {
		return api.KeyInfo{}, err
	}
	defer clear(key)
	ks, err := a.freshKeyState(ctx, req.Name)
	if err != nil {
		return api.KeyInfo{}, err
	}
	if ks.pk.state.movable() {
		return api.KeyInfo{}, errMovableBackup // a KEK serves backups, which keys under a movable PK do not have
	}
	usage := req.Usage
	switch usage {
	case "":
		usage = catalog.UsageWrap
	case catalog.UsageWrap, catalog.UsageUnwrap:
	default:
		return api.KeyInfo{}, fmt.Errorf("%w: a KEK's usage is wrap (provd key export) or unwrap (provd key import), not %q", api.ErrBadInput, usage)
	}
	objects["usage"] = usage
	check, err := keywrap.CheckValue(key)
	if err != nil {
		return api.KeyInfo{}, err
	}
	objects["check"] = hex.EncodeToString(check[:])
	bits := 8 * len(key)
	tmpl := ks.pk.state.child(catalog.KEKTemplate(bits, usage))
	rec := keyRecord{Name: req.Name, Kind: api.KindKEK, Type: fmt.Sprintf("aes-%d", bits), Usage: usage,
		PK: ks.pk.state.Name, Template: tpm2.Marshal(tmpl), CreatedAt: a.now().UTC(),
		KCV: hex.EncodeToString(check[:3]), Check: hex.EncodeToString(check[:])}
	if err := a.keys.EvictResident(); err != nil {
		return api.KeyInfo{}, err
	}
	var blob tpm.Blob
	err = a.withLoadedPK(ks.pk, func(l *loadedPK) (err error) {
		if blob, err = a.createUnderPK(l, tmpl, key); err != nil {
			return err
		}
		// The TPM's own check of what it holds: the custodians' key, or
		// nothing is recorded.
		obj, err := a.loadUnderPK(l, blob)
		if err != nil {
			return err
		}
		defer a.flush(&err, obj.Handle)
		return a.withKEKBlock(obj, l.auth, func(b keywrap.Block) error {
			return checkKEK(b, rec, api.ErrKCVMismatch)
		})
	})
	if err != nil {
		return api.KeyInfo{}, err
	}
	return a.commitBlobKey(ctx, rec, blob, objects)
}

// withKEKBlock runs fn with the loaded KEK obj as a keywrap.Block (one HMAC
// session salted to the SRK, keyed by auth) and closes the session.
func (a *Agent) withKEKBlock(obj tpm.Object, auth []byte, fn func(b keywrap.Block) error) (err error) {
	b, err := a.t.KEKBlock(obj, auth)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := b.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	return fn(b)
}

// checkKEK has the TPM prove that the KEK b holds is the custodians': a
// wrapping KEK encrypts the zero block to the recorded check value, an
// unwrapping one decrypts the check value to the zero block (128 bits,
// where a KCV has 24). A mismatch is sentinel (a KCV mismatch at import; a
// KEK swapped in the state, later).
func checkKEK(b keywrap.Block, rec keyRecord, sentinel error) error {
	want, err := hex.DecodeString(rec.Check)
	if err != nil || len(want) != 16 {
		return fmt.Errorf("%w: KEK %q has no check value in the state", api.ErrTampered, rec.Name)
	}
	// The KCV shown (key list, the audit) is the check value's head: one
	// cannot be changed without the other showing (found by review: a
	// KEK swapped with its check value kept the custodians' KCV).
	if hex.EncodeToString(want[:3]) != rec.KCV {
		return fmt.Errorf("%w: KEK %q's check value is not its KCV's", api.ErrTampered, rec.Name)
	}
	var block [16]byte
	var zero [16]byte
	ok := false
	switch rec.Usage {
	case catalog.UsageWrap:
		err = b.Encrypt(block[:], zero[:])
		ok = bytes.Equal(block[:], want)
	case catalog.UsageUnwrap:
		err = b.Decrypt(block[:], want)
		ok = block == zero
	default:
		return fmt.Errorf("%w: KEK %q of usage %q", api.ErrTampered, rec.Name, rec.Usage)
	}
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: the key in the TPM for KEK %q is not the custodians' (KCV %s): its check value differs", sentinel, rec.Name, rec.KCV)
	}
	return nil
}

// kekState reads KEK name and checks that it is one, of usage, of at least
// minBits.
func (a *Agent) kekState(ctx context.Context, name, usage string, minBits int) (keyState, int, error) {
	if err := checkKeyName(name); err != nil {
		return keyState{}, 0, err
	}
	ks, err := a.readKeyState(ctx, name, true)
	if err != nil {
		return ks, 0, err
	}
	if ks.rec.Kind != api.KindKEK {
		return ks, 0, fmt.Errorf("%w: %q is not a KEK (provd kek import makes one)", api.ErrBadInput, name)
	}
	bits := 0
	switch ks.rec.Type {
	case "aes-128":
		bits = 128
	case "aes-256":
		bits = 256
	default:
		return ks, 0, fmt.Errorf("%w: KEK %q of type %q", api.ErrTampered, name, ks.rec.Type)
	}
	if bits < minBits {
		return ks, 0, fmt.Errorf("%w: KEK %q is AES-%d, and this key needs a KEK at least as strong as itself: AES-%d", api.ErrNotPermitted, name, bits, minBits)
	}
	if ks.rec.Usage != usage {
		return ks, 0, fmt.Errorf("%w: KEK %q is for %s, this needs one for %s (provd kek import --usage %s: a KEK that wraps cannot open a backup, and one that unwraps cannot make one)", api.ErrNotPermitted, name, ks.rec.Usage, usage, usage)
	}
	return ks, bits, nil
}

// withKEK loads KEK ks and runs fn with it as a Block, then flushes it. The
// KEK's public area must be exactly a KEK's of its usage (fixed to this TPM,
// ECB, one direction), and the TPM must show that it holds the custodians'
// key (checkKEK): a KEK swapped in the state for one of the attacker's is
// refused (found by review), and the audit record names the KEK object.
func (a *Agent) withKEK(ks keyState, bits int, objects map[string]string, fn func(b keywrap.Block) error) (err error) {
	if err := a.keys.EvictResident(); err != nil {
		return err
	}
	obj, err := a.loadCreated(ks)
	if err != nil {
		return err
	}
	defer a.flush(&err, obj.Handle)
	want := ks.pk.state.child(catalog.KEKTemplate(bits, ks.rec.Usage))
	got := obj.Public
	got.Unique = want.Unique // the TPM's digest of the key
	if !bytes.Equal(tpm2.Marshal(got), tpm2.Marshal(want)) {
		return fmt.Errorf("%w: KEK %q's public area is not a KEK's", api.ErrTampered, ks.rec.Name)
	}
	objects["kek_object"] = hex.EncodeToString(obj.Name.Buffer)
	objects["kek_kcv"] = ks.rec.KCV
	return a.withKEKBlock(obj, ks.pk.auth, func(b keywrap.Block) error {
		if err := checkKEK(b, ks.rec, api.ErrTampered); err != nil {
			return err
		}
		return fn(b)
	})
}

// ExportKey writes extractable key req.Name as PKCS#8 PrivateKeyInfo under
// AES key wrap with padding with KEK req.KEK, with the crypto officer's
// approval of this export under this KEK: the TPM checks its duplication
// part (PolicyAuthorize in the key's duplication branch), checkExportKEK
// its KEK part. A key created without --extractable has no such branch and
// is refused before the TPM is asked.
func (a *Agent) ExportKey(ctx context.Context, req api.KeyExportRequest) ([]byte, error) {
	defer a.lock()()
	objects := map[string]string{"key": req.Name, "kek": req.KEK}
	return auditedResult(ctx, a, "key-export", objects, func() ([]byte, error) {
		return a.exportKey(ctx, req, objects)
	})
}

// errMovableBackup refuses PKCS#8 backups on a device whose PK is movable:
// every duplicable object under it carries encryptedDuplication (the TPM
// requires it, catalog.UnderMovable), so the TPM refuses a duplicate to
// TPM_RH_NULL (an export), and TPM2_Import of a key into it needs an inner
// wrapper, which provd does not make in software. The PK itself moves, to a
// peer TPM: it is the backup of every key under it.
var errMovableBackup = fmt.Errorf("%w: this device's PK is movable, and under it every key carries encryptedDuplication, so the TPM neither exports one as a backup nor imports one from a backup; the PK itself moves to a backup TPM (provd dup export --pk), with every key under it", api.ErrNotPermitted)

func (a *Agent) exportKey(ctx context.Context, req api.KeyExportRequest, objects map[string]string) ([]byte, error) {
	if err := checkKeyName(req.Name); err != nil {
		return nil, err
	}
	ks, err := a.readKeyState(ctx, req.Name, true)
	if err != nil {
		return nil, err
	}
	if ks.rec.Kind == api.KindKEK {
		return nil, fmt.Errorf("%w: %q is a KEK, which never leaves its TPM", api.ErrNotExtractable, req.Name)
	}
	if !ks.rec.Extractable {
		return nil, fmt.Errorf("%w: %q was not created --extractable; it never leaves its TPM", api.ErrNotExtractable, req.Name)
	}
	if ks.pk.state.movable() {
		return nil, errMovableBackup
	}
	kt, err := lookupType(ks.rec.Type, false)
	if err != nil {
		return nil, err
	}
	pub, err := ks.rec.public()
	if err != nil {
		return nil, err
	}
	if ks.rec.DupTo != "" || ks.rec.DupBy != "" {
		return nil, fmt.Errorf("%w: %q was born to move to peers only (--duplicable-to or --duplicable-by): it is never backed up", api.ErrNotPermitted, req.Name)
	}
	if pub.ObjectAttributes.EncryptedDuplication {
		return nil, fmt.Errorf("%w: %q was created by an earlier provd with encryptedDuplication, which refuses a backup export; it can still move to a peer TPM", api.ErrNotPermitted, req.Name)
	}
	kek, bits, err := a.kekState(ctx, req.KEK, catalog.UsageWrap, kt.MinKEKBits())
	if err != nil {
		return nil, err
	}
	if err := checkExportKEK(ks, kek, req.Approval); err != nil {
		return nil, err
	}
	var sens *tpm2.TPMTSensitive
	var pub2 tpm2.TPMTPublic
	err = a.withDupBranch(ctx, ks, officer.ExportParent, req.Approval.Duplication, "--export", func(obj tpm.Object, s tpm2.Session) (err error) {
		pub2 = obj.Public
		sens, err = a.t.ExportSensitive(obj, s)
		return err
	})
	defer tpm.ClearSensitive(sens)
	if errors.Is(err, tpm.ErrDuplicate) {
		return nil, fmt.Errorf("%w: key %q: %w", api.ErrTampered, req.Name, err)
	}
	if err != nil {
		return nil, err
	}
	priv, err := catalog.PrivateKey(pub2, sens)
	if err != nil {
		return nil, fmt.Errorf("%w: key %q: %w", api.ErrTampered, req.Name, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	defer clear(der)
	var out []byte
	err = a.withKEK(kek, bits, objects, func(b keywrap.Block) (err error) {
		out, err = keywrap.WrapBlock(b, der)
		return err
	})
	return out, err
}

// checkExportKEK verifies, before the TPM is asked, that ap is the crypto
// officer's approval of key ks's export under KEK kek: both its parts
// present, and its KEK part the officer's signature of kek's TPM name for
// this export (officer.ExportKEKApproved). The duplication part the TPM
// checks, and withDupBranch before it. The name is the record's, which
// withKEK's load holds the TPM's object to (loadCreated).
func checkExportKEK(ks, kek keyState, ap *api.ExportApproval) error {
	if ks.pk.officer == nil {
		return errNoOfficer("exporting a key")
	}
	if ap == nil || ap.Duplication == nil || ap.KEK == nil {
		return fmt.Errorf("%w: exporting %q under KEK %q needs the crypto officer's approval of that export under that KEK (provd key approve --export --object-name %s --kek-object-name %s)", api.ErrNotPermitted, ks.rec.Name, kek.rec.Name, ks.rec.Object, kek.rec.Object)
	}
	objName, err1 := hex.DecodeString(ks.rec.Object)
	kekName, err2 := hex.DecodeString(kek.rec.Object)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("%w: key %q's or KEK %q's object name", api.ErrTampered, ks.rec.Name, kek.rec.Name)
	}
	if err := checkApproval(ap.KEK, ks.pk.officer, officer.ExportKEKApproved(ks.pk.state.Policy.digest(), objName, kekName), officer.ExportKEKRef); err != nil {
		return fmt.Errorf("%w (the officer's approval names the KEK a backup goes under: this one is not of %q's export under KEK %q, TPM name %s)", err, ks.rec.Name, kek.rec.Name, kek.rec.Object)
	}
	return nil
}

// ImportKey brings a PKCS#8 backup wrapped under KEK req.KEK into the TPM
// under the PK as key req.Name: unwrapped inside the TPM (a wrong KEK or a
// changed file fails the wrap's integrity check and imports nothing), then
// TPM2_Import. The TPM requires an imported key's fixedTPM and fixedParent
// clear; whether it can leave again is its policy's say: a duplication
// branch only with req.Extractable.
func (a *Agent) ImportKey(ctx context.Context, req api.KeyImportRequest) (api.KeyInfo, error) {
	defer a.lock()()
	objects := map[string]string{"key": req.Name, "kek": req.KEK, "extractable": fmt.Sprint(req.Extractable)}
	return auditedResult(ctx, a, "key-import", objects, func() (api.KeyInfo, error) {
		return a.importKey(ctx, req, objects)
	})
}

func (a *Agent) importKey(ctx context.Context, req api.KeyImportRequest, objects map[string]string) (api.KeyInfo, error) {
	if err := checkKeyName(req.Name); err != nil {
		return api.KeyInfo{}, err
	}
	if err := keywrap.CheckWrapped(req.Wrapped); err != nil {
		return api.KeyInfo{}, fmt.Errorf("%w: %w", api.ErrBadInput, err)
	}
	if len(req.Wrapped) > maxBackup {
		// Every block costs a TPM command: a 64 KiB file would hold the
		// TPM for 49,000 of them before failing (found by review).
		return api.KeyInfo{}, fmt.Errorf("%w: a key backup is at most %d bytes (an RSA-4096 PKCS#8 key wraps to about 2,400), not %d", api.ErrBadInput, maxBackup, len(req.Wrapped))
	}
	ks, err := a.freshKeyState(ctx, req.Name)
	if err != nil {
		return api.KeyInfo{}, err
	}
	if req.Extractable && ks.pk.officer == nil {
		return api.KeyInfo{}, errNoOfficer("an extractable key")
	}
	if ks.pk.state.movable() {
		return api.KeyInfo{}, errMovableBackup
	}
	kek, bits, err := a.kekState(ctx, req.KEK, catalog.UsageUnwrap, 0)
	if err != nil {
		return api.KeyInfo{}, err
	}
	var der []byte
	err = a.withKEK(kek, bits, objects, func(b keywrap.Block) (err error) {
		der, err = keywrap.UnwrapBlock(b, req.Wrapped)
		return err
	})
	defer clear(der)
	if errors.Is(err, keywrap.ErrIntegrity) {
		return api.KeyInfo{}, fmt.Errorf("not a key wrapped under KEK %q (KCV %s), or the file was changed: %w", req.KEK, kek.rec.KCV, err)
	}
	if err != nil {
		return api.KeyInfo{}, err
	}
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return api.KeyInfo{}, fmt.Errorf("%w: the unwrapped key is not PKCS#8 (RFC 5208/5958)", api.ErrBadInput)
	}
	kt, sens, unique, err := catalog.FromPrivate(priv)
	defer tpm.ClearSensitive(sens)
	if err != nil {
		return api.KeyInfo{}, fmt.Errorf("%w: %w", api.ErrNotPermitted, err)
	}
	if bits < kt.MinKEKBits() {
		return api.KeyInfo{}, fmt.Errorf("%w: a %s key wrapped under an AES-%d KEK, weaker than the key (AES-%d at least)", api.ErrNotPermitted, kt.Name, bits, kt.MinKEKBits())
	}
	usage, err := kt.Usage(req.Usage)
	if err != nil {
		return api.KeyInfo{}, fmt.Errorf("%w: %w", api.ErrBadInput, err)
	}
	// Imported: fixedParent clear whether or not it may leave (the TPM
	// requires it of TPM2_Import), so its use branch is bound too.
	cc, _ := useCommand(kt.Alg, usage)
	expr, err := keyPolicyShaped(ks.pk, keyShape{use: cc, duplicable: true, extractable: req.Extractable}, dupRule{}, nil)
	if err != nil {
		return api.KeyInfo{}, err
	}
	digest, err := expr.Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		return api.KeyInfo{}, err
	}
	tmpl := kt.CreatedTemplate(usage, digest, true)
	tmpl.ObjectAttributes.SensitiveDataOrigin = false
	rec := keyRecord{Name: req.Name, Kind: api.KindImported, Type: kt.Name, Usage: usage, Extractable: req.Extractable,
		PK: ks.pk.state.Name, Template: tpm2.Marshal(tmpl), Policy: hex.EncodeToString(digest), CreatedAt: a.now().UTC()}
	tmpl.Unique = unique
	auth := ks.pk.auth
	if req.Extractable { // its own, which travels with it
		if auth, err = tpm.RandomAuth(objectAuthSize); err != nil {
			return api.KeyInfo{}, err
		}
		defer clear(auth)
		rec.Auth = hex.EncodeToString(auth)
	}
	sens.AuthValue = tpm2.TPM2BAuth{Buffer: bytes.Clone(auth)}
	seed := make([]byte, 32)
	if _, err := rand.Read(seed); err != nil {
		return api.KeyInfo{}, err
	}
	sens.SeedValue = tpm2.TPM2BDigest{Buffer: seed}
	if err := a.keys.EvictResident(); err != nil {
		return api.KeyInfo{}, err
	}
	var blob tpm.Blob
	err = a.withLoadedPK(ks.pk, func(l *loadedPK) (err error) {
		err = a.withPKPolicy(l, tpm2.TPMCCImport, func(s tpm2.Session) (err error) {
			blob, err = a.t.ImportSensitive(l.pk, s, tmpl, sens)
			return err
		})
		if err != nil {
			return err
		}
		// Loading proves the TPM took it under this PK.
		obj, err := a.loadUnderPK(l, blob)
		if err != nil {
			return err
		}
		return a.t.Flush(obj.Handle)
	})
	if err != nil {
		return api.KeyInfo{}, err
	}
	return a.commitBlobKey(ctx, rec, blob, objects)
}
