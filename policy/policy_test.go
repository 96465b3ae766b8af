package policy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/catalog"
)

var sessionAlgs = []tpm2.TPMIAlgHash{tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384}

// TestStepDigestKAT checks each step's digest against the formulas of TPM 2.0
// Part 3, computed here by hand with the standard library only.
func TestStepDigestKAT(t *testing.T) {
	const (
		ccPolicyPCR           = 0x0000017F
		ccPolicyOR            = 0x00000171
		ccPolicyCommandCode   = 0x0000016C
		ccPolicyDupSelect     = 0x00000188
		ccPolicyNV            = 0x00000149
		ccPolicyAuthorize     = 0x0000016A
		ccDuplicate           = 0x0000014B
		eoUnsignedLE          = 0x0009
		algSHA256, algSHA384  = 0x000b, 0x000c
		sizeofSelectPCClient3 = 3
	)
	p256, _, _ := testKeys(t)
	signerName, err := SignerName(p256.Public())
	if err != nil {
		t.Fatal(err)
	}
	objName, parentName, nvName := testName(0x0b), testName(0x9a), testName(0x77)

	for _, alg := range sessionAlgs {
		zero := make([]byte, newHash(t, alg)().Size())
		vals := testValues(BankSHA384, 0, 2, 4, 7)
		pcrSel := slices.Concat(u32(1), u16(algSHA384), []byte{sizeofSelectPCClient3, 0x95, 0, 0})
		pcrDigest := h(t, alg, vals.Values[0], vals.Values[2], vals.Values[4], vals.Values[7])
		ccA := h(t, alg, zero, u32(ccPolicyCommandCode), u32(ccDuplicate))
		ccB := h(t, alg, zero, u32(ccPolicyCommandCode), u32(0x00000153)) // TPM_CC_Create
		operandB := binary.BigEndian.AppendUint64(nil, 42)
		nvArgs := h(t, alg, operandB, u16(0), u16(eoUnsignedLE))
		ref := []byte("fw")
		authFirst := h(t, alg, zero, u32(ccPolicyAuthorize), signerName)

		tests := []struct {
			name   string
			policy Policy
			want   []byte
		}{
			{"PolicyPCR", Policy{PCR{Values: vals}},
				h(t, alg, zero, u32(ccPolicyPCR), pcrSel, pcrDigest)},
			{"PolicyCommandCode", Policy{CommandCode{CC: tpm2.TPMCCDuplicate}}, ccA},
			{"PolicyOR", Policy{Or{Branches: []Policy{{CommandCode{CC: tpm2.TPMCCDuplicate}}, {CommandCode{CC: tpm2.TPMCCCreate}}}}},
				h(t, alg, zero, u32(ccPolicyOR), ccA, ccB)},
			{"PolicyDuplicationSelect/include", Policy{DuplicationSelect{NewParentName: parentName, ObjectName: objName, IncludeObject: true}},
				h(t, alg, zero, u32(ccPolicyDupSelect), objName, parentName, []byte{1})},
			{"PolicyDuplicationSelect/exclude", Policy{DuplicationSelect{NewParentName: parentName}},
				h(t, alg, zero, u32(ccPolicyDupSelect), parentName, []byte{0})},
			{"PolicyDuplicationSelect/null parent", Policy{DuplicationSelect{NewParentName: u32(0x40000007)}},
				h(t, alg, zero, u32(ccPolicyDupSelect), u32(0x40000007), []byte{0})},
			{"PolicyNV", Policy{NV{IndexName: nvName, Index: 0x01500010, OperandB: operandB, Op: tpm2.TPMEOUnsignedLE}},
				h(t, alg, zero, u32(ccPolicyNV), nvArgs, nvName)},
			{"PolicyAuthorize", Policy{Authorize{Signer: p256.Public(), PolicyRef: ref}},
				h(t, alg, authFirst, ref)},
			{"PolicyAuthorize/empty ref", Policy{Authorize{Signer: p256.Public()}},
				h(t, alg, authFirst)},
			{"PolicyAuthorize then CommandCode", Policy{Authorize{Signer: p256.Public(), PolicyRef: ref}, CommandCode{CC: tpm2.TPMCCDuplicate}},
				h(t, alg, h(t, alg, authFirst, ref), u32(ccPolicyCommandCode), u32(ccDuplicate))},
			{"DuplicationSelect then CommandCode", Policy{DuplicationSelect{NewParentName: parentName}, CommandCode{CC: tpm2.TPMCCDuplicate}},
				h(t, alg, h(t, alg, zero, u32(ccPolicyDupSelect), parentName, []byte{0}), u32(ccPolicyCommandCode), u32(ccDuplicate))},
		}
		for _, tc := range tests {
			t.Run(catalog.HashName(alg)+"/"+tc.name, func(t *testing.T) {
				got, err := tc.policy.Digest(alg)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, tc.want) {
					t.Fatalf("digest %x, want %x", got, tc.want)
				}
			})
		}
	}
}

