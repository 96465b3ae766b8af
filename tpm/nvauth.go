package tpm

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// NV indices whose write rests on something other than the empty owner
// password: the owner's own authorization value when the device maker set
// one, an index authValue (HMAC, never on the bus), or a signature by an
// offline key over one exact write (PolicySigned with the write's cpHash).
// The firmware hook's anchor and anti-rollback counter use them
// (docs/firmware.md).

// ownerSession authorizes the owner hierarchy with ownerAuth in an HMAC
// session (salted to the pinned SRK when one is pinned) that, with encrypt,
// also encrypts the command's first parameter: the owner's value never
// crosses the bus, and an index authValue in NV_DefineSpace crosses it
// encrypted (a command without parameters, NV_UndefineSpace, takes no
// encryption: TPM_RC_ATTRIBUTES). Unsalted, the
// encryption key derives from ownerAuth: with an empty owner authorization it
// hides nothing from an interposer (docs/firmware.md says what that costs).
func (t *TPM) ownerSession(ownerAuth []byte, encrypt bool) (tpm2.Session, error) {
	opts, err := t.pinnedSalt()
	if err != nil {
		return nil, err
	}
	opts = append(opts, tpm2.Auth(ownerAuth))
	if encrypt {
		opts = append(opts, tpm2.AESEncryption(128, tpm2.EncryptIn))
	}
	return tpm2.HMAC(tpm2.TPMAlgSHA256, 16, opts...), nil
}

// DefineNVAuth defines the owner index pub with authValue indexAuth (nil for
// none), authorized by the owner's authorization value ownerAuth (nil when
// the owner has none). A wrong ownerAuth is ErrBadAuth.
func (t *TPM) DefineNVAuth(pub tpm2.TPMSNVPublic, indexAuth, ownerAuth []byte) (NVIndex, error) {
	if err := checkNVIndexHandle(pub.NVIndex); err != nil {
		return NVIndex{}, err
	}
	s, err := t.ownerSession(ownerAuth, true)
	if err != nil {
		return NVIndex{}, err
	}
	if _, err := (tpm2.NVDefineSpace{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: s},
		Auth:       tpm2.TPM2BAuth{Buffer: indexAuth},
		PublicInfo: tpm2.New2B(pub),
	}).Execute(t); err != nil {
		return NVIndex{}, Wrap("TPM2_NV_DefineSpace", err)
	}
	return t.ReadNVPublic(pub.NVIndex)
}

// UndefineNVAuth removes the owner index at h with the owner's
// authorization value ownerAuth. An index that does not exist is ErrNotFound.
func (t *TPM) UndefineNVAuth(h tpm2.TPMHandle, ownerAuth []byte) error {
	x, err := t.ReadNVPublic(h)
	if err != nil {
		return err
	}
	s, err := t.ownerSession(ownerAuth, false)
	if err != nil {
		return err
	}
	if _, err := (tpm2.NVUndefineSpace{AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: s}, NVIndex: x.named()}).Execute(t); err != nil {
		return Wrap("TPM2_NV_UndefineSpace", err)
	}
	return nil
}

// IncrementAuth adds one to the counter x, authorized by its authValue auth
// in an HMAC session (salted to the pinned SRK when one is pinned): the value
// never crosses the bus. A wrong value is ErrBadAuth (the index is NO_DA: no
// lockout). 2 commands (StartAuthSession, NV_Increment; the session ends
// with the command).
func (t *TPM) IncrementAuth(x NVIndex, auth []byte) error {
	if x.Public.Attributes.NT != tpm2.TPMNTCounter {
		return fmt.Errorf("NV index 0x%08x is not a counter", uint32(x.Handle))
	}
	opts, err := t.pinnedSalt()
	if err != nil {
		return err
	}
	opts = append(opts, tpm2.Auth(auth))
	if _, err := (tpm2.NVIncrement{
		AuthHandle: tpm2.AuthHandle{Handle: x.Handle, Name: x.Name, Auth: tpm2.HMAC(tpm2.TPMAlgSHA256, 16, opts...)},
		NVIndex:    x.named(),
	}).Execute(t); err != nil {
		return nvWrap("TPM2_NV_Increment", err)
	}
	return nil
}

