package agent

import (
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/attest"
	"github.com/provd/provd/internal/pemblock"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// TPMIdentity establishes who the TPM is, at first contact: the EK
// certificate (from NV, or req.EKCert for a TPM that keeps none), verified
// against the manufacturer certificates in req.EKCA (or, with
// req.TrustOnFirstUse, taken on trust and said so); the EK's public key
// from that certificate, never from the bus; and the SRK as the TPM states
// it through a session salted to that key, so that its response HMAC
// authenticates it. An interposer that substitutes the EK makes the
// session fail; one that substitutes the SRK's public fails the response
// HMAC. It changes nothing in the TPM but a transient EK where none is
// persistent.
func (a *Agent) TPMIdentity(ctx context.Context, req api.IdentityRequest) (api.Identity, error) {
	defer a.lock()()
	id, _, err := a.establish(req)
	return id, err
}

// establish is TPMIdentity's work; it also returns the authenticated SRK, for
// provision to pin.
func (a *Agent) establish(req api.IdentityRequest) (id api.Identity, srk tpm.Object, err error) {
	return Establish(a.t, req, a.now)
}

// Establish authenticates the TPM t as first contact does (TPMIdentity),
// with no state: the EK certificate verified against req, the SRK created
// through a session salted to the certified EK. It returns the identity and
// the authenticated SRK, which the caller pins (t.PinSRK) so that what
// follows is authenticated too: the firmware anchor's ceremony on a device
// that may never have been provisioned.
func Establish(t *tpm.TPM, req api.IdentityRequest, now func() time.Time) (id api.Identity, srk tpm.Object, err error) {
	der, source, err := ekCertificate(t, req.EKCert)
	if err != nil {
		return id, srk, err
	}
	id.EKCertSource, id.EKCert = source, der
	sum := sha256.Sum256(der)
	id.EKCertSHA256 = hex.EncodeToString(sum[:])

	ek, err := verifyEK(der, req, now)
	if err != nil {
		return id, srk, err
	}
	id.Trust = api.TrustOnFirstUse
	if ek.Chain != nil {
		id.Trust = api.TrustManufacturer
		for _, c := range ek.Chain[1:] {
			id.Chain = append(id.Chain, c.Subject.String())
		}
	}
	id.Subject, id.Issuer = ek.Cert.Subject.String(), ek.Cert.Issuer.String()
	id.Manufacturer, id.Model, id.Version = ek.Manufacturer, ek.Model, ek.Version

	handle, pub, template, keyName, err := ekPublic(ek.PublicKey)
	if err != nil {
		return id, srk, err
	}
	id.EKKey = keyName
	srk, err = t.AuthenticatedSRK(handle, pub, template)
	switch {
	case errors.Is(err, tpm2.TPMRCValue):
		// The salt did not decrypt: the key at the EK's handle is not the
		// certified key (another TPM, or an interposer's key).
		return id, srk, fmt.Errorf("%w: the TPM's EK is not the certified key: %w", api.ErrUntrustedTPM, err)
	case errors.Is(err, tpm.ErrResponseForged), errors.Is(err, tpm.ErrIdentityMismatch):
		// The TPM (or the bus) presents another EK than the certified
		// key, or the TPM derived another session key from the salt.
		return id, srk, fmt.Errorf("%w: %w", api.ErrUntrustedTPM, err)
	case err != nil:
		return id, srk, err
	}
	id.SRKName = hex.EncodeToString(srk.Name.Buffer)
	if persisted, err := t.ReadPublic(tpm.SRKHandle); err == nil {
		id.SRKPersistent = string(persisted.Name.Buffer) == string(srk.Name.Buffer)
	} else if !errors.Is(err, tpm.ErrNotFound) {
		return id, srk, err
	}
	return id, srk, nil
}

// recIdentity is the manifest record that pins the TPM provd was provisioned
// on (identityRecord).
const recIdentity = "identity"

// identityRecord is the TPM's identity as established at first contact: the
// SRK public area it authenticated, which every later session is salted to
// and the persistent SRK is checked against, and how the EK was trusted.
type identityRecord struct {
	SRKPublic    []byte `json:"srk_public"` // TPMT_PUBLIC
	SRKName      string `json:"srk_name"`
	EKCertSHA256 string `json:"ek_cert_sha256"`
	// EKCert is the certificate first contact verified (DER; absent in a
	// state pinned before it was kept): ekCertBySum takes it where a
	// read of the TPM's NV took two commands, or found none for a
	// certificate given as a file.
	EKCert []byte    `json:"ek_cert,omitempty"`
	Trust  string    `json:"trust"`
	At     time.Time `json:"established_at"`
}

// ekCert is the EK certificate first contact kept, nil when there is none
// (a state pinned before it was kept); ErrTampered when the bytes are not
// the certificate the record names (ek_cert_sha256) or not a certificate
// (found by review: another TPM's certificate put there was presented as
// this device's where NV holds none). A4 rewriting both fields is not
// caught here: the device then names another TPM's EK, and nothing made
// for that EK opens in this TPM (docs/threat-model.md).
func (r identityRecord) ekCert() (*attest.EKCertificate, error) {
	if len(r.EKCert) == 0 {
		return nil, nil
	}
	if s := sha256.Sum256(r.EKCert); hex.EncodeToString(s[:]) != r.EKCertSHA256 {
		return nil, fmt.Errorf("%w: the identity record's EK certificate is not the one it names (ek_cert_sha256)", api.ErrTampered)
	}
	c, err := attest.ParseEKCertificate(r.EKCert)
	if err != nil {
		return nil, fmt.Errorf("%w: the identity record's EK certificate: %v", api.ErrTampered, err)
	}
	return c, nil
}

// public is the pinned SRK's public area; a record whose area does not give
// its name is ErrTampered.
func (r identityRecord) public() (tpm2.TPMTPublic, error) {
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](r.SRKPublic)
	if err != nil {
		return tpm2.TPMTPublic{}, fmt.Errorf("%w: identity record: %v", api.ErrTampered, err)
	}
	name, err := tpm2.ObjectName(pub)
	if err != nil || hex.EncodeToString(name.Buffer) != r.SRKName {
		return tpm2.TPMTPublic{}, fmt.Errorf("%w: identity record: the SRK public area is not the recorded name's", api.ErrTampered)
	}
	return *pub, nil
}

