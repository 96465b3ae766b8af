package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/google/go-tpm/tpm2"
)

// A gate is a key whose blob only its owner holds (provd keeps it in its state
// directory, mode 0700) and whose private part never leaves the TPM
// (fixedTPM|fixedParent). An NV index is gated when its writes need a policy
// session that proved the gate's authorization (TPM2_PolicySecret) for one
// command code: GatePolicy(gate's name, NV_Extend) as its authPolicy,
// TPMA_NV_AUTHWRITE clear and TPMA_NV_POLICYWRITE set. Another process can
// still read the index (its password is empty, so PolicyNV works too) but
// cannot write it: it has no blob to load, and a key of its own has another
// name. Undefining the index stays possible for whoever holds the owner
// authorization, and an index redefined with the same public area has the
// same name: a gate keeps others from writing, a pinned name (the gate's
// name is inside it) makes a redefinition with another policy visible.

// GateTemplate is the public area of a gate key: ECC P-256, restricted
// signing (so it signs only attestation structures the TPM produced, such as
// TPM2_NV_Certify's, never a digest handed to it), born in the TPM and never
// leaving it, used with an empty password: whoever can load it may use it, and
// only the holder of the blob can load it.
func GateTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			NoDA:                true,
			Restricted:          true,
			SignEncrypt:         true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
		}),
	}
}

// GatePolicy is the SHA-256 policy digest PolicySecret(gate) then
// PolicyCommandCode(cc): satisfied only by a session that proved the gate's
// authorization, and only for command cc.
func GatePolicy(gateName []byte, cc tpm2.TPMCC) ([]byte, error) {
	c, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	if err := (tpm2.PolicySecret{AuthHandle: tpm2.AuthHandle{Name: tpm2.TPM2BName{Buffer: gateName}}}).Update(c); err != nil {
		return nil, err
	}
	if err := (tpm2.PolicyCommandCode{Code: cc}).Update(c); err != nil {
		return nil, err
	}
	return c.Hash().Digest, nil
}

// GatedNVPublic is the public area of a gated owner index: written only
// through authPolicy, read with the empty password (PolicyNV, audit verify)
// or by the owner, no DA counting.
func GatedNVPublic(h tpm2.TPMHandle, nt tpm2.TPMNT, size uint16, authPolicy []byte) tpm2.TPMSNVPublic {
	return tpm2.TPMSNVPublic{
		NVIndex: h,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			NT:          nt,
			PolicyWrite: true,
			AuthRead:    true,
			OwnerRead:   true,
			NoDA:        true,
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: authPolicy},
		DataSize:   size,
	}
}

// GatedExtendPublic is the public area of a SHA-256 extend index whose
// extends are gated by the gate named gateName, written (written) or not.
func GatedExtendPublic(h tpm2.TPMHandle, gateName []byte, written bool) (tpm2.TPMSNVPublic, error) {
	pol, err := GatePolicy(gateName, tpm2.TPMCCNVExtend)
	if err != nil {
		return tpm2.TPMSNVPublic{}, err
	}
	p := GatedNVPublic(h, tpm2.TPMNTExtend, extendSize, pol)
	p.Attributes.Written = written
	return p, nil
}

// NVPublicName is the name of an NV index with public area p, computed offline.
func NVPublicName(p tpm2.TPMSNVPublic) ([]byte, error) {
	n, err := tpm2.NVName(&p)
	if err != nil {
		return nil, err
	}
	return n.Buffer, nil
}

// DefineNV defines the owner index described by pub (owner authorization:
// the empty password, as everywhere provd defines indices).
func (t *TPM) DefineNV(pub tpm2.TPMSNVPublic) (NVIndex, error) {
	if err := checkNVIndexHandle(pub.NVIndex); err != nil {
		return NVIndex{}, err
	}
	if _, err := (tpm2.NVDefineSpace{AuthHandle: tpm2.TPMRHOwner, PublicInfo: tpm2.New2B(pub)}).Execute(t); err != nil {
		return NVIndex{}, Wrap("TPM2_NV_DefineSpace", err)
	}
	return t.ReadNVPublic(pub.NVIndex)
}

// PolicySecret runs TPM2_PolicySecret with obj's empty password: the session
// then proves that its holder could use obj.
func (p *PolicySession) PolicySecret(obj Object, policyRef []byte) error {
	_, err := (tpm2.PolicySecret{
		AuthHandle:    obj.Auth(tpm2.PasswordAuth(nil)),
		PolicySession: p.s.Handle(),
		NonceTPM:      p.s.NonceTPM(),
		PolicyRef:     tpm2.TPM2BNonce{Buffer: policyRef},
	}).Execute(p.t)
	return Wrap("TPM2_PolicySecret", err)
}

