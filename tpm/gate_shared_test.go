package tpm_test

import (
	"bytes"
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// pinnedGateBlob pins tp's SRK and creates a gate under it: the SRK, the
// gate's blob and its authorization value.
func pinnedGateBlob(t *testing.T, tp *tpm.TPM) (tpm.Object, tpm.Blob, []byte) {
	t.Helper()
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.PinSRK(srk.Public); err != nil {
		t.Fatal(err)
	}
	auth := newGateAuth(t)
	blob, err := tp.CreateGate(srk, auth)
	if err != nil {
		t.Fatal(err)
	}
	return srk, blob, auth
}

// writtenGatedIndex defines a gated extend index at testGatedHandle under a
// new gate, with the SRK pinned, extends it once with first, and returns
// the loaded gate (flushed at the test's end) and the index as it is now.
func writtenGatedIndex(t *testing.T, tp *tpm.TPM, first []byte) (tpm.Gate, tpm.NVIndex) {
	t.Helper()
	gate, x, _, _ := gatedIndex(t, tp, testGatedHandle, first)
	return gate, x
}

// gatedIndex is writtenGatedIndex at h, with the gate's blob and value
// (for a test that loads the gate again, or knows its value).
func gatedIndex(t *testing.T, tp *tpm.TPM, h tpm2.TPMHandle, first []byte) (tpm.Gate, tpm.NVIndex, tpm.Blob, []byte) {
	t.Helper()
	srk, blob, auth := pinnedGateBlob(t, tp)
	gate, err := tp.LoadGate(srk, blob, auth)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Flush(gate.Handle) })
	pub, err := tpm.GatedExtendPublic(h, gate.Name.Buffer, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tp.DefineNV(pub); err != nil {
		t.Fatal(err)
	}
	undefineAtEnd(t, tp, h)
	if err := tp.NVExtendGated(h, first, gate); err != nil {
		t.Fatal(err)
	}
	x, err := tp.ReadNVPublic(h)
	if err != nil {
		t.Fatal(err)
	}
	return gate, x, blob, auth
}

// One session reads the gated anchor and proves the gate for its next
// extend (issue 14): 6 commands, then the extend and the policy session's
// flush; the value read is the TPM's and the extend chains on it.
func TestReadPrepareGatedExtend(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	d := sha256.Sum256([]byte("head"))
	gate, x := writtenGatedIndex(t, tp, d[:])
	d2 := sha256.Sum256([]byte("next"))
	before := tp.Stats()
	v, ge, err := tp.ReadPrepareGatedExtend(x, gate, d2[:])
	if err != nil {
		t.Fatal(err)
	}
	if n := tp.Stats().Sub(before).Commands; n != 6 {
		t.Errorf("read and prepare: %d commands, want 6", n)
	}
	want := sha256.Sum256(append(make([]byte, 32), d[:]...))
	if !bytes.Equal(v, want[:]) {
		t.Fatalf("read %x, want %x", v, want)
	}
	if err := ge.Extend(); err != nil {
		t.Fatal(err)
	}
	if err := ge.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := tp.Anchor(testGatedHandle).Read()
	if err != nil {
		t.Fatal(err)
	}
	want2 := sha256.Sum256(append(want[:], d2[:]...))
	if !bytes.Equal(got, want2[:]) {
		t.Fatalf("after the extend %x, want %x", got, want2)
	}
}
