package tpm_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

const testGatedHandle tpm2.TPMHandle = 0x01500012

// rawPasswordExtend is TPM2_NV_Extend as tpm2_nvextend sends it for an index
// with an empty password: what any other process can send.
func rawPasswordExtend(t *testing.T, tp *tpm.TPM, h tpm2.TPMHandle, data []byte) tpm2.TPMRC {
	t.Helper()
	var b []byte
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMSTSessions))
	b = binary.BigEndian.AppendUint32(b, 0) // size, below
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMCCNVExtend))
	b = binary.BigEndian.AppendUint32(b, uint32(h))
	b = binary.BigEndian.AppendUint32(b, uint32(h))
	b = binary.BigEndian.AppendUint32(b, 9)
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMRSPW))
	b = append(b, 0, 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
	b = append(b, data...)
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	rsp, err := tp.Send(b)
	if err != nil {
		t.Fatal(err)
	}
	return tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
}

// A gated extend index takes extends only from a session that proved the
// gate's authorization: its name is the one computed offline from the gate's
// name, the gated extend chains like any other, and an empty-password extend
// (tpm2_nvextend by another process) is refused by the TPM.
func TestGatedExtendIndex(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := tp.Create(srk, nil, tpm.GateTemplate(), nil)
	if err != nil {
		t.Fatal(err)
	}
	gate, err := tp.Load(srk, nil, blob)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Flush(gate.Handle)
	pub, err := tpm.GatedExtendPublic(testGatedHandle, gate.Name.Buffer, false)
	if err != nil {
		t.Fatal(err)
	}
	x, err := tp.DefineNV(pub)
	if err != nil {
		t.Fatal(err)
	}
	undefineAtEnd(t, tp, testGatedHandle)
	if want, _ := tpm.NVPublicName(pub); !bytes.Equal(x.Name.Buffer, want) {
		t.Fatalf("defined name %x, computed %x", x.Name.Buffer, want)
	}
	if rc := rawPasswordExtend(t, tp, testGatedHandle, []byte("stray")); rc == tpm2.TPMRCSuccess {
		t.Fatal("an empty-password extend of a gated index succeeded")
	} else {
		t.Logf("empty-password extend: %v", rc)
	}
	d := sha256.Sum256([]byte("head"))
	if err := tp.NVExtendGated(testGatedHandle, d[:], gate); err != nil {
		t.Fatal(err)
	}
	got, err := tp.Anchor(testGatedHandle).Read()
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(append(make([]byte, 32), d[:]...))
	if !bytes.Equal(got, want[:]) {
		t.Fatalf("gated extend gives %x, want %x", got, want)
	}
	written, _ := tpm.GatedExtendPublic(testGatedHandle, gate.Name.Buffer, true)
	if name, _ := tp.NVName(testGatedHandle); !bytes.Equal(name.Buffer, mustName(t, written)) {
		t.Fatalf("written name %x, computed %x", name.Buffer, mustName(t, written))
	}

	// Another key under the same SRK (anyone can make one) does not pass.
	other, err := tp.Create(srk, nil, tpm.GateTemplate(), nil)
	if err != nil {
		t.Fatal(err)
	}
	og, err := tp.Load(srk, nil, other)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Flush(og.Handle)
	if err := tp.NVExtendGated(testGatedHandle, d[:], og); !errors.Is(err, tpm.ErrPolicyNotSatisfied) && !errors.Is(err, tpm2.TPMRCPolicyFail) {
		t.Fatalf("extend with another key: %v, want a policy failure", err)
	}
}

func mustName(t *testing.T, p tpm2.TPMSNVPublic) []byte {
	t.Helper()
	n, err := tpm.NVPublicName(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