func TestOrSemantics(t *testing.T) {
	a := Policy{CommandCode{CC: tpm2.TPMCCDuplicate}}
	b := Policy{CommandCode{CC: tpm2.TPMCCCreate}}
	alg := tpm2.TPMAlgSHA256
	ab, err := Policy{Or{Branches: []Policy{a, b}}}.Digest(alg)
	if err != nil {
		t.Fatal(err)
	}
	ba, err := Policy{Or{Branches: []Policy{b, a}}}.Digest(alg)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(ab, ba) {
		t.Error("PolicyOR digest must depend on branch order (the digest list is hashed in order)")
	}

	// Either branch satisfies the Or and leaves the same digest.
	for i := range 2 {
		r, _ := NewRecorder(alg)
		if err := (Policy{Or{Branches: []Policy{a, b}}}).Apply(r, ApplyOptions{Branches: []int{i}}); err != nil {
			t.Fatalf("branch %d: %v", i, err)
		}
		if !bytes.Equal(r.Digest(), ab) {
			t.Errorf("branch %d: digest %x, want %x", i, r.Digest(), ab)
		}
	}

	// The TPM refuses PolicyOR unless the current digest is in the list.
	r, _ := NewRecorder(alg)
	da, _ := a.Digest(alg)
	db, _ := b.Digest(alg)
	if err := r.PolicyOR([][]byte{da, db}); err == nil {
		t.Error("Recorder accepted PolicyOR from a fresh session whose digest is not in the list")
	}

	bad := []struct {
		name string
		p    Policy
	}{
		{"one branch", Policy{Or{Branches: []Policy{a}}}},
		{"nine branches", Policy{Or{Branches: slices.Repeat([]Policy{a}, 9)}}},
		{"empty branch", Policy{Or{Branches: []Policy{a, {}}}}},
		{"Or not first", Policy{CommandCode{CC: tpm2.TPMCCCreate}, Or{Branches: []Policy{a, b}}}},
		{"empty policy", Policy{}},
		{"nil step", Policy{nil}},
	}
	for _, tc := range bad {
		if _, err := tc.p.Digest(alg); err == nil {
			t.Errorf("%s: Digest accepted it", tc.name)
		}
	}

	// Eight branches is the TPM's maximum and is accepted.
	if _, err := (Policy{Or{Branches: slices.Repeat([]Policy{a}, 8)}}).Digest(alg); err != nil {
		t.Errorf("eight branches: %v", err)
	}
}

