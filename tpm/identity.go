package tpm

import (
	"bytes"
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
)

// First contact with a TPM, as the trust chain needs it: the endorsement
// key's public key comes from its certificate (the caller verifies the
// certificate; tpm imports no verifier), a session is salted to that key,
// and the SRK is created through that session, so that the TPM's response
// HMAC, keyed by a salt only the certified EK can decrypt, authenticates the
// SRK public that comes back. An interposer that answers for the TPM cannot
// compute that HMAC; one that swaps the EK makes StartAuthSession fail
// (TPM_RC_VALUE: the salt does not decrypt).

// The persistent EK handles of the TCG EK Credential Profile (2.2.1.4), for
// the certificate indices EKCertIndices lists.
const (
	RSAEKHandle     tpm2.TPMHandle = 0x81010001
	ECCP256EKHandle tpm2.TPMHandle = 0x81010002
	ECCP384EKHandle tpm2.TPMHandle = 0x81010016
)

// ECCP384EKTemplate is the TCG EK Credential Profile's high-range template
// H-3 (ECC NIST P-384, certificate at NV 0x01c00016), with its empty unique
// field: nameAlg SHA-384, fixedTPM, fixedParent, sensitiveDataOrigin,
// userWithAuth, adminWithPolicy, restricted, decrypt (0x000300f2),
// authPolicy PolicyB for SHA-384, AES-256-CFB, NULL scheme and KDF. go-tpm
// v0.9.8 ships no high-range template. Checked against swtpm 0.7.1
// (libtpms 0.9.2): TPM2_CreatePrimary under the endorsement hierarchy with
// it gives the name of the EK swtpm_setup made persistent at 0x81010016
// (tpm.TestECCP384EKTemplate); a zero-filled unique gives another key.
var ECCP384EKTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA384,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		AdminWithPolicy:     true,
		Restricted:          true,
		Decrypt:             true,
	},
	AuthPolicy: tpm2.TPM2BDigest{Buffer: []byte{
		0xb2, 0x6e, 0x7d, 0x28, 0xd1, 0x1a, 0x50, 0xbc, 0x53, 0xd8, 0x82, 0xbc,
		0xf5, 0xfd, 0x3a, 0x1a, 0x07, 0x41, 0x48, 0xbb, 0x35, 0xd3, 0xb4, 0xe4,
		0xcb, 0x1c, 0x0a, 0xd9, 0xbd, 0xe4, 0x19, 0xca, 0xcb, 0x47, 0xba, 0x09,
		0x69, 0x96, 0x46, 0x15, 0x0f, 0x9f, 0xc0, 0x00, 0xf3, 0xf8, 0x0e, 0x12,
	}},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Symmetric: tpm2.TPMTSymDefObject{
			Algorithm: tpm2.TPMAlgAES,
			KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(256)),
			Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
		},
		Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
		CurveID: tpm2.TPMECCNistP384,
		KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
}

// AuthenticatedSRK returns the SRK's public area and name as the TPM states
// them in a response authenticated by a session salted to ekPub, the EK
// public area built from its certificate. The EK is used where it is
// persistent (ekHandle); a TPM without a persistent EK gets it created from
// template (the EK's template with an empty unique field) and flushed after.
// The SRK itself is created with SRKTemplate under the owner hierarchy
// (empty owner authorization) and flushed: the caller compares the name with
// the persistent SRK's, or pins it.
//
// The salt is encrypted to ekPub alone: its type, nameAlg (the KDF's hash),
// curve or key size, and key come from the caller, never from the bus. What
// the TPM says about the EK (ReadPublic of ekHandle, or the created EK's
// outPublic) is only compared with ekPub, so that a TPM whose EK is another
// key is refused before any session, saying so (ErrIdentityMismatch): a lie
// there can only refuse, and an interposer that answers with ekPub's key
// while the TPM holds another gains nothing, as the TPM then cannot
// decrypt the salt (RSA: TPM_RC_VALUE at StartAuthSession) or derives
// another session key (ECC: it refuses the command HMAC, ErrResponseForged).
func (t *TPM) AuthenticatedSRK(ekHandle tpm2.TPMHandle, ekPub, template tpm2.TPMTPublic) (srk Object, err error) {
	ek, err := t.ReadPublic(ekHandle)
	switch {
	case errors.Is(err, ErrNotFound):
		obj, err := t.createPrimary(tpm2.TPMRHEndorsement, template)
		if err != nil {
			return Object{}, fmt.Errorf("creating the EK: %w", err)
		}
		ek = obj
		defer func() {
			if ferr := t.Flush(obj.Handle); ferr != nil && err == nil {
				err = ferr
			}
		}()
	case err != nil:
		return Object{}, err
	}
	if err := sameSaltKey(ek.Public, ekPub); err != nil {
		return Object{}, fmt.Errorf("%w: the EK at 0x%08x is not the certified key: %v", ErrIdentityMismatch, uint32(ekHandle), err)
	}
	err = t.withHMACSession(func(s tpm2.Session) error {
		srk, err = t.createSRKThrough(s)
		return err
	}, tpm2.Salted(ek.Handle, ekPub))
	if errors.Is(err, ErrResponseForged) && errors.Is(err, tpm2.TPMRCBadAuth) {
		// The TPM refused provd's command HMAC: it derived another
		// session key than provd (another key at the EK handle, or
		// a changed command), unless the owner hierarchy has a password
		// (provd authorizes it with the empty one).
		if set, oerr := t.OwnerAuthSet(); oerr == nil && set {
			return Object{}, fmt.Errorf("%w: the owner hierarchy has an authorization; provd creates the SRK with the empty one", ErrBadAuth)
		}
	}
	return srk, err
}

