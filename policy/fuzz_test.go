package policy

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func FuzzParsePCRList(f *testing.F) {
	for _, tc := range pcrListTests {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParsePCRList(s)
		if err != nil {
			return
		}
		if len(got) == 0 || !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
			t.Fatalf("ParsePCRList(%q) = %v: not sorted and unique", s, got)
		}
		if got[0] < 0 || got[len(got)-1] > MaxPCR {
			t.Fatalf("ParsePCRList(%q) = %v: out of range", s, got)
		}
		parts := make([]string, len(got))
		for i, n := range got {
			parts[i] = strconv.Itoa(n)
		}
		again, err := ParsePCRList(strings.Join(parts, ","))
		if err != nil || !slices.Equal(again, got) {
			t.Fatalf("canonical form of %q does not parse back: %v %v", s, again, err)
		}
	})
}

func FuzzParsePCRValues(f *testing.F) {
	for _, tc := range pcrValuesTests {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := ParsePCRValues(data)
		if err != nil {
			return
		}
		if err := v.Validate(); err != nil {
			t.Fatalf("parsed values do not validate: %v", err)
		}
		out, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParsePCRValues(out)
		if err != nil || !back.Equal(v) {
			t.Fatalf("round trip failed: %v", err)
		}
	})
}

func FuzzParseSignedPolicy(f *testing.F) {
	for _, s := range testSigners(f) {
		sp, err := SignPolicy(s.signer, testValues(BankSHA256, 0, 7), 3, []byte("fw"), testCounter)
		if err != nil {
			f.Fatal(err)
		}
		data, err := json.Marshal(sp)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`{"format":1}`))
	f.Add([]byte(`{"format":2,"version":1}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		sp, err := ParseSignedPolicy(data)
		if err != nil {
			return
		}
		if err := sp.Verify(sp.Signer); err != nil {
			t.Fatalf("parsed policy does not verify: %v", err)
		}
		out, err := json.Marshal(sp)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseSignedPolicy(out); err != nil {
			t.Fatalf("round trip failed: %v", err)
		}
	})
}

// FuzzParseApproval: an approval file either parses into an approval that
// verifies against its own key and marshals back to a file that parses to the
// same approval, or is refused; never a panic.
func FuzzParseApproval(f *testing.F) {
	k, _, _ := testKeys(f)
	ap, err := ApproveDigest(k, make([]byte, 32), []byte("provd/derive"))
	if err != nil {
		f.Fatal(err)
	}
	good, err := json.Marshal(ap)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"format":1}`))
	f.Add([]byte(`{"format":1,"approved_policy":"00","policy_ref":"","signer":null,"signature":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var a Approval
		if err := a.UnmarshalJSON(data); err != nil {
			return
		}
		if err := a.Verify(a.Signer); err != nil {
			t.Fatalf("parsed approval does not verify: %v", err)
		}
		again, err := json.Marshal(&a)
		if err != nil {
			t.Fatal(err)
		}
		var b Approval
		if err := b.UnmarshalJSON(again); err != nil || string(b.ApprovedPolicy) != string(a.ApprovedPolicy) || string(b.PolicyRef) != string(a.PolicyRef) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// FuzzParseKeyPEM: public and private key files either parse into an approved
// key or are refused; never a panic, and a public key parsed marshals back to
// a PEM that parses to the same key.
func FuzzParseKeyPEM(f *testing.F) {
	p256, _, _ := testKeys(f)
	pub, err := MarshalPublicKeyPEM(p256.Public())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(pub)
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"))
	f.Add([]byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = ParseSignerPEM(data)
		k, err := ParsePublicKeyPEM(data)
		if err != nil {
			return
		}
		again, err := MarshalPublicKeyPEM(k)
		if err != nil {
			t.Fatalf("a parsed key does not marshal: %v", err)
		}
		k2, err := ParsePublicKeyPEM(again)
		if err != nil {
			t.Fatalf("a marshalled key does not parse: %v", err)
		}
		n1, err1 := SignerName(k)
		n2, err2 := SignerName(k2)
		if err1 != nil || err2 != nil || string(n1) != string(n2) {
			t.Fatalf("round trip changed the key: %v %v", err1, err2)
		}
	})
}
