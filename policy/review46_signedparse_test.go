package policy

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
)

// review46Edit returns good (a policy.json) with fn applied to its decoded
// form.
func review46Edit(t *testing.T, good []byte, fn func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(good, &m); err != nil {
		t.Fatal(err)
	}
	fn(m)
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Held: malformed and hostile signed-policy files are refused cleanly by
// ParseSignedPolicy (an error, no panic, nothing half-parsed returned):
// another bank (SHA-1, unknown), an empty or out-of-range PCR selection,
// PCR keys that only look canonical, digests of the wrong size, a version
// that is not a plain JSON integer in range, a policyRef over 32 bytes, a
// counter handle that is no NV index or a counter name with a SHA-1
// nameAlg, a P-256 signature whose hash says SHA-384 (or an RSA-PSS form),
// r or s with a leading zero pushing them past the field size, the signer's
// name of another key, an approved_policy that is not the one the fields
// describe, and fields repeated under a case variant. Then 3000 random
// byte flips and splices of a good file: each refused, or accepted only as
// the same policy (same approved digest, signer, version, policyRef;
// the counter handle is not signed, as docs/policy.md says: the TPM and
// install check it).
func TestReview46SignedPolicyParserRefusesCleanly(t *testing.T) {
	p256, _, _ := testKeys(t)
	sp, err := SignPolicy(p256, testValues(BankSHA256, 0, 7), 5, []byte("provd/pk/prod"), testCounter)
	if err != nil {
		t.Fatal(err)
	}
	good, err := json.Marshal(sp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseSignedPolicy(good); err != nil {
		t.Fatalf("control: %v", err)
	}
	pcrs := func(fn func(p map[string]any, v map[string]any)) func(m map[string]any) {
		return func(m map[string]any) {
			v := m["pcr_values"].(map[string]any)
			fn(v["pcrs"].(map[string]any), v)
		}
	}
	sig := func(fn func(s map[string]any)) func(m map[string]any) {
		return func(m map[string]any) { fn(m["signature"].(map[string]any)) }
	}
	other, err := SignPolicy(p256, testValues(BankSHA256, 0, 7), 6, []byte("provd/pk/prod"), testCounter)
	if err != nil {
		t.Fatal(err)
	}
	_, p384, _ := testKeys(t)
	otherName, _ := SignerName(p384.Public())
	cases := map[string][]byte{
		"sha1 bank": review46Edit(t, good, pcrs(func(p, v map[string]any) {
			v["bank"] = "sha1"
			p["0"], p["7"] = strings.Repeat("00", 20), strings.Repeat("00", 20)
		})),
		"unknown bank":          review46Edit(t, good, pcrs(func(_, v map[string]any) { v["bank"] = "sm3_256" })),
		"no PCRs":               review46Edit(t, good, pcrs(func(p, _ map[string]any) { delete(p, "0"); delete(p, "7") })),
		"PCR 24":                review46Edit(t, good, pcrs(func(p, _ map[string]any) { p["24"] = p["7"]; delete(p, "7") })),
		"PCR 07":                review46Edit(t, good, pcrs(func(p, _ map[string]any) { p["07"] = p["7"]; delete(p, "7") })),
		"PCR +7":                review46Edit(t, good, pcrs(func(p, _ map[string]any) { p["+7"] = p["7"]; delete(p, "7") })),
		"PCR -1":                review46Edit(t, good, pcrs(func(p, _ map[string]any) { p["-1"] = p["7"]; delete(p, "7") })),
		"short PCR value":       review46Edit(t, good, pcrs(func(p, _ map[string]any) { p["7"] = strings.Repeat("01", 20) })),
		"sha384-sized value":    review46Edit(t, good, pcrs(func(p, _ map[string]any) { p["7"] = strings.Repeat("01", 48) })),
		"version as a string":   review46Edit(t, good, func(m map[string]any) { m["version"] = "5" }),
		"version negative":      review46Edit(t, good, func(m map[string]any) { m["version"] = -1 }),
		"version fraction":      review46Edit(t, good, func(m map[string]any) { m["version"] = 5.5 }),
		"version null":          review46Edit(t, good, func(m map[string]any) { m["version"] = nil }),
		"version 2^64":          bytes.Replace(good, []byte(`"version":5`), []byte(`"version":18446744073709551621`), 1),
		"version 5e0":           bytes.Replace(good, []byte(`"version":5`), []byte(`"version":5e0`), 1),
		"policyRef 33 bytes":    review46Edit(t, good, func(m map[string]any) { m["policy_ref"] = strings.Repeat("61", 33) }),
		"policyRef odd hex":     review46Edit(t, good, func(m map[string]any) { m["policy_ref"] = "abc" }),
		"persistent counter":    review46Edit(t, good, func(m map[string]any) { m["counter"].(map[string]any)["handle"] = "0x81000001" }),
		"short counter handle":  review46Edit(t, good, func(m map[string]any) { m["counter"].(map[string]any)["handle"] = "0x1500010" }),
		"sha1 counter name":     review46Edit(t, good, func(m map[string]any) { m["counter"].(map[string]any)["name"] = "0004" + strings.Repeat("c0", 20) }),
		"p256 signature sha384": review46Edit(t, good, sig(func(s map[string]any) { s["hash"] = "sha384" })),
		"p256 signature sha1":   review46Edit(t, good, sig(func(s map[string]any) { s["hash"] = "sha1" })),
		"ecdsa as rsapss": review46Edit(t, good, sig(func(s map[string]any) {
			s["alg"] = "rsapss"
			s["sig"] = s["r"].(string) + s["s"].(string)
			delete(s, "r")
			delete(s, "s")
		})),
		"r with a leading zero":   review46Edit(t, good, sig(func(s map[string]any) { s["r"] = "00" + s["r"].(string) })),
		"r zero":                  review46Edit(t, good, sig(func(s map[string]any) { s["r"] = "00" })),
		"another signer's name":   review46Edit(t, good, func(m map[string]any) { m["signer"].(map[string]any)["name"] = hex.EncodeToString(otherName) }),
		"another approved digest": review46Edit(t, good, func(m map[string]any) { m["approved_policy"] = hex.EncodeToString(other.ApprovedPolicy) }),
		"another version's signature": review46Edit(t, good, func(m map[string]any) {
			s, _ := signatureToJSON(other.Signature)
			m["signature"] = map[string]any{"alg": s.Alg, "hash": s.Hash, "r": s.R, "s": s.S}
		}),
		"format 2":         review46Edit(t, good, func(m map[string]any) { m["format"] = 2 }),
		"Version repeated": bytes.Replace(good, []byte(`"version":5`), []byte(`"version":5,"Version":6`), 1),
		"BANK repeated":    bytes.Replace(good, []byte(`"bank":"sha256"`), []byte(`"bank":"sha256","BANK":"sha384"`), 1),
		"PCR repeated":     bytes.Replace(good, []byte(`"pcrs":{`), []byte(`"pcrs":{"7":"`+strings.Repeat("00", 32)+`",`), 1),
		"trailing data":    append(bytes.Clone(good), []byte(` {}`)...),
		"two PEM blocks": review46Edit(t, good, func(m map[string]any) {
			s := m["signer"].(map[string]any)
			s["public_key"] = s["public_key"].(string) + s["public_key"].(string)
		}),
		"PEM with trailer": review46Edit(t, good, func(m map[string]any) {
			s := m["signer"].(map[string]any)
			s["public_key"] = s["public_key"].(string) + "garbage"
		}),
		"empty":              nil,
		"deeply nested junk": []byte(strings.Repeat("[", 100000)),
	}
	for name, data := range cases {
		got, err := ParseSignedPolicy(data)
		if err == nil || got != nil {
			t.Errorf("%s: accepted (%v)", name, err)
		}
	}

	// Random flips and splices: refused, or the very same policy.
	rng := rand.New(rand.NewPCG(46, 46))
	for i := range 3000 {
		b := bytes.Clone(good)
		switch i % 3 {
		case 0:
			for range 1 + rng.IntN(3) {
				b[rng.IntN(len(b))] ^= byte(1 << rng.IntN(8))
			}
		case 1:
			at := rng.IntN(len(b))
			b = append(b[:at:at], b[at+1+rng.IntN(min(8, len(b)-at)):]...)
		case 2:
			at, from := rng.IntN(len(b)), rng.IntN(len(good))
			b = append(append(b[:at:at], good[from:from+rng.IntN(min(16, len(good)-from))]...), b[at:]...)
		}
		got, err := ParseSignedPolicy(b)
		if err != nil {
			continue
		}
		if !bytes.Equal(got.ApprovedPolicy, sp.ApprovedPolicy) || !bytes.Equal(got.SignerName, sp.SignerName) ||
			got.Version != sp.Version || !bytes.Equal(got.PolicyRef, sp.PolicyRef) {
			t.Errorf("mutant %d accepted as another policy: %s", i, b)
		}
	}
}