// ProveNVAuth proves that auth is the authValue of the index x (which must
// have AUTHREAD) without changing anything: TPM2_PolicySecret of x in a
// trial session, the value proven by HMAC (salted to the pinned SRK when one
// is pinned). A wrong value is ErrBadAuth.
func (t *TPM) ProveNVAuth(x NVIndex, auth []byte) error {
	opts, err := t.pinnedSalt()
	if err != nil {
		return err
	}
	s, err := t.StartPolicySession(true)
	if err != nil {
		return err
	}
	_, err = (tpm2.PolicySecret{AuthHandle: tpm2.AuthHandle{Handle: x.Handle, Name: x.Name, Auth: tpm2.HMAC(tpm2.TPMAlgSHA256, 16, append(opts, tpm2.Auth(auth))...)},
		PolicySession: s.stepHandle(), NonceTPM: s.s.NonceTPM()}).Execute(t)
	return closeInto(nvWrap("TPM2_PolicySecret", err), s)
}

// CommandPolicy is the policy digest PolicyCommandCode(cc) alone: the
// authPolicy of an index anyone may read (POLICYREAD) whose authValue gates
// its write.
func CommandPolicy(cc tpm2.TPMCC) []byte {
	c, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		panic(err) // SHA-256 is always available
	}
	if err := (tpm2.PolicyCommandCode{Code: cc}).Update(c); err != nil {
		panic(err)
	}
	return c.Hash().Digest
}

// ReadCounterByPolicy reads the counter x whose authPolicy is
// CommandPolicy(NV_Read) (POLICYREAD): a policy session,
// PolicyCommandCode, NV_Read, FlushContext. Without a pinned SRK the
// value is what the bus says.
func (t *TPM) ReadCounterByPolicy(x NVIndex) (v uint64, err error) {
	if x.Public.Attributes.NT != tpm2.TPMNTCounter || x.Public.DataSize != counterSize {
		return 0, fmt.Errorf("NV index 0x%08x is not a counter", uint32(x.Handle))
	}
	opts, err := t.pinnedSalt()
	if err != nil {
		return 0, err
	}
	ss, _, err := tpm2.PolicySession(t, tpm2.TPMAlgSHA256, policyNonceSize, opts...)
	if err != nil {
		return 0, Wrap("TPM2_StartAuthSession", err)
	}
	s := &PolicySession{t: t, s: ss, closer: t.sessionCloser(ss), alg: tpm2.TPMAlgSHA256}
	defer func() { err = closeInto(err, s) }()
	if err := s.PolicyCommandCode(tpm2.TPMCCNVRead); err != nil {
		return 0, err
	}
	rsp, err := (tpm2.NVRead{AuthHandle: tpm2.AuthHandle{Handle: x.Handle, Name: x.Name, Auth: s.s}, NVIndex: x.named(), Size: counterSize}).Execute(t)
	if err != nil {
		return 0, nvWrap("TPM2_NV_Read", err)
	}
	if len(rsp.Data.Buffer) != counterSize {
		return 0, fmt.Errorf("TPM2_NV_Read: %d bytes returned, %d asked", len(rsp.Data.Buffer), counterSize)
	}
	return binary.BigEndian.Uint64(rsp.Data.Buffer), nil
}

func closeInto(err error, s *PolicySession) error {
	if cerr := s.Close(); cerr != nil && err == nil {
		return cerr
	}
	return err
}

// SignedWritePolicy is the authPolicy of an index written only with a
// signature by signer (its TPM name) over one exact write:
// PolicySigned(signer, ref).
func SignedWritePolicy(signerName, ref []byte) ([]byte, error) {
	c, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	if err := (tpm2.PolicySigned{
		AuthObject: tpm2.NamedHandle{Name: tpm2.TPM2BName{Buffer: signerName}},
		PolicyRef:  tpm2.TPM2BNonce{Buffer: ref},
	}).Update(c); err != nil {
		return nil, err
	}
	return c.Hash().Digest, nil
}