// TestApplyMatchesDigest shows, for every step kind and in both session hash
// algorithms, that executing a policy on a Recorder ends at Digest.
func TestApplyMatchesDigest(t *testing.T) {
	p256, p384, rsaKey := testKeys(t)
	vals := testValues(BankSHA256, 0, 7)
	dup := Policy{DuplicationSelect{NewParentName: testName(0x9a), ObjectName: testName(0x0b)}, CommandCode{CC: tpm2.TPMCCDuplicate}}
	use := Policy{PCR{Values: vals}, CommandCode{CC: tpm2.TPMCCLoad}}
	nv := Policy{NV{IndexName: testName(0x77), Index: 0x01500010, OperandB: []byte{0, 0, 0, 0, 0, 0, 0, 5}, Op: tpm2.TPMEOUnsignedLE}}

	sp256, err := SignPolicy(p256, vals, 5, []byte("fw"), testCounter)
	if err != nil {
		t.Fatal(err)
	}
	sp384, err := SignPolicy(p384, vals, 5, nil, testCounter)
	if err != nil {
		t.Fatal(err)
	}
	spRSA, err := SignPolicy(rsaKey, vals, 5, []byte("fw"), testCounter)
	if err != nil {
		t.Fatal(err)
	}
	signed := []*SignedPolicy{sp256, sp384, spRSA}

	tests := []struct {
		name       string
		policy     Policy
		opts       ApplyOptions
		calls      []tpm2.TPMCC
		sha256Only bool
	}{
		{"PCR", Policy{PCR{Values: vals}}, ApplyOptions{}, []tpm2.TPMCC{tpm2.TPMCCPolicyPCR}, false},
		{"PCR sha384 bank", Policy{PCR{Values: testValues(BankSHA384, 1, 2)}}, ApplyOptions{}, []tpm2.TPMCC{tpm2.TPMCCPolicyPCR}, false},
		{"CommandCode", Policy{CommandCode{CC: tpm2.TPMCCUnseal}}, ApplyOptions{}, []tpm2.TPMCC{tpm2.TPMCCPolicyCommandCode}, false},
		{"DuplicationSelect", dup, ApplyOptions{}, []tpm2.TPMCC{tpm2.TPMCCPolicyDuplicationSelect, tpm2.TPMCCPolicyCommandCode}, false},
		{"NV", nv, ApplyOptions{}, []tpm2.TPMCC{tpm2.TPMCCPolicyNV}, false},
		{"Or branch 0", Policy{Or{Branches: []Policy{use, dup}}}, ApplyOptions{Branches: []int{0}},
			[]tpm2.TPMCC{tpm2.TPMCCPolicyPCR, tpm2.TPMCCPolicyCommandCode, tpm2.TPMCCPolicyOR}, false},
		{"Or branch 1", Policy{Or{Branches: []Policy{use, dup}}, CommandCode{CC: tpm2.TPMCCDuplicate}}, ApplyOptions{Branches: []int{1}},
			[]tpm2.TPMCC{tpm2.TPMCCPolicyDuplicationSelect, tpm2.TPMCCPolicyCommandCode, tpm2.TPMCCPolicyOR, tpm2.TPMCCPolicyCommandCode}, false},
		{"nested Or", Policy{Or{Branches: []Policy{{Or{Branches: []Policy{use, nv}}}, dup}}}, ApplyOptions{Branches: []int{0, 1}},
			[]tpm2.TPMCC{tpm2.TPMCCPolicyNV, tpm2.TPMCCPolicyOR, tpm2.TPMCCPolicyOR}, false},
		{"Authorize p256", Policy{Authorize{Signer: p256.Public(), PolicyRef: []byte("fw")}}, ApplyOptions{Signed: signed},
			[]tpm2.TPMCC{tpm2.TPMCCPolicyPCR, tpm2.TPMCCPolicyNV, tpm2.TPMCCPolicyAuthorize}, true},
		{"Authorize p384", Policy{Authorize{Signer: p384.Public()}, CommandCode{CC: tpm2.TPMCCUnseal}}, ApplyOptions{Signed: signed},
			[]tpm2.TPMCC{tpm2.TPMCCPolicyPCR, tpm2.TPMCCPolicyNV, tpm2.TPMCCPolicyAuthorize, tpm2.TPMCCPolicyCommandCode}, true},
		{"Authorize rsa in Or", Policy{Or{Branches: []Policy{{Authorize{Signer: rsaKey.Public(), PolicyRef: []byte("fw")}}, use}}},
			ApplyOptions{Signed: signed, Branches: []int{0}},
			[]tpm2.TPMCC{tpm2.TPMCCPolicyPCR, tpm2.TPMCCPolicyNV, tpm2.TPMCCPolicyAuthorize, tpm2.TPMCCPolicyOR}, true},
	}
	for _, tc := range tests {
		for _, alg := range sessionAlgs {
			if tc.sha256Only && alg != tpm2.TPMAlgSHA256 {
				continue
			}
			t.Run(tc.name+"/"+catalog.HashName(alg), func(t *testing.T) {
				want, err := tc.policy.Digest(alg)
				if err != nil {
					t.Fatal(err)
				}
				r, err := NewRecorder(alg)
				if err != nil {
					t.Fatal(err)
				}
				if err := tc.policy.Apply(r, tc.opts); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(r.Digest(), want) {
					t.Errorf("Apply ended at %x, Digest is %x", r.Digest(), want)
				}
				if !slices.Equal(r.Calls, tc.calls) {
					t.Errorf("calls %v, want %v", r.Calls, tc.calls)
				}
			})
		}
	}
}

