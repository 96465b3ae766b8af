package attest

import (
	"bytes"
	"crypto"
	"strings"
	"testing"
)

// FLAW (failed before the mend; seen by review 50, test written with the
// mend): a "verified" text's class took any bytes, and the measurement
// hashes the officer with no length, then the class's length byte, then
// the class: officer X with class "\x01b" and officer X||0x02 with class
// "b" are one measurement, so one digest vouched for two verdicts. Only
// an anchor's classes (1..23 of a-z, 0-9, '.', '_', '-') are read now,
// and with them the reading is unique.
func TestReview50VerdictClassReadsOneWay(t *testing.T) {
	officer := bytes.Repeat([]byte{0xab}, 34)
	manifest := bytes.Repeat([]byte{0x5a}, 32)
	longer := append(bytes.Clone(officer), 0x02)
	if !bytes.Equal(VerifiedMeasurement(crypto.SHA256, officer, "\x01b", manifest), VerifiedMeasurement(crypto.SHA256, longer, "b", manifest)) {
		t.Fatal("not mounted: the two readings measure differently")
	}
	if _, ok := parseVerified(VerifiedEventText(officer, "\x01b", manifest)); ok {
		t.Error(`a verdict with class "\x01b" was read`)
	}
	for _, c := range []string{"", strings.Repeat("a", 24), "Gateway", "a b", "a,b", "a\x00"} {
		if _, ok := parseVerified(VerifiedEventText(officer, c, manifest)); ok {
			t.Errorf("class %q was read", c)
		}
	}
	for _, c := range []string{"gateway", "lab.prod_1-a", strings.Repeat("z", 23)} {
		v, ok := parseVerified(VerifiedEventText(officer, c, manifest))
		if !ok || v.Class != c || !bytes.Equal(v.Officer, officer) {
			t.Errorf("class %q: %+v %v", c, v, ok)
		}
	}
}