// readIdentity returns the pinned identity, if the state has one.
func (a *Agent) readIdentity(ctx context.Context) (identityRecord, bool, error) {
	var r identityRecord
	err := a.st.View(ctx, func(tx *store.Tx) error { return tx.Get(recIdentity, &r) })
	if errors.Is(err, store.ErrNotFound) {
		return r, false, nil
	}
	return r, err == nil, err
}

// errNotPinned refuses an operation on a provisioned state that pins no
// TPM identity (provisioned before provd pinned it, or its record deleted):
// its sessions would be salted to whatever the bus says the SRK is, and an
// interposer that answers with its own key reads every secret they carry
// (agent.TestFullInterposer). Only first contact gets out of it.
var errNotPinned = fmt.Errorf("%w: the state is provisioned but pins no TPM identity (provisioned before provd pinned it, "+
	"or its identity record was removed), so provd cannot tell the TPM from something on the bus answering for it and "+
	"refuses every operation that loads, creates or uses keys or secrets; run `provd provision --force --ek-ca BUNDLE` "+
	"(or --trust-on-first-use on a bench you control) to establish and pin the TPM's identity: it provisions a new PK, "+
	"and what was sealed or kept under the old one is lost", api.ErrUntrustedTPM)

// requirePinned is errNotPinned when the state in tx records no identity.
// Every path that loads the PK calls it (readPKInputs), before any TPM
// command.
func requirePinned(tx *store.Tx) error {
	var r identityRecord
	err := tx.Get(recIdentity, &r)
	if errors.Is(err, store.ErrNotFound) {
		return errNotPinned
	}
	return err
}