// nvSpy records the operandB of PolicyNV calls on top of a Recorder.
type nvSpy struct {
	*Recorder
	operands [][]byte
}

func (s *nvSpy) PolicyNV(index tpm2.TPMHandle, indexName, operandB []byte, offset uint16, op tpm2.TPMEO) error {
	s.operands = append(s.operands, operandB)
	return s.Recorder.PolicyNV(index, indexName, operandB, offset, op)
}

func TestAuthorizeUsesHighestVersion(t *testing.T) {
	p256, _, _ := testKeys(t)
	vals := testValues(BankSHA256, 7)
	var signed []*SignedPolicy
	for _, v := range []uint64{3, 9, 5} {
		sp, err := SignPolicy(p256, vals, v, nil, testCounter)
		if err != nil {
			t.Fatal(err)
		}
		signed = append(signed, sp)
	}
	r, _ := NewRecorder(tpm2.TPMAlgSHA256)
	spy := &nvSpy{Recorder: r}
	if err := (Policy{Authorize{Signer: p256.Public()}}).Apply(spy, ApplyOptions{Signed: signed}); err != nil {
		t.Fatal(err)
	}
	if len(spy.operands) != 1 || binary.BigEndian.Uint64(spy.operands[0]) != 9 {
		t.Fatalf("PolicyNV operands %x, want version 9", spy.operands)
	}
}

func TestApplyErrors(t *testing.T) {
	p256, p384, _ := testKeys(t)
	a := Policy{CommandCode{CC: tpm2.TPMCCDuplicate}}
	b := Policy{CommandCode{CC: tpm2.TPMCCCreate}}
	or := Policy{Or{Branches: []Policy{a, b}}}
	sp, err := SignPolicy(p256, testValues(BankSHA256, 7), 1, nil, testCounter)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		p    Policy
		opts ApplyOptions
		alg  tpm2.TPMIAlgHash
		is   error
	}{
		{"no branch chosen", or, ApplyOptions{}, tpm2.TPMAlgSHA256, nil},
		{"branch out of range", or, ApplyOptions{Branches: []int{2}}, tpm2.TPMAlgSHA256, nil},
		{"negative branch", or, ApplyOptions{Branches: []int{-1}}, tpm2.TPMAlgSHA256, nil},
		{"branches left over", or, ApplyOptions{Branches: []int{0, 1}}, tpm2.TPMAlgSHA256, nil},
		{"no signed policy", Policy{Authorize{Signer: p256.Public()}}, ApplyOptions{}, tpm2.TPMAlgSHA256, ErrNoSignedPolicy},
		{"signed by another key", Policy{Authorize{Signer: p384.Public()}}, ApplyOptions{Signed: []*SignedPolicy{sp}}, tpm2.TPMAlgSHA256, ErrNoSignedPolicy},
		{"other policyRef", Policy{Authorize{Signer: p256.Public(), PolicyRef: []byte("x")}}, ApplyOptions{Signed: []*SignedPolicy{sp}}, tpm2.TPMAlgSHA256, ErrNoSignedPolicy},
		{"signed policy in sha384 session", Policy{Authorize{Signer: p256.Public()}}, ApplyOptions{Signed: []*SignedPolicy{sp}}, tpm2.TPMAlgSHA384, nil},
		{"duplication without object name", Policy{DuplicationSelect{NewParentName: testName(1)}}, ApplyOptions{}, tpm2.TPMAlgSHA256, nil},
		{"hash alg mismatch", a, ApplyOptions{HashAlg: tpm2.TPMAlgSHA384}, tpm2.TPMAlgSHA256, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewRecorder(tc.alg)
			if err != nil {
				t.Fatal(err)
			}
			err = tc.p.Apply(r, tc.opts)
			if err == nil {
				t.Fatal("Apply succeeded")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("error %v is not %v", err, tc.is)
			}
		})
	}
}