// NVWriteSigned writes data at offset 0 of x, whose authPolicy is
// SignedWritePolicy(signer's name, ref): it starts a policy session, asks
// sign for a signature over aHash = SHA-256(nonceTPM || expiration 0 ||
// cpHash || ref), cpHash being that of TPM2_NV_Write of exactly these bytes
// to x as the TPM names it, and runs PolicySigned then NV_Write. The
// signature holds for this session only (nonceTPM) and this write only
// (cpHash): an interposer who records it can neither replay it nor change
// the data on the way. The signer's key must have a SHA-256 nameAlg.
func (t *TPM) NVWriteSigned(x NVIndex, data []byte, signer tpm2.TPMTPublic, ref []byte, sign func(aHash []byte) (tpm2.TPMTSignature, error)) (err error) {
	if signer.NameAlg != tpm2.TPMAlgSHA256 {
		return fmt.Errorf("NV signed write: signer nameAlg 0x%04x, want SHA-256: %w", uint16(signer.NameAlg), ErrUnsupported)
	}
	write := tpm2.NVWrite{AuthHandle: x.named(), NVIndex: x.named(), Data: tpm2.TPM2BMaxNVBuffer{Buffer: data}}
	cp, err := tpm2.CPHash(tpm2.TPMAlgSHA256, write)
	if err != nil {
		return err
	}
	s, err := t.StartPolicySession(false)
	if err != nil {
		return err
	}
	defer func() { err = closeInto(err, s) }()
	h := sha256.New()
	h.Write(s.s.NonceTPM().Buffer)
	h.Write([]byte{0, 0, 0, 0}) // expiration: none
	h.Write(cp.Buffer)
	h.Write(ref)
	sig, err := sign(h.Sum(nil))
	if err != nil {
		return err
	}
	key, err := (tpm2.LoadExternal{InPublic: tpm2.New2B(signer), Hierarchy: tpm2.TPMRHOwner}).Execute(t)
	if err != nil {
		t.unheld()
		return Wrap("TPM2_LoadExternal", err)
	}
	if _, err := (tpm2.PolicySigned{
		AuthObject:    tpm2.NamedHandle{Handle: key.ObjectHandle, Name: key.Name},
		PolicySession: s.stepHandle(),
		NonceTPM:      s.s.NonceTPM(),
		CPHashA:       *cp,
		PolicyRef:     tpm2.TPM2BNonce{Buffer: ref},
		Auth:          sig,
	}).Execute(t); err != nil {
		return errors.Join(notSatisfied("TPM2_PolicySigned", err, tpm2.TPMRCSignature), t.Flush(key.ObjectHandle))
	}
	if err := t.Flush(key.ObjectHandle); err != nil {
		return err
	}
	write.AuthHandle = tpm2.AuthHandle{Handle: x.Handle, Name: x.Name, Auth: s.s}
	if _, err := write.Execute(t); err != nil {
		return notSatisfied("TPM2_NV_Write", err, tpm2.TPMRCPolicyFail)
	}
	return nil
}

// PCRExtendAll extends pcr in every bank of digests with one
// TPM2_PCR_Extend: an event's digests, one per active bank.
func (t *TPM) PCRExtendAll(pcr int, digests []tpm2.TPMTHA) error {
	if pcr < 0 || pcr > maxPCRIndex {
		return fmt.Errorf("PCR %d: want 0..%d", pcr, maxPCRIndex)
	}
	for _, d := range digests {
		h, err := d.HashAlg.Hash()
		if err != nil {
			return fmt.Errorf("PCR bank %v: %w", d.HashAlg, ErrUnsupported)
		}
		if len(d.Digest) != h.Size() {
			return fmt.Errorf("PCR extend: digest of %d bytes, bank %v needs %d", len(d.Digest), d.HashAlg, h.Size())
		}
	}
	if _, err := (tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: digests},
	}).Execute(t); err != nil {
		return Wrap("TPM2_PCR_Extend", err)
	}
	return nil
}

// NVDefined says, for each handle, whether an NV index is defined there,
// from TPM_CAP_HANDLES read in an audit session salted to the pinned SRK:
// the response HMAC covers the answer, so nothing on the bus can hide an
// index or invent one. A lookup's "no such handle" (TPM_RC_HANDLE from
// NV_ReadPublic) is an error response, which carries no HMAC: absence is
// proven only this way (found by review: an interposer answered "no anchor"
// and an authenticated set took it for a first one). Without a pinned SRK
// it is refused.
func (t *TPM) NVDefined(hs ...tpm2.TPMHandle) (map[tpm2.TPMHandle]bool, error) {
	opts, err := t.pinnedSalt()
	if err != nil {
		return nil, err
	}
	if opts == nil {
		return nil, fmt.Errorf("%w: no SRK is pinned to authenticate the TPM's list of NV indices", ErrIdentityMismatch)
	}
	out := make(map[tpm2.TPMHandle]bool, len(hs))
	err = t.withHMACSession(func(s tpm2.Session) error {
		for _, h := range hs {
			rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(h), PropertyCount: 1}).Execute(t, s)
			if err != nil {
				return Wrap("TPM2_GetCapability", err)
			}
			list, err := rsp.CapabilityData.Data.Handles()
			if err != nil {
				return fmt.Errorf("TPM2_GetCapability: %w", err)
			}
			out[h] = len(list.Handle) > 0 && list.Handle[0] == h
		}
		return nil
	}, append(opts, tpm2.Audit())...)
	return out, err
}
