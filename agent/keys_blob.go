package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/agent/keyfile"
	"github.com/provd/provd/agent/store"
	"github.com/provd/provd/tpm"
)

// ExportKeyBlob returns a created key's TPM-wrapped blob as a "TSS2 PRIVATE
// KEY" PEM file (package keyfile). The private part stays encrypted under
// the PK: the file loads only under this TPM's PK, through the PK's policy.
// It is a backup of the blob, not an export of the key; a non-extractable
// key stays non-extractable wherever its file goes.
//
// The parent field is keyfile.ParentOwner (0x40000001): the PK is not
// persistent, and that is what tpm2_encodeobject writes for a parent that is
// not persistent, so the file is byte-for-byte what tpm2-tools makes of the
// same parts. Tools that load it must load the PK themselves (docs/keys.md).
func (a *Agent) ExportKeyBlob(ctx context.Context, name string) (out []byte, err error) {
	objects := map[string]string{"key": name}
	err = a.audited("key-export-blob", objects, func() error {
		r, err := a.keyRecord(ctx, name)
		if err != nil {
			return err
		}
		objects["object_name"] = r.Object
		if r.Kind != KindCreated {
			return fmt.Errorf("%w: %q is a derived key: it has no blob (derive it again from its label and context)", ErrNotPermitted, name)
		}
		var raw []byte
		if err := a.st.View(ctx, func(tx *store.Tx) (err error) {
			raw, err = tx.ReadBlob(keyRecName(name))
			return err
		}); err != nil {
			return err
		}
		b, err := tpm.UnmarshalBlob(raw)
		if err != nil {
			return fmt.Errorf("key %s blob: %w", name, err)
		}
		k := keyfile.Key{EmptyAuth: true, Parent: keyfile.ParentOwner,
			Public: tpm2.Marshal(b.Public), Private: tpm2.Marshal(b.Private)}
		out, err = k.EncodePEM()
		return err
	})
	return out, err
}

// ImportKeyBlob records the key in a "TSS2 PRIVATE KEY" file as key name. The
// key must be one provd would have created under this PK: an approved type
// with one usage, userWithAuth clear, and the policy provd gives such a key
// (the PK's, with a duplication branch exactly when it is extractable), so
// importing cannot smuggle in a key that skips the PCR check at use or that
// is more extractable than it says. The TPM then loads it under the PK,
// which proves it was wrapped by this PK and that its public area is intact.
func (a *Agent) ImportKeyBlob(ctx context.Context, name string, pemData []byte) (info KeyInfo, err error) {
	objects := map[string]string{"key": name}
	err = a.audited("key-import-blob", objects, func() error {
		var err error
		info, err = a.importKeyBlob(ctx, name, pemData, objects)
		return err
	})
	return info, err
}

func (a *Agent) importKeyBlob(ctx context.Context, name string, pemData []byte, objects map[string]string) (KeyInfo, error) {
	if err := checkKeyName(name); err != nil {
		return KeyInfo{}, err
	}
	kf, err := keyfile.ParsePEM(pemData)
	if err != nil {
		return KeyInfo{}, fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	blob, err := tpm.UnmarshalBlob(append(append([]byte(nil), kf.Public...), kf.Private...))
	if err != nil {
		return KeyInfo{}, fmt.Errorf("%w: key file: %v", ErrBadInput, err)
	}
	pub, err := blob.Public.Contents()
	if err != nil {
		return KeyInfo{}, fmt.Errorf("%w: key file public area: %v", ErrBadInput, err)
	}
	kt, usage, err := typeOf(*pub)
	if err != nil {
		return KeyInfo{}, err
	}
	attrs := pub.ObjectAttributes
	extractable := !attrs.FixedTPM
	switch {
	case pub.NameAlg != tpm2.TPMAlgSHA256:
		return KeyInfo{}, fmt.Errorf("%w: key file: nameAlg %v (provd keys use sha256)", ErrNotPermitted, pub.NameAlg)
	case attrs.UserWithAuth:
		return KeyInfo{}, fmt.Errorf("%w: key file: userWithAuth is set, so the key could be used without the PK's policy", ErrNotPermitted)
	case attrs.FixedTPM != attrs.FixedParent, extractable && !attrs.EncryptedDuplication:
		return KeyInfo{}, fmt.Errorf("%w: key file: fixedTPM, fixedParent and encryptedDuplication are not a combination provd creates", ErrNotPermitted)
	case attrs.Restricted:
		return KeyInfo{}, fmt.Errorf("%w: key file: a restricted key", ErrNotPermitted)
	}
	a.keys.mu.Lock()
	defer a.keys.mu.Unlock()
	ks, err := a.readKeyState(ctx, name, false)
	if err != nil {
		return KeyInfo{}, err
	}
	if ks.exists {
		return KeyInfo{}, fmt.Errorf("%w: %q", ErrKeyExists, name)
	}
	digest, err := keyPolicy(ks.pk.expr, extractable).Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		return KeyInfo{}, err
	}
	if hex.EncodeToString(pub.AuthPolicy.Buffer) != hex.EncodeToString(digest) {
		return KeyInfo{}, fmt.Errorf("%w: key file: its policy is not the one provd gives a key under this PK", ErrNotPermitted)
	}
	objName, err := blob.Name()
	if err != nil {
		return KeyInfo{}, err
	}
	rec := keyRecord{Name: name, Kind: KindCreated, Type: kt.name, Usage: usage, Extractable: extractable,
		PK: ks.pk.state.Name, Object: hex.EncodeToString(objName.Buffer), Public: tpm2.Marshal(blob.Public),
		Policy: hex.EncodeToString(digest), CreatedAt: a.now().UTC()}
	tmpl := *pub
	tmpl.Unique = kt.template(usage, nil).Unique
	rec.Template = tpm2.Marshal(tmpl)
	objects["object_name"] = rec.Object
	if err := a.keys.evictResident(a.t); err != nil {
		return KeyInfo{}, err
	}
	ks.rec, ks.keyBlob = rec, blob.Marshal()
	obj, err := a.loadCreated(ks)
	if err != nil {
		var pe *PolicyError
		if errors.As(err, &pe) {
			return KeyInfo{}, err
		}
		return KeyInfo{}, fmt.Errorf("key file does not load under this device's PK (made under another parent, or edited): %w", err)
	}
	if err := a.st.Update(ctx, func(tx *store.Tx) error {
		if _, err := tx.GetRaw(keyRecName(name)); err == nil {
			return fmt.Errorf("%w: %q", ErrKeyExists, name)
		}
		if err := tx.WriteBlob(keyRecName(name), ks.keyBlob); err != nil {
			return err
		}
		return tx.Put(keyRecName(name), rec)
	}); err != nil {
		return KeyInfo{}, errors.Join(err, a.t.Flush(obj.Handle))
	}
	a.keys.put(a.t, name, rec, obj)
	return rec.info(), nil
}