// plainSession hides Recorder's HashAlg, like a Session that does not know it.
type plainSession struct{ Session }

func TestApplyHashAlgDefault(t *testing.T) {
	p := Policy{CommandCode{CC: tpm2.TPMCCUnseal}}
	r, _ := NewRecorder(tpm2.TPMAlgSHA256)
	if err := p.Apply(plainSession{r}, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	want, _ := p.Digest(tpm2.TPMAlgSHA256)
	if !bytes.Equal(r.Digest(), want) {
		t.Errorf("default algorithm is not SHA-256")
	}
	if err := p.Apply(plainSession{r}, ApplyOptions{HashAlg: tpm2.TPMAlgSHA1}); !errors.Is(err, catalog.ErrNotApproved) {
		t.Errorf("SHA-1 session: err = %v, want catalog.ErrNotApproved", err)
	}
}

func TestStepValidation(t *testing.T) {
	p256, _, _ := testKeys(t)
	bad := []struct {
		name string
		st   Step
	}{
		{"CommandCode zero", CommandCode{}},
		{"NV handle not NV", NV{IndexName: testName(1), Index: 0x81000001, OperandB: []byte{1}}},
		{"NV bad name", NV{IndexName: []byte{0, 0x0b, 1}, Index: 0x01000001, OperandB: []byte{1}}},
		{"NV empty operand", NV{IndexName: testName(1), Index: 0x01000001}},
		{"NV bad op", NV{IndexName: testName(1), Index: 0x01000001, OperandB: []byte{1}, Op: 0x0c}},
		{"DuplicationSelect no parent", DuplicationSelect{}},
		{"DuplicationSelect include without object", DuplicationSelect{NewParentName: testName(1), IncludeObject: true}},
		{"Authorize long ref", Authorize{Signer: p256.Public(), PolicyRef: fill(1, 33)}},
		{"Authorize nil signer", Authorize{}},
		{"PCR no values", PCR{}},
	}
	for _, tc := range bad {
		if _, err := (Policy{tc.st}).Digest(tpm2.TPMAlgSHA256); err == nil {
			t.Errorf("%s: Digest accepted it", tc.name)
		}
	}
	if _, err := (Policy{CommandCode{CC: tpm2.TPMCCLoad}}).Digest(tpm2.TPMAlgSHA1); !errors.Is(err, catalog.ErrNotApproved) {
		t.Errorf("SHA-1 digest: err = %v, want catalog.ErrNotApproved", err)
	}
	sha1Name := NV{IndexName: append([]byte{0, 4}, fill(1, 20)...), Index: 0x01000001, OperandB: []byte{1}}
	if _, err := (Policy{sha1Name}).Digest(tpm2.TPMAlgSHA256); !errors.Is(err, catalog.ErrNotApproved) {
		t.Errorf("NV sha1 name: err = %v, want catalog.ErrNotApproved", err)
	}
}