// gateSession starts a policy session that satisfies GatePolicy(gate, cc).
func (t *TPM) gateSession(gate Object, cc tpm2.TPMCC) (*PolicySession, error) {
	s, err := t.StartPolicySession(false)
	if err != nil {
		return nil, err
	}
	if err := s.PolicySecret(gate, nil); err != nil {
		return nil, joinClose(err, s)
	}
	if err := s.PolicyCommandCode(cc); err != nil {
		return nil, joinClose(err, s)
	}
	return s, nil
}

func joinClose(err error, s *PolicySession) error {
	if cerr := s.Close(); cerr != nil {
		return fmt.Errorf("%w (and: %v)", err, cerr)
	}
	return err
}

// GatedExtend is a policy session that satisfies GatePolicy(gate,
// NV_Extend) for one extend of one index: prepared (3 commands:
// StartAuthSession, PolicySecret, PolicyCommandCode) before the caller
// commits to anything, so that the extend itself is one command that the TPM
// ends the session with. Close it on every path; after a successful Extend
// it sends nothing.
type GatedExtend struct {
	t *TPM
	h tpm2.TPMHandle
	s *PolicySession
}

// PrepareGatedExtend starts the session for one extend of the gated index at
// h, proving the loaded gate's authorization. The gate may be flushed as soon
// as this returns: the session holds the proof.
func (t *TPM) PrepareGatedExtend(h tpm2.TPMHandle, gate Object) (*GatedExtend, error) {
	if err := checkNVIndexHandle(h); err != nil {
		return nil, err
	}
	s, err := t.gateSession(gate, tpm2.TPMCCNVExtend)
	if err != nil {
		return nil, err
	}
	return &GatedExtend{t: t, h: h, s: s}, nil
}

// Extend sends TPM2_NV_Extend (raw: go-tpm v0.9.8 lacks it) authorized by
// the session, with continueSession clear: on success the TPM flushes the
// session. A policy the index does not accept (another gate: the index was
// redefined) is ErrPolicyNotSatisfied.
func (g *GatedExtend) Extend(data []byte) error {
	if g.s.closed {
		return errors.New("NV extend: the gate session is used up")
	}
	if len(data) > math.MaxUint16 {
		return fmt.Errorf("NV extend: %d bytes of data is too much", len(data))
	}
	params := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(data)), uint16(len(data)))
	params = append(params, data...)
	_, err := (rawCommand{cc: ccNVExtend, handles: []tpm2.TPMHandle{g.h, g.h}, policy: g.s.Handle(), endSession: true, params: params}).run(g.t)
	if err != nil {
		return notSatisfied("TPM2_NV_Extend", err, tpm2.TPMRCPolicyFail)
	}
	g.s.closed = true // the TPM ended it
	return nil
}

// Close flushes the session unless the TPM already ended it.
func (g *GatedExtend) Close() error { return g.s.Close() }

// NVExtendGated is PrepareGatedExtend, Extend and Close: 5 commands with
// the gate loaded.
func (t *TPM) NVExtendGated(h tpm2.TPMHandle, data []byte, gate Object) (err error) {
	g, err := t.PrepareGatedExtend(h, gate)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := g.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	return g.Extend(data)
}

// LoadGate loads a gate key's blob under parent with a password session:
// one command, where Load spends three on a session salted to the SRK. That
// session keeps an interposer from changing what is loaded; for a gate it
// buys nothing, because the gate is only ever used to satisfy a policy whose
// digest holds the gate's name, which the TPM computes from what it loaded.
// A response naming another object is refused here all the same.
func (t *TPM) LoadGate(parent Object, b Blob) (Object, error) {
	want, err := b.Name()
	if err != nil {
		return Object{}, err
	}
	rsp, err := (tpm2.Load{ParentHandle: parent.Auth(tpm2.PasswordAuth(nil)), InPrivate: b.Private, InPublic: b.Public}).Execute(t)
	if err != nil {
		return Object{}, Wrap("TPM2_Load", err)
	}
	pub, err := b.Public.Contents()
	if err != nil {
		return Object{}, errors.Join(err, t.Flush(rsp.ObjectHandle))
	}
	if !nameEqual(rsp.Name, want) {
		return Object{}, errors.Join(fmt.Errorf("%w: TPM2_Load of a gate returned name %x, the blob's is %x", ErrResponseForged, rsp.Name.Buffer, want.Buffer), t.Flush(rsp.ObjectHandle))
	}
	return Object{Handle: rsp.ObjectHandle, Name: rsp.Name, Public: *pub}, nil
}
