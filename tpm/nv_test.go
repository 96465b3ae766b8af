package tpm_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// Test NV handles, in the owner range.
const (
	testCounterHandle tpm2.TPMHandle = 0x01500010
	testExtendHandle  tpm2.TPMHandle = 0x01500011
)

// undefineAtEnd removes an index when the test ends (before the harness
// closes the TPM).
func undefineAtEnd(t *testing.T, tp *tpm.TPM, h tpm2.TPMHandle) {
	t.Helper()
	t.Cleanup(func() {
		if err := tp.UndefineNV(h); err != nil {
			t.Errorf("undefine 0x%08x: %v", uint32(h), err)
		}
	})
}

func TestCounter(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	x, err := tp.DefineCounter(testCounterHandle)
	if err != nil {
		t.Fatal(err)
	}
	undefineAtEnd(t, tp, testCounterHandle)

	a := x.Public.Attributes
	if x.Handle != testCounterHandle || a.NT != tpm2.TPMNTCounter || !a.AuthWrite || !a.AuthRead || !a.NoDA || !a.Written {
		t.Fatalf("counter = %+v", x)
	}
	// The returned name is the written index's name, the one policies bind to.
	name, err := tp.NVName(testCounterHandle)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(name.Buffer, x.Name.Buffer) {
		t.Fatalf("DefineCounter returned name %x, the TPM now says %x", x.Name.Buffer, name.Buffer)
	}
	want, err := tpm2.NVName(&x.Public)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(want.Buffer, x.Name.Buffer) {
		t.Fatalf("name %x does not hash the public area (%x)", x.Name.Buffer, want.Buffer)
	}
	// The same name is computed offline, for devices to agree on it.
	pub := tpm.CounterPublic(testCounterHandle)
	offline, err := tpm2.NVName(&pub)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(offline.Buffer, x.Name.Buffer) {
		t.Fatalf("CounterPublic gives name %x, the TPM's counter has %x", offline.Buffer, x.Name.Buffer)
	}

	v0, err := tp.ReadCounter(testCounterHandle)
	if err != nil {
		t.Fatal(err)
	}
	if v0 == 0 {
		t.Fatal("counter is 0 after its first increment")
	}
	before := tp.Stats()
	if err := tp.Increment(testCounterHandle); err != nil {
		t.Fatal(err)
	}
	t.Logf("Increment: %d commands", tp.Stats().Sub(before).Commands)
	v1, err := tp.ReadCounter(testCounterHandle)
	if err != nil {
		t.Fatal(err)
	}
	if v1 != v0+1 {
		t.Fatalf("counter %d after increment from %d", v1, v0)
	}

	hs, err := tp.ListNV()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(hs, testCounterHandle) {
		t.Fatalf("ListNV = %x, no 0x%08x", hs, uint32(testCounterHandle))
	}
	// An index that is not a counter is refused before anything is sent.
	wantProvdRefusal(t, tp.Increment(0x01c00002), "Increment of the EK certificate index")
}

// A counter never goes back, not even when it is undefined and defined again.
func TestCounterMonotonicAcrossRedefine(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	if _, err := tp.DefineCounter(testCounterHandle); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := tp.Increment(testCounterHandle); err != nil {
			t.Fatal(err)
		}
	}
	v, err := tp.ReadCounter(testCounterHandle)
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.UndefineNV(testCounterHandle); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.ReadNVPublic(testCounterHandle); !errors.Is(err, tpm.ErrNotFound) {
		t.Fatalf("after undefine: %v, want ErrNotFound", err)
	}
	if _, err := tp.DefineCounter(testCounterHandle); err != nil {
		t.Fatal(err)
	}
	undefineAtEnd(t, tp, testCounterHandle)
	w, err := tp.ReadCounter(testCounterHandle)
	if err != nil {
		t.Fatal(err)
	}
	if w <= v {
		t.Fatalf("redefined counter at %d, was %d before", w, v)
	}
}

func TestNVAnchor(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	x, err := tp.DefineExtendIndex(testExtendHandle)
	if err != nil {
		t.Fatal(err)
	}
	undefineAtEnd(t, tp, testExtendHandle)
	if a := x.Public.Attributes; a.NT != tpm2.TPMNTExtend || x.Public.DataSize != 32 || a.Written {
		t.Fatalf("extend index = %+v", x)
	}

	anchor := tp.Anchor(testExtendHandle)
	_, err = anchor.Read()
	if !errors.Is(err, tpm.ErrNVUninitialized) || !errors.Is(err, tpm2.TPMRCNVUninitialized) {
		t.Fatalf("Read before the first extend: %v, want ErrNVUninitialized", err)
	}

	a, b := []byte("first head"), sha256.Sum256([]byte("second head"))
	before := tp.Stats()
	if err := anchor.Extend(a); err != nil {
		t.Fatal(err)
	}
	if n := tp.Stats().Sub(before).Commands; n != 1 {
		t.Errorf("Extend took %d commands, want 1", n)
	}
	if err := anchor.Extend(b[:]); err != nil {
		t.Fatal(err)
	}
	got, err := anchor.Read()
	if err != nil {
		t.Fatal(err)
	}
	h1 := sha256.Sum256(append(make([]byte, 32), a...))
	want := sha256.Sum256(append(h1[:], b[:]...))
	if !bytes.Equal(got, want[:]) {
		t.Fatalf("anchor = %x, want %x", got, want)
	}
	// The name changed at the first write.
	name, err := tp.NVName(testExtendHandle)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(name.Buffer, x.Name.Buffer) {
		t.Error("extend index name did not change at its first write")
	}
}

// An anchor over an index that is not a SHA-256 extend index is refused, and
// one over a missing index says so.
func TestNVAnchorRefusesOtherIndices(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	if _, err := tp.DefineCounter(testCounterHandle); err != nil {
		t.Fatal(err)
	}
	undefineAtEnd(t, tp, testCounterHandle)
	_, err := tp.Anchor(testCounterHandle).Read()
	wantProvdRefusal(t, err, "Read of a counter as an anchor")
	// The TPM itself refuses TPM2_NV_Extend on an index that is not of type
	// TPM_NT_EXTEND.
	if err := tp.Anchor(testCounterHandle).Extend([]byte("x")); !errors.Is(err, tpm2.TPMRCAttributes) {
		t.Errorf("Extend of a counter: %v, want TPM_RC_ATTRIBUTES", err)
	}
	if _, err := tp.Anchor(testExtendHandle).Read(); !errors.Is(err, tpm.ErrNotFound) {
		t.Errorf("Read of a missing index: %v, want ErrNotFound", err)
	}
	if err := tp.Anchor(testExtendHandle).Extend([]byte("x")); !errors.Is(err, tpm.ErrNotFound) {
		t.Errorf("Extend of a missing index: %v, want ErrNotFound", err)
	}
	_, err = tp.DefineExtendIndex(0x81000001)
	wantProvdRefusal(t, err, "DefineExtendIndex of a persistent object handle")
}