// pinIdentity pins the SRK the state records into the TPM connection, so
// that every session is salted to it, and checks the persistent SRK against
// it at once: on another TPM nothing of the state is used, the audit trail
// included. A state without one pins nothing.
func (a *Agent) pinIdentity(ctx context.Context) (identityRecord, bool, error) {
	r, ok, err := a.readIdentity(ctx)
	if err != nil || !ok {
		return r, ok, err
	}
	pub, err := r.public()
	if err != nil {
		return r, ok, err
	}
	if err := a.t.PinSRK(pub); err != nil {
		return r, ok, err
	}
	_, err = a.t.SRK()
	return r, ok, err
}

// ReadPCRs reads PCRs for an operator (provd tpm pcr read: the values golden
// policies are signed over). With the TPM's identity pinned by the state they
// are read in an audit session salted to the pinned SRK, whose response HMAC
// covers them, and authenticated is true; without, they are the bus's word
// (found by review: an interposer on a reference device chose the values an
// operator then signed for the whole fleet).
func (a *Agent) ReadPCRs(ctx context.Context, bank policy.Bank, pcrs []int) (vals map[int][]byte, authenticated bool, err error) {
	defer a.lock()()
	if a.t.PinnedSRKName() == nil {
		vals, err = a.t.PCRRead(bank.Alg(), pcrs)
		return vals, false, err
	}
	vals, err = a.t.PCRReadAuthenticated(bank.Alg(), pcrs)
	return vals, err == nil, err
}

// firstContact establishes and pins the TPM's identity for provisioning,
// unless the state pins one already (provision --force keeps its TPM).
func (a *Agent) firstContact(ctx context.Context, req api.IdentityRequest) (identityRecord, error) {
	r, ok, err := a.pinIdentity(ctx)
	if err != nil || ok {
		return r, err
	}
	id, srk, err := a.establish(req)
	if err != nil {
		return r, err
	}
	r = identityRecord{SRKPublic: tpm2.Marshal(srk.Public), SRKName: id.SRKName, EKCertSHA256: id.EKCertSHA256,
		EKCert: id.EKCert, Trust: id.Trust, At: a.now().UTC()}
	return r, PinEstablished(a.t, id, srk)
}

// PinEstablished pins srk, the SRK Establish authenticated as id: seen at
// the persistent handle already when id says so (tpm.TPM.PinSeenSRK). The
// connection then persists the SRK only where asked (tpm.TransientSRKOnly:
// found by review 31, fw anchor set after zeroize --srk persisted it).
func PinEstablished(t *tpm.TPM, id api.Identity, srk tpm.Object) error {
	t.TransientSRKOnly()
	if id.SRKPersistent {
		return t.PinSeenSRK(srk.Public)
	}
	return t.PinSRK(srk.Public)
}

// ekCertificate is the EK certificate to use: the caller's (DER or PEM), or
// the first of the TCG NV indices in the order of tpm.EKCertIndices: RSA
// 2048 and ECC P-256 (the low-range templates every TPM has) before ECC
// P-384 (high range).
func ekCertificate(t *tpm.TPM, given []byte) ([]byte, string, error) {
	if len(given) > 0 {
		der, err := pemblock.DER(given, "CERTIFICATE")
		if err != nil {
			return nil, "", fmt.Errorf("%w: EK certificate: %w", api.ErrBadInput, err)
		}
		return der, "file", nil
	}
	for _, c := range tpm.EKCertIndices {
		der, err := t.ReadNV(c.Handle)
		if errors.Is(err, tpm.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, "", err
		}
		return der, fmt.Sprintf("nv 0x%08x", uint32(c.Handle)), nil
	}
	return nil, "", fmt.Errorf("%w: no RSA 2048, ECC P-256 or ECC P-384 EK certificate in NV (0x01c00002, 0x01c0000a, 0x01c00016): give the TPM's EK certificate as a file", api.ErrNotFound)
}

