package attest

import (
	"bytes"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// The hand-written readers (attestparse.go) against go-tpm's unmarshal,
// held strict as unmarshalStrict holds it: on every input both accept or
// both refuse, and what they accept is the same structure.

func sampleAttests() [][]byte {
	quote := func(sel []tpm2.TPMSPCRSelection, safe bool, nonce []byte) []byte {
		return tpm2.Marshal(tpm2.TPMSAttest{Magic: tpm2.TPMGeneratedValue, Type: tpm2.TPMSTAttestQuote,
			QualifiedSigner: tpm2.TPM2BName{Buffer: append([]byte{0, 0x0b}, bytes.Repeat([]byte{7}, 32)...)},
			ExtraData:       tpm2.TPM2BData{Buffer: nonce},
			ClockInfo:       tpm2.TPMSClockInfo{Clock: 123456789, ResetCount: 3, RestartCount: 1, Safe: safe},
			FirmwareVersion: 0x0102030405060708,
			Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
				PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: sel},
				PCRDigest: tpm2.TPM2BDigest{Buffer: bytes.Repeat([]byte{9}, 32)}})})
	}
	certify := tpm2.Marshal(tpm2.TPMSAttest{Magic: tpm2.TPMGeneratedValue, Type: tpm2.TPMSTAttestCertify,
		QualifiedSigner: tpm2.TPM2BName{Buffer: []byte{0, 0x0b, 1}}, ExtraData: tpm2.TPM2BData{Buffer: []byte("nonce")},
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestCertify, &tpm2.TPMSCertifyInfo{Name: tpm2.TPM2BName{Buffer: []byte{0, 0x0b, 2}}})})
	return [][]byte{
		quote([]tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{0xff, 0, 0}}}, true, make([]byte, 41)),
		quote([]tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{0xff, 0x13, 0x40}}, {Hash: tpm2.TPMAlgSHA384, PCRSelect: []byte{1}}}, false, []byte("n")),
		quote(nil, false, nil),
		quote([]tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA1}}, true, make([]byte, 64)),
		certify,
	}
}

func sampleSignatures() [][]byte {
	return [][]byte{
		tpm2.Marshal(tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
			Hash: tpm2.TPMAlgSHA256, SignatureR: tpm2.TPM2BECCParameter{Buffer: bytes.Repeat([]byte{1}, 32)}, SignatureS: tpm2.TPM2BECCParameter{Buffer: bytes.Repeat([]byte{2}, 32)}})}),
		tpm2.Marshal(tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{Hash: tpm2.TPMAlgSHA384})}),
		tpm2.Marshal(tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgRSASSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgRSASSA, &tpm2.TPMSSignatureRSA{
			Hash: tpm2.TPMAlgSHA256, Sig: tpm2.TPM2BPublicKeyRSA{Buffer: bytes.Repeat([]byte{3}, 256)}})}),
	}
}

// mutations are b's neighbours: each byte zeroed, set to 0xff and
// incremented, every truncation, a byte appended, and a byte inserted at
// every offset.
func mutations(b []byte) [][]byte {
	out := [][]byte{b}
	for i := range b {
		for _, f := range []func(byte) byte{func(byte) byte { return 0 }, func(byte) byte { return 0xff }, func(c byte) byte { return c + 1 }} {
			m := bytes.Clone(b)
			m[i] = f(m[i])
			out = append(out, m)
		}
		out = append(out, bytes.Clone(b[:i]))
		out = append(out, append(append(bytes.Clone(b[:i]), 0x01), b[i:]...))
	}
	return append(out, append(bytes.Clone(b), 0))
}

func diffAttest(t *testing.T, b []byte) {
	got, gerr := parseAttest(b)
	want, werr := unmarshalStrict[tpm2.TPMSAttest]("TPMS_ATTEST", b)
	if (gerr == nil) != (werr == nil) {
		t.Fatalf("%x: parseAttest says %v, go-tpm %v", b, gerr, werr)
	}
	if gerr != nil {
		if !errors.Is(gerr, ErrBadEvidence) {
			t.Fatalf("%x: an error without ErrBadEvidence: %v", b, gerr)
		}
		return
	}
	if m := tpm2.Marshal(*got); !bytes.Equal(m, b) || !bytes.Equal(m, tpm2.Marshal(*want)) {
		t.Fatalf("%x: parseAttest's structure marshals to %x", b, m)
	}
	if got.Magic != want.Magic || got.Type != want.Type || got.ClockInfo != want.ClockInfo || got.FirmwareVersion != want.FirmwareVersion ||
		!bytes.Equal(got.QualifiedSigner.Buffer, want.QualifiedSigner.Buffer) || !bytes.Equal(got.ExtraData.Buffer, want.ExtraData.Buffer) {
		t.Fatalf("%x: %+v, go-tpm %+v", b, got, want)
	}
	if want.Type != tpm2.TPMSTAttestQuote {
		return
	}
	gq, gerr := got.Attested.Quote()
	wq, werr := want.Attested.Quote()
	if gerr != nil || werr != nil || !bytes.Equal(gq.PCRDigest.Buffer, wq.PCRDigest.Buffer) || len(gq.PCRSelect.PCRSelections) != len(wq.PCRSelect.PCRSelections) {
		t.Fatalf("%x: quote info %+v %v, go-tpm %+v %v", b, gq, gerr, wq, werr)
	}
	for i, s := range gq.PCRSelect.PCRSelections {
		if w := wq.PCRSelect.PCRSelections[i]; s.Hash != w.Hash || !bytes.Equal(s.PCRSelect, w.PCRSelect) {
			t.Fatalf("%x: selection %d: %+v, go-tpm %+v", b, i, s, w)
		}
	}
}

