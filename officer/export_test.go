package officer

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/provd/provd/api/errkind"
)

// exportFixture is an officer key, a PK policy digest and two TPM names.
func exportFixture(t testing.TB) (officer *ecdsa.PrivateKey, pk, obj, kek []byte) {
	officer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("pk policy"))
	obj = append([]byte{0, 0x0b}, bytes.Repeat([]byte{7}, 32)...)
	kek = append([]byte{0, 0x0b}, bytes.Repeat([]byte{9}, 32)...)
	return officer, d[:], obj, kek
}

// An export approval's two parts: the duplication the TPM checks (the
// same digest ApproveDuplication signs) and the KEK part, which names the
// KEK and binds that duplication: it differs for another KEK, key or PK
// policy, and has a policyRef of its own.
func TestExportApprovalParts(t *testing.T) {
	officer, pk, obj, kek := exportFixture(t)
	dup, kekPart, err := ApproveExport(officer, pk, obj, kek)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dup.ApprovedPolicy, DupApproved(pk, obj, ExportParent)) || !bytes.Equal(dup.PolicyRef, DupRef) {
		t.Errorf("the duplication part is not the approval of the duplication to TPM_RH_NULL")
	}
	if !bytes.Equal(kekPart.ApprovedPolicy, ExportKEKApproved(pk, obj, kek)) || !bytes.Equal(kekPart.PolicyRef, ExportKEKRef) {
		t.Errorf("the KEK part is not the approval of this KEK")
	}
	for _, ref := range [][]byte{DeriveRef, DupRef} {
		if bytes.Equal(ref, ExportKEKRef) {
			t.Errorf("ExportKEKRef is another approval's policyRef %q", ref)
		}
	}
	other := bytes.Clone(kek)
	other[33] ^= 1
	pk2 := bytes.Clone(pk)
	pk2[0] ^= 1
	want := ExportKEKApproved(pk, obj, kek)
	for what, d := range map[string][]byte{
		"another KEK":       ExportKEKApproved(pk, obj, other),
		"another key":       ExportKEKApproved(pk, other, kek),
		"another PK policy": ExportKEKApproved(pk2, obj, kek),
		"the duplication":   DupApproved(pk, obj, ExportParent),
	} {
		if bytes.Equal(d, want) {
			t.Errorf("the KEK part's digest is the same for %s", what)
		}
	}
	// Names that are not SHA-256 TPM names, and a zero PK policy: refused.
	for _, bad := range [][]byte{nil, kek[:33], append(bytes.Clone(kek), 0), append([]byte{0, 0x04}, kek[2:]...), ExportParent} {
		if _, _, err := ApproveExport(officer, pk, obj, bad); !errors.Is(err, errkind.ErrBadInput) {
			t.Errorf("KEK name %x: %v", bad, err)
		}
		if _, _, err := ApproveExport(officer, pk, bad, kek); !errors.Is(err, errkind.ErrBadInput) {
			t.Errorf("key name %x: %v", bad, err)
		}
	}
	if _, _, err := ApproveExport(officer, make([]byte, 32), obj, kek); !errors.Is(err, errkind.ErrBadInput) {
		t.Errorf("zero PK policy: %v", err)
	}
}
