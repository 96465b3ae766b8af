package attest

import (
	"encoding/binary"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// Hand-written readers for the two structures every quote carries, the
// TPMS_ATTEST of a quote and an ECDSA TPMT_SIGNATURE: go-tpm's reflective
// unmarshal, with the marshal back that unmarshalStrict checks it with,
// was a tenth of a fleet appraisal's CPU (issue 14). They accept exactly
// what unmarshalStrict accepts and give the same values (a differential
// test and fuzz target hold them to it); any other attestation type or
// signature algorithm goes to unmarshalStrict.

// TPM structures are big-endian (event logs, which reader was written
// for, little-endian).

func (r *reader) u16be() uint16 {
	if s := r.take(2); s != nil {
		return binary.BigEndian.Uint16(s)
	}
	return 0
}

func (r *reader) u32be() uint32 {
	if s := r.take(4); s != nil {
		return binary.BigEndian.Uint32(s)
	}
	return 0
}

func (r *reader) u64be() uint64 {
	if s := r.take(8); s != nil {
		return binary.BigEndian.Uint64(s)
	}
	return 0
}

// sized reads a TPM2B's contents (a 16-bit size, then that many bytes),
// copied: the structure outlives the caller's buffer.
func (r *reader) sized() []byte {
	v := r.take(int(r.u16be()))
	if r.bad {
		return nil
	}
	return append(make([]byte, 0, len(v)), v...)
}

// parseAttest reads a TPMS_ATTEST as unmarshalStrict does.
func parseAttest(b []byte) (*tpm2.TPMSAttest, error) {
	if len(b) < 6 || tpm2.TPMST(binary.BigEndian.Uint16(b[4:6])) != tpm2.TPMSTAttestQuote {
		return unmarshalStrict[tpm2.TPMSAttest]("TPMS_ATTEST", b)
	}
	r := &reader{b: b}
	a := &tpm2.TPMSAttest{Magic: tpm2.TPMGenerated(r.u32be()), Type: tpm2.TPMST(r.u16be())}
	a.QualifiedSigner.Buffer = r.sized()
	a.ExtraData.Buffer = r.sized()
	a.ClockInfo.Clock = r.u64be()
	a.ClockInfo.ResetCount = r.u32be()
	a.ClockInfo.RestartCount = r.u32be()
	safe := r.u8()
	a.ClockInfo.Safe = safe == 1
	a.FirmwareVersion = r.u64be()
	var info tpm2.TPMSQuoteInfo
	n := r.u32be()
	// Each selection is at least 3 bytes: a count that the rest cannot
	// hold is refused before anything is made of it.
	if !r.bad && uint64(n)*3 > uint64(r.left()) {
		r.bad = true
	}
	if !r.bad && n > 0 {
		info.PCRSelect.PCRSelections = make([]tpm2.TPMSPCRSelection, 0, n)
	}
	for i := uint32(0); i < n && !r.bad; i++ {
		s := tpm2.TPMSPCRSelection{Hash: tpm2.TPMIAlgHash(r.u16be())}
		sel := r.take(int(r.u8()))
		s.PCRSelect = append(make([]byte, 0, len(sel)), sel...)
		info.PCRSelect.PCRSelections = append(info.PCRSelect.PCRSelections, s)
	}
	info.PCRDigest.Buffer = r.sized()
	switch {
	case r.bad:
		return nil, fmt.Errorf("%w: TPMS_ATTEST: truncated", ErrBadEvidence)
	case r.left() != 0 || safe > 1:
		return nil, fmt.Errorf("%w: TPMS_ATTEST: trailing or non-canonical bytes", ErrBadEvidence)
	}
	a.Attested = tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &info)
	return a, nil
}

// parseSignature parses a marshalled TPMT_SIGNATURE, strictly.
func parseSignature(b []byte) (*tpm2.TPMTSignature, error) {
	if len(b) > maxSignatureSize {
		return nil, fmt.Errorf("%w: signature of %d bytes (limit %d)", ErrBadEvidence, len(b), maxSignatureSize)
	}
	if len(b) < 2 || tpm2.TPMAlgID(binary.BigEndian.Uint16(b)) != tpm2.TPMAlgECDSA {
		return unmarshalStrict[tpm2.TPMTSignature]("TPMT_SIGNATURE", b)
	}
	r := &reader{b: b}
	alg := tpm2.TPMAlgID(r.u16be())
	s := tpm2.TPMSSignatureECC{Hash: tpm2.TPMIAlgHash(r.u16be())}
	s.SignatureR.Buffer = r.sized()
	s.SignatureS.Buffer = r.sized()
	switch {
	case r.bad:
		return nil, fmt.Errorf("%w: TPMT_SIGNATURE: truncated", ErrBadEvidence)
	case r.left() != 0:
		return nil, fmt.Errorf("%w: TPMT_SIGNATURE: trailing or non-canonical bytes", ErrBadEvidence)
	}
	return &tpm2.TPMTSignature{SigAlg: alg, Signature: tpm2.NewTPMUSignature(alg, &s)}, nil
}