// verifyEK checks the certificate against the manufacturer certificates of
// req. Trust on first use applies only when there are none: given
// certificates that do not vouch for the TPM are a refusal, never a silent
// fall back to trusting it.
func verifyEK(der []byte, req api.IdentityRequest, now func() time.Time) (*attest.EKCertificate, error) {
	if len(req.EKCA) > 0 {
		roots, err := attest.CertPoolFromPEM(req.EKCA)
		if err != nil {
			return nil, fmt.Errorf("%w: EK CA bundle: %v", api.ErrBadInput, err)
		}
		ek, err := attest.VerifyEKCertificate(der, attest.Options{Roots: roots, Now: now})
		if errors.Is(err, attest.ErrUntrustedEK) {
			err = fmt.Errorf("%w: %w", api.ErrUntrustedTPM, err)
		}
		return ek, err
	}
	if !req.TrustOnFirstUse {
		return nil, fmt.Errorf("%w: no manufacturer certificates to verify the EK certificate with (give them, or trust on first use)", api.ErrUntrustedTPM)
	}
	ek, err := attest.ParseEKCertificate(der)
	if errors.Is(err, attest.ErrBadEvidence) || errors.Is(err, attest.ErrUnsupportedAlgorithm) {
		err = fmt.Errorf("%w: %w", api.ErrUntrustedTPM, err)
	}
	return ek, err
}

// ekPublic is the persistent handle and the public area of the TCG EK with
// key, and the template a TPM without a persistent EK makes it from. The
// public area, which the salt is encrypted to, is the template's with the
// certificate's key: its nameAlg (the salt KDF's hash: SHA-256 for the
// low-range templates L-1 and L-2, SHA-384 for H-3) and curve come from the
// template the certificate's NV index names, nothing from the bus.
func ekPublic(key any) (tpm2.TPMHandle, tpm2.TPMTPublic, tpm2.TPMTPublic, string, error) {
	switch k := key.(type) {
	case *rsa.PublicKey:
		pub, err := attest.EKPublic(k)
		if err != nil {
			break
		}
		tmpl := tpm2.RSAEKTemplate
		tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)})
		return tpm.RSAEKHandle, pub, tmpl, "RSA 2048", nil
	case *ecdsa.PublicKey:
		ek, err := k.ECDH()
		if err != nil {
			break
		}
		var (
			tmpl   tpm2.TPMTPublic
			handle tpm2.TPMHandle
			desc   string
		)
		raw := ek.Bytes() // 04 || X || Y
		switch ek.Curve() {
		case ecdh.P256():
			// L-2: the unique field is zero-filled to the curve's size.
			tmpl, handle, desc = tpm2.ECCEKTemplate, tpm.ECCP256EKHandle, "ECC P-256"
			tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
				X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)}, Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)}})
		case ecdh.P384():
			// H-3: the unique field is empty.
			tmpl, handle, desc = tpm.ECCP384EKTemplate, tpm.ECCP384EKHandle, "ECC P-384"
		default:
			return 0, tpm2.TPMTPublic{}, tpm2.TPMTPublic{}, "", fmt.Errorf("%w: an EK certificate for an ECC key on %s: provd salts to RSA 2048, ECC P-256 and ECC P-384 EKs", api.ErrNotPermitted, k.Curve.Params().Name)
		}
		if ek.Curve() == ecdh.P256() {
			pub, err := attest.EKPublic(k)
			return handle, pub, tmpl, desc, err
		}
		n := (len(raw) - 1) / 2
		pub := tmpl
		pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: raw[1 : 1+n]}, Y: tpm2.TPM2BECCParameter{Buffer: raw[1+n:]}})
		return handle, pub, tmpl, desc, nil
	}
	return 0, tpm2.TPMTPublic{}, tpm2.TPMTPublic{}, "", fmt.Errorf("%w: an EK certificate for a %T key other than RSA 2048, ECC P-256 or ECC P-384: provd cannot salt to it", api.ErrNotPermitted, key)
}
