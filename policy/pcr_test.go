package policy

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/catalog"
)

func TestParseBank(t *testing.T) {
	tests := []struct {
		in      string
		want    Bank
		wantErr error
	}{
		{"sha256", BankSHA256, nil},
		{"sha384", BankSHA384, nil},
		{"sha1", 0, catalog.ErrNotApproved},
		{"sha512", 0, catalog.ErrNotApproved},
		{"SHA256", 0, catalog.ErrNotApproved},
		{"", 0, catalog.ErrNotApproved},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseBank(tc.in)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("ParseBank(%q) error = %v, want %v", tc.in, err, tc.wantErr)
			}
			if got != tc.want {
				t.Fatalf("ParseBank(%q) = %v, want %v", tc.in, got, tc.want)
			}
			if err == nil && got.String() != tc.in {
				t.Fatalf("String() = %q", got.String())
			}
		})
	}
	if BankSHA256.Alg() != tpm2.TPMAlgSHA256 || BankSHA384.Hash().Size() != 48 {
		t.Fatal("bank algorithm mapping is wrong")
	}
}

var pcrListTests = []struct {
	in   string
	want []int
	ok   bool
}{
	{"0,2,4,7", []int{0, 2, 4, 7}, true},
	{"7,0,7, 4 ,2", []int{0, 2, 4, 7}, true},
	{"23", []int{23}, true},
	{"0", []int{0}, true},
	{"16,10,1", []int{1, 10, 16}, true},
	{"", nil, false},
	{" ", nil, false},
	{"24", nil, false},
	{"-1", nil, false},
	{"+1", nil, false},
	{"07", nil, false},
	{"0,,1", nil, false},
	{"0,", nil, false},
	{"0x1", nil, false},
	{"1-3", nil, false},
	{"100", nil, false},
	{"a", nil, false},
}

func TestParsePCRList(t *testing.T) {
	for _, tc := range pcrListTests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParsePCRList(tc.in)
			if (err == nil) != tc.ok {
				t.Fatalf("ParsePCRList(%q) error = %v, want ok=%v", tc.in, err, tc.ok)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("ParsePCRList(%q) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

const goodPCRJSON = `{"bank":"sha256","pcrs":{"0":"0000000000000000000000000000000000000000000000000000000000000000","7":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}`

var pcrValuesTests = []struct {
	name string
	in   string
	ok   bool
	is   error
}{
	{"good", goodPCRJSON, true, nil},
	{"sha384", `{"bank":"sha384","pcrs":{"23":"` + hexOf(0x11, 48) + `"}}`, true, nil},
	{"sha1 bank", `{"bank":"sha1","pcrs":{"0":"` + hexOf(0, 20) + `"}}`, false, catalog.ErrNotApproved},
	{"short digest", `{"bank":"sha256","pcrs":{"0":"` + hexOf(0, 20) + `"}}`, false, nil},
	{"sha384 digest in sha256 bank", `{"bank":"sha256","pcrs":{"0":"` + hexOf(0, 48) + `"}}`, false, nil},
	{"index 24", `{"bank":"sha256","pcrs":{"24":"` + hexOf(0, 32) + `"}}`, false, nil},
	{"leading zero", `{"bank":"sha256","pcrs":{"07":"` + hexOf(0, 32) + `"}}`, false, nil},
	{"negative", `{"bank":"sha256","pcrs":{"-1":"` + hexOf(0, 32) + `"}}`, false, nil},
	{"duplicate pcr", `{"bank":"sha256","pcrs":{"7":"` + hexOf(0, 32) + `","7":"` + hexOf(1, 32) + `"}}`, false, nil},
	{"duplicate bank", `{"bank":"sha256","bank":"sha384","pcrs":{"7":"` + hexOf(0, 32) + `"}}`, false, nil},
	{"unknown field", `{"bank":"sha256","extra":1,"pcrs":{"7":"` + hexOf(0, 32) + `"}}`, false, nil},
	{"trailing data", goodPCRJSON + `{}`, false, nil},
	{"no pcrs", `{"bank":"sha256","pcrs":{}}`, false, nil},
	{"missing bank", `{"pcrs":{"7":"` + hexOf(0, 32) + `"}}`, false, nil},
	{"bad hex", `{"bank":"sha256","pcrs":{"7":"zz` + hexOf(0, 31) + `"}}`, false, nil},
	{"empty value", `{"bank":"sha256","pcrs":{"7":""}}`, false, nil},
	{"not json", `bank=sha256`, false, nil},
	{"null", `null`, false, nil},
	{"array", `[]`, false, nil},
}

func hexOf(b byte, n int) string {
	const digits = "0123456789abcdef"
	s := make([]byte, 0, 2*n)
	for range n {
		s = append(s, digits[b>>4], digits[b&15])
	}
	return string(s)
}

func TestParsePCRValues(t *testing.T) {
	for _, tc := range pcrValuesTests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := ParsePCRValues([]byte(tc.in))
			if (err == nil) != tc.ok {
				t.Fatalf("ParsePCRValues error = %v, want ok=%v", err, tc.ok)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("error %v is not %v", err, tc.is)
			}
			if err != nil {
				return
			}
			out, err := v.MarshalJSON()
			if err != nil {
				t.Fatal(err)
			}
			back, err := ParsePCRValues(out)
			if err != nil {
				t.Fatalf("re-parse of %s: %v", out, err)
			}
			if !back.Equal(v) {
				t.Fatalf("round trip changed values: %v vs %v", back, v)
			}
		})
	}
}

func TestSelection(t *testing.T) {
	tests := []struct {
		pcrs []int
		want []byte
	}{
		{[]int{0, 2, 4, 7}, []byte{0x95, 0x00, 0x00}},
		{[]int{23}, []byte{0x00, 0x00, 0x80}},
		{[]int{8, 16}, []byte{0x00, 0x01, 0x01}},
	}
	for _, tc := range tests {
		for _, bank := range []Bank{BankSHA256, BankSHA384} {
			sel := testValues(bank, tc.pcrs...).Selection()
			if len(sel.PCRSelections) != 1 {
				t.Fatalf("%d selections", len(sel.PCRSelections))
			}
			s := sel.PCRSelections[0]
			if s.Hash != bank.Alg() || !bytes.Equal(s.PCRSelect, tc.want) {
				t.Errorf("Selection(%v, %v) = %v %x, want %x", bank, tc.pcrs, s.Hash, s.PCRSelect, tc.want)
			}
		}
	}
}

func TestCompositeDigest(t *testing.T) {
	for _, bank := range []Bank{BankSHA256, BankSHA384} {
		for _, alg := range []tpm2.TPMIAlgHash{tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384} {
			v := testValues(bank, 7, 0, 16)
			// Ascending PCR index order, hashed with the session's algorithm.
			want := h(t, alg, v.Values[0], v.Values[7], v.Values[16])
			got, err := v.CompositeDigest(alg)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("bank %v session 0x%04x: composite %x, want %x", bank, alg, got, want)
			}
		}
	}
	if _, err := testValues(BankSHA256, 0).CompositeDigest(tpm2.TPMAlgSHA1); !errors.Is(err, catalog.ErrNotApproved) {
		t.Errorf("SHA-1 session: err = %v, want catalog.ErrNotApproved", err)
	}
}
