package policy

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// review71Good is a genuine policy.json (P-256, PCRs 0 and 7, version 5).
func review71Good(t *testing.T) (*SignedPolicy, []byte) {
	t.Helper()
	p256, _, _ := testKeys(t)
	sp, err := SignPolicy(p256, testValues(BankSHA256, 0, 7), 5, []byte("provd/pk"), testCounter)
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
	return sp, good
}

// Held: Unicode and encoding tricks that review 46 did not try are refused
// by ParseSignedPolicy: a PCR key written "\u0037" beside "7" (a duplicate
// once unescaped), PCR keys in other scripts' digits (Arabic-Indic,
// fullwidth, superscript), a bank name in capitals, fullwidth or with a
// NUL, a byte-order mark before the document, invalid UTF-8 in a field name
// or a hex value, a NUL or space inside the policy_ref hex, a counter handle
// in capital 0X or with a sign, the version as 5.0, -0 or with a leading
// zero, a JSON comment, and a second document after a newline.
func TestReview71ParserRefusesEncodingTricks(t *testing.T) {
	_, good := review71Good(t)
	rep := func(old, new string) []byte {
		t.Helper()
		if !bytes.Contains(good, []byte(old)) {
			t.Fatalf("%q not in the document", old)
		}
		return bytes.Replace(good, []byte(old), []byte(new), 1)
	}
	zeros := strings.Repeat("00", 32)
	cases := map[string][]byte{
		"PCR \\u0037 beside 7":      rep(`"pcrs":{`, `"pcrs":{"\u0037":"`+zeros+`",`),
		"PCR 7 in Arabic-Indic":     rep(`"7":`, `"٧":`),
		"PCR 7 fullwidth":           rep(`"7":`, `"７":`),
		"PCR 7 superscript":         rep(`"7":`, `"⁷":`),
		"PCR 7 escaped fullwidth":   rep(`"7":`, `"\uff17":`),
		"bank in capitals":          rep(`"bank":"sha256"`, `"bank":"SHA256"`),
		"bank fullwidth s":          rep(`"bank":"sha256"`, `"bank":"ｓha256"`),
		"bank with a NUL":           rep(`"bank":"sha256"`, `"bank":"sha256\u0000"`),
		"bank with a space":         rep(`"bank":"sha256"`, `"bank":"sha256 "`),
		"byte-order mark":           append([]byte("\ufeff"), good...),
		"invalid UTF-8 in a key":    rep(`"format"`, "\"format\xff\""),
		"invalid UTF-8 in hex":      rep(`"approved_policy":"`, "\"approved_policy\":\"\xff"),
		"NUL in policy_ref":         rep(`"policy_ref":"`, `"policy_ref":"\u0000`),
		"space in policy_ref":       rep(`"policy_ref":"`, `"policy_ref":" `),
		"counter handle 0X":         rep(`"handle":"0x`, `"handle":"0X`),
		"counter handle +":          rep(`"handle":"0x`, `"handle":"+0x`),
		"counter handle 9 digits":   rep(`"handle":"0x`, `"handle":"0x0`),
		"version 5.0":               rep(`"version":5`, `"version":5.0`),
		"version -0 then 5":         rep(`"version":5`, `"version":-05`),
		"version leading zero":      rep(`"version":5`, `"version":05`),
		"comment":                   rep(`{"format"`, `{/* */"format"`),
		"second document":           append(append(bytes.Clone(good), '\n'), good...),
		"format as 1.0":             rep(`"format":1`, `"format":1.0`),
		"format as true":            rep(`"format":1`, `"format":true`),
		"signature alg in capitals": rep(`"alg":"ecdsa"`, `"alg":"ECDSA"`),
		"signature hash capitals":   rep(`"hash":"sha256"`, `"hash":"SHA256"`),
	}
	for name, data := range cases {
		if got, err := ParseSignedPolicy(data); err == nil || got != nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FLAW (failed before the mend: strictjson matches field names exactly): docs/policy.md says of policy.json "unknown and duplicate fields are
// refused", and the brief of the format is exact field names, but a field
// name spelled in another case, or with a Unicode rune that case-folds to an
// ASCII letter (the Kelvin sign K for k, the long s ſ for s), is taken for
// the documented field (encoding/json matches names case-insensitively;
// strictjson refuses only a pair). So {"VERSION":5,...} or
// {"ſignature":...} is a valid policy to provd while every other JSON
// reader (jq, Python, a fleet's review or distribution tooling checking
// version or PCRs before rollout) sees no "version" or "signature" field:
// two parsers read one document differently. Attacker: whoever passes a
// policy.json along (a courier, a distribution server) hiding its version or
// PCR selection from tooling that reads the documented names; the TPM still
// enforces what was signed, so the gain is deceiving review, not the
// device. Secure behaviour asserted: a field name that is not exactly the
// documented one is refused.
func TestReview71FieldNamesMatchedCaseInsensitively(t *testing.T) {
	_, good := review71Good(t)
	rep := func(old, new string) []byte {
		t.Helper()
		if !bytes.Contains(good, []byte(old)) {
			t.Fatalf("%q not in the document", old)
		}
		return bytes.Replace(good, []byte(old), []byte(new), 1)
	}
	cases := map[string][]byte{
		`"VERSION"`:                rep(`"version":`, `"VERSION":`),
		`"Pcr_Values"`:             rep(`"pcr_values":`, `"Pcr_Values":`),
		`"ſignature" (long s)`:     rep(`"signature":`, `"ſignature":`),
		`"public_\u212aey" Kelvin`: rep(`"public_key":`, `"public_\u212aey":`),
		`"PCRS"`:                   rep(`"pcrs":`, `"PCRS":`),
	}
	for name, data := range cases {
		got, err := ParseSignedPolicy(data)
		if err == nil {
			t.Errorf("field %s accepted as the documented name (version %d, approved %x)", name, got.Version, got.ApprovedPolicy[:4])
		}
	}
}