// sameSaltKey reports how got, a public area the TPM stated for the EK,
// differs from want in what a salt encrypted to want depends on: type,
// nameAlg, curve or key size and exponent, and the key itself.
func sameSaltKey(got, want tpm2.TPMTPublic) error {
	if got.Type != want.Type || got.NameAlg != want.NameAlg {
		return fmt.Errorf("type %v nameAlg %v, the certificate's is type %v nameAlg %v", got.Type, got.NameAlg, want.Type, want.NameAlg)
	}
	switch want.Type {
	case tpm2.TPMAlgECC:
		gp, err1 := got.Parameters.ECCDetail()
		wp, err2 := want.Parameters.ECCDetail()
		gu, err3 := got.Unique.ECC()
		wu, err4 := want.Unique.ECC()
		if err := errors.Join(err1, err2, err3, err4); err != nil {
			return err
		}
		if gp.CurveID != wp.CurveID || !bytes.Equal(gu.X.Buffer, wu.X.Buffer) || !bytes.Equal(gu.Y.Buffer, wu.Y.Buffer) {
			return errors.New("another curve or point")
		}
	case tpm2.TPMAlgRSA:
		gp, err1 := got.Parameters.RSADetail()
		wp, err2 := want.Parameters.RSADetail()
		gu, err3 := got.Unique.RSA()
		wu, err4 := want.Unique.RSA()
		if err := errors.Join(err1, err2, err3, err4); err != nil {
			return err
		}
		if gp.KeyBits != wp.KeyBits || rsaExponent(gp.Exponent) != rsaExponent(wp.Exponent) || !bytes.Equal(gu.Buffer, wu.Buffer) {
			return errors.New("another modulus")
		}
	default:
		return fmt.Errorf("a salt cannot be encrypted to type %v", want.Type)
	}
	return nil
}

// createSRKThrough creates the SRK under the owner hierarchy authorized by s,
// checks that the name the TPM states is the public area's, and flushes it.
func (t *TPM) createSRKThrough(s tpm2.Session) (srk Object, err error) {
	// A response that fails its HMAC check reaches no caller, yet the TPM
	// made the object: the transient handles before the command tell which
	// one to flush then.
	before, err := t.Handles(TransientHandles)
	if err != nil {
		return Object{}, err
	}
	rsp, err := (tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: s},
		InPublic:      tpm2.New2B(SRKTemplate),
	}).Execute(t)
	if err != nil {
		// Session 1 is provd's, salted to the certified EK, with the
		// owner's empty authorization: a refused HMAC there means the
		// TPM derived another session key or saw another command.
		return Object{}, errors.Join(guarded("TPM2_CreatePrimary (SRK, through the EK session)", err, 1), t.flushNew(before))
	}
	defer t.flushInto(&err, rsp.ObjectHandle)
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return Object{}, fmt.Errorf("TPM2_CreatePrimary: %w", err)
	}
	// The name the TPM states is covered by the response HMAC too; it must
	// be the name of the public area it returned.
	name, err := tpm2.ObjectName(pub)
	if err != nil || !nameEqual(*name, rsp.Name) {
		return Object{}, fmt.Errorf("TPM2_CreatePrimary: the stated name is not the public area's (%v)", err)
	}
	return Object{Handle: SRKHandle, Name: rsp.Name, Public: *pub}, nil
}

// rsaExponent is an RSA public area's exponent, 0 meaning 65537 (Part 2,
// TPMS_RSA_PARMS).
func rsaExponent(e uint32) uint32 {
	if e == 0 {
		return 65537
	}
	return e
}

// flushNew flushes the transient objects that are not in before.
func (t *TPM) flushNew(before []tpm2.TPMHandle) error {
	now, err := t.Handles(TransientHandles)
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range now {
		if !slices.Contains(before, h) {
			errs = append(errs, t.Flush(h))
		}
	}
	return errors.Join(errs...)
}

// EK returns the endorsement key whose public area the caller took from its
// certificate (pub; template, to make it when it is not persistent at
// handle), checked against what the TPM holds, and its flush (a no-op for
// the persistent one).
func (t *TPM) EK(handle tpm2.TPMHandle, pub, template tpm2.TPMTPublic) (Object, func() error, error) {
	noop := func() error { return nil }
	ek, err := t.ReadPublic(handle)
	flush := noop
	switch {
	case errors.Is(err, ErrNotFound):
		if ek, err = t.createPrimary(tpm2.TPMRHEndorsement, template); err != nil {
			return Object{}, nil, fmt.Errorf("creating the EK: %w", err)
		}
		h := ek.Handle
		flush = func() error { return t.Flush(h) }
	case err != nil:
		return Object{}, nil, err
	}
	if err := sameSaltKey(ek.Public, pub); err != nil {
		return Object{}, nil, errors.Join(fmt.Errorf("%w: the EK at 0x%08x is not the certified key: %v", ErrIdentityMismatch, uint32(handle), err), flush())
	}
	return ek, flush, nil
}