func diffSignature(t *testing.T, b []byte) {
	got, gerr := parseSignature(b)
	var want *tpm2.TPMTSignature
	werr := errors.New("too long")
	if len(b) <= maxSignatureSize {
		want, werr = unmarshalStrict[tpm2.TPMTSignature]("TPMT_SIGNATURE", b)
	}
	if (gerr == nil) != (werr == nil) {
		t.Fatalf("%x: parseSignature says %v, go-tpm %v", b, gerr, werr)
	}
	if gerr != nil {
		if !errors.Is(gerr, ErrBadEvidence) {
			t.Fatalf("%x: an error without ErrBadEvidence: %v", b, gerr)
		}
		return
	}
	if m := tpm2.Marshal(*got); !bytes.Equal(m, b) || !bytes.Equal(m, tpm2.Marshal(*want)) || got.SigAlg != want.SigAlg {
		t.Fatalf("%x: parseSignature's structure marshals to %x", b, m)
	}
	if want.SigAlg != tpm2.TPMAlgECDSA {
		return
	}
	g, gerr := got.Signature.ECDSA()
	w, werr := want.Signature.ECDSA()
	if gerr != nil || werr != nil || g.Hash != w.Hash || !bytes.Equal(g.SignatureR.Buffer, w.SignatureR.Buffer) || !bytes.Equal(g.SignatureS.Buffer, w.SignatureS.Buffer) {
		t.Fatalf("%x: %+v %v, go-tpm %+v %v", b, g, gerr, w, werr)
	}
}

func TestParseAttestMatchesGoTPM(t *testing.T) {
	for _, b := range sampleAttests() {
		for _, m := range mutations(b) {
			diffAttest(t, m)
		}
	}
	// A selection count the rest cannot hold is refused before anything
	// is allocated for it.
	b := sampleAttests()[0]
	off := 4 + 2 + 2 + 34 + 2 + 41 + 17 + 8
	huge := bytes.Clone(b)
	copy(huge[off:], []byte{0xff, 0xff, 0xff, 0xff})
	diffAttest(t, huge)
}

func TestParseSignatureMatchesGoTPM(t *testing.T) {
	for _, b := range sampleSignatures() {
		for _, m := range mutations(b) {
			diffSignature(t, m)
		}
	}
}

func FuzzParseAttest(f *testing.F) {
	for _, b := range sampleAttests() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > maxAttestSize {
			return // verifyAttest refuses it before either parser
		}
		diffAttest(t, b)
	})
}

func FuzzParseSignature(f *testing.F) {
	for _, b := range sampleSignatures() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) { diffSignature(t, b) })
}

// BenchmarkParseReplay is a fleet appraisal's log work: a 64 KiB log of
// 400-byte events parsed and replayed.
func BenchmarkParseReplay(b *testing.B) {
	l, err := NewEventLog(tpm2.TPMAlgSHA256)
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 400)
	var raw []byte
	for i := 0; len(raw) < 64<<10; i++ {
		data[0], data[1] = byte(i), byte(i>>8)
		if _, err := l.Append(i%8, EventType(0x80000001), data); err != nil {
			b.Fatal(err)
		}
		if raw, err = l.MarshalBinary(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		l, err := ParseEventLog(raw)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := l.Replay(Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// threeEventLog is a SHA-256 log of three small events, and its bytes.
func threeEventLog(t *testing.T) (*EventLog, []byte) {
	t.Helper()
	l, err := NewEventLog(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := l.Append(i, EventType(0x80000001), []byte{byte(i), 1, 2, 3}); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return l, raw
}

// TestParsedLogOwnsItsBytes: the parsed log keeps nothing of the caller's
// buffer, and an event's data or digest grown by append never runs into
// the next event's (they are capped slices of one copy).
func TestParsedLogOwnsItsBytes(t *testing.T) {
	l, raw := threeEventLog(t)
	p, err := ParseEventLog(raw)
	if err != nil {
		t.Fatal(err)
	}
	clear(raw)
	_ = append(p.Events[0].Data, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee)
	_ = append(p.Events[0].Digests[0].Digest, 0xee)
	for i, e := range p.Events {
		if !bytes.Equal(e.Data, l.Events[i].Data) || !bytes.Equal(e.Digest(tpm2.TPMAlgSHA256), l.Events[i].Digest(tpm2.TPMAlgSHA256)) {
			t.Fatalf("event %d changed: %x", i, e.Data)
		}
	}
}

// TestOwnedLogAppendsStayOut: a log parsed in place is slices of the
// caller's buffer, capped: an event's data or digest grown by append never
// writes into the buffer or the next event.
func TestOwnedLogAppendsStayOut(t *testing.T) {
	l, raw := threeEventLog(t)
	was := bytes.Clone(raw)
	p, err := ParseOwnedEventLog(raw)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range p.Events {
		_ = append(e.Data, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee)
		_ = append(e.Digests[0].Digest, 0xee)
	}
	if !bytes.Equal(raw, was) {
		t.Fatal("an append to a parsed event wrote into the caller's buffer")
	}
	for i, e := range p.Events {
		if !bytes.Equal(e.Data, l.Events[i].Data) || !bytes.Equal(e.Digest(tpm2.TPMAlgSHA256), l.Events[i].Digest(tpm2.TPMAlgSHA256)) {
			t.Fatalf("event %d changed: %x", i, e.Data)
		}
	}
}
