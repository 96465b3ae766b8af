package tpm

import (
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
)

// AuthenticatedSRK returns the SRK's public area and name as the TPM states
// them in a response authenticated by a session salted to ekPub, the EK
// public area built from its certificate. The EK is used where it is
// persistent (ekHandle); a TPM without a persistent EK gets it created from
// template (the EK's template with an empty unique field) and flushed after.
// The SRK itself is created with SRKTemplate under the owner hierarchy
// (empty owner authorization) and flushed: the caller compares the name with
// the persistent SRK's, or pins it.
func (t *TPM) AuthenticatedSRK(ekHandle tpm2.TPMHandle, ekPub, template tpm2.TPMTPublic) (srk Object, err error) {
	ek := ekHandle
	_, err = t.ReadPublic(ekHandle)
	switch {
	case errors.Is(err, ErrNotFound):
		obj, err := t.createPrimary(tpm2.TPMRHEndorsement, template)
		if err != nil {
			return Object{}, fmt.Errorf("creating the EK: %w", err)
		}
		ek = obj.Handle
		defer func() {
			if ferr := t.Flush(obj.Handle); ferr != nil && err == nil {
				err = ferr
			}
		}()
	case err != nil:
		return Object{}, err
	}
	err = t.withHMACSession(func(s tpm2.Session) error {
		srk, err = t.createSRKThrough(s)
		return err
	}, tpm2.Salted(ek, ekPub))
	return srk, err
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
		return Object{}, errors.Join(Wrap("TPM2_CreatePrimary (SRK, through the EK session)", err), t.flushNew(before))
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
