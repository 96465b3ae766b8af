package attest

import (
	"bytes"
	"crypto"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/provd/provd/catalog"
	"github.com/provd/provd/firmware"
)

// provd's boot hook (provd fw verify) logs its verdicts as EV_EVENT_TAG
// events in a TCG log of its own (docs/formats.md). They are defined here,
// beside the log's parser, so that the hook that writes them and a fleet
// verifier that appraises them read them with the same code.

// EventTagID is the taggedEventID of provd's events (EV_EVENT_TAG,
// TCG_PCClientTaggedEvent): "PVDF".
const EventTagID = 0x50564446

// The texts of provd's events (the data after the tagged event's header):
// "provd firmware verified: officer HEX, class C, manifest sha256:HEX", or
// FailedText and the kind of failure.
const (
	VerifiedText = "provd firmware verified: officer "
	FailedText   = "provd firmware verification failed: "
)

// FailureKinds are the kinds of failure the hook names after FailedText,
// and the only ones a failed event may name: any other text after it is
// not the hook's (found by review 49: a failed event's text extended with
// a carriage return, terminal escapes and a line of fw log's own format
// printed "provd firmware verified" over a failed boot; the digest is
// the same whatever the text, so the text must be one of these).
var FailureKinds = []string{"no anchor", "anchor untrusted", "signature", "manifest malformed", "image digest", "image missing", "rollback", "TPM or I/O error"}

// failedMeasurement is what a failed verification extends, in every bank
// its hash: one fixed value whatever failed, so that the PCR's "failed"
// state is one known value and never the good one.
var failedMeasurement = []byte("provd firmware verification failed\x00")

// verifiedPrefix separates a verdict's measurement from anything else
// hashed.
var verifiedPrefix = []byte("provd firmware verified v1\x00")

// HashOf is h of b.
func HashOf(h crypto.Hash, b []byte) []byte {
	hh := h.New()
	hh.Write(b)
	return hh.Sum(nil)
}

// FailedMeasurement is a failed verification's digest in a bank of hash h.
func FailedMeasurement(h crypto.Hash) []byte { return HashOf(h, failedMeasurement) }

// VerifiedMeasurement is what a good verification extends, in one extend,
// in a bank of hash h: h("provd firmware verified v1\0" || the officer's
// TPM name || len(class) || class || manifest), manifest being h of the
// manifest's signed payload. The officer pins the root of trust into the
// PCR: an anchor another process put in place (its own officer) cannot
// lead to the good value, whatever firmware it lets through (found by
// review: an imitation naming the genuine signer let an old genuine release
// reach its good value); one extend leaves no half-measured state (found by
// review: an anchor extend without the manifest's after it could be
// completed by hand).
func VerifiedMeasurement(h crypto.Hash, officer []byte, class string, manifest []byte) []byte {
	hh := h.New()
	hh.Write(verifiedPrefix)
	hh.Write(officer)
	hh.Write([]byte{byte(len(class))})
	hh.Write([]byte(class))
	hh.Write(manifest)
	return hh.Sum(nil)
}

// GoodPCR is the value a good verification leaves in its PCR when it is
// the first extend after reset, in a bank of hash h. A fleet computes it
// from its officer, the class and the manifest's signed payload alone.
func GoodPCR(h crypto.Hash, officer []byte, class string, payload []byte) []byte {
	hh := h.New()
	hh.Write(make([]byte, h.Size()))
	hh.Write(VerifiedMeasurement(h, officer, class, HashOf(h, payload)))
	return hh.Sum(nil)
}

// VerifiedEventText is the text of a good verification's event.
func VerifiedEventText(officer []byte, class string, manifestSHA256 []byte) string {
	return fmt.Sprintf("%s%x, class %s, manifest sha256:%x", VerifiedText, officer, class, manifestSHA256)
}

// Verdict is what one of provd's "verified" events says, checked against
// its SHA-256 digest.
type Verdict struct {
	Officer        []byte
	Class          string
	ManifestSHA256 []byte
}

func parseVerified(text string) (Verdict, bool) {
	rest, ok := strings.CutPrefix(text, VerifiedText)
	if !ok {
		return Verdict{}, false
	}
	officerHex, rest, ok1 := strings.Cut(rest, ", class ")
	class, manifestHex, ok2 := strings.Cut(rest, ", manifest sha256:")
	officer, err1 := hex.DecodeString(officerHex)
	manifest, err2 := hex.DecodeString(manifestHex)
	// Only an anchor's class (firmware.CheckClass): its length byte (at
	// most 23) is then no class character, and a measurement reads one way
	// only (review 50: with any bytes, officer X with class "\x01b"
	// measured as officer X||2 with class "b").
	if !ok1 || !ok2 || err1 != nil || err2 != nil || len(manifest) != 32 || firmware.CheckClass(class) != nil {
		return Verdict{}, false
	}
	return Verdict{Officer: officer, Class: class, ManifestSHA256: manifest}, true
}

// CheckProvdEvent checks that one of provd's events says what its digests
// are: a "failed" event carries the failed measurement in every bank; a
// "verified" event must carry a SHA-256 digest, and it must be the
// measurement of the officer, class and manifest its text names (other
// banks need the manifest itself: Verdict). Events that are not provd's
// pass. The text says no more than that: the digests are what the PCR
// vouches for, and a log whose text lies about them is refused here (found
// by review: a failed boot's event rewritten to read "verified" replayed
// clean, in the SHA-256 bank and then in a SHA-1-only log).
func CheckProvdEvent(e Event) error {
	text := ProvdEventText(e)
	if text == "" {
		if e.Type == EVEventTag && len(e.Data) >= 4 && binary.LittleEndian.Uint32(e.Data) == EventTagID {
			return fmt.Errorf("%w: a provd event whose tagged data is malformed", ErrBadEvidence)
		}
		return nil
	}
	var want func(h crypto.Hash) []byte
	switch {
	case strings.HasPrefix(text, FailedText):
		if !slices.Contains(FailureKinds, strings.TrimPrefix(text, FailedText)) {
			return fmt.Errorf("%w: provd failed event of no known kind: %q", ErrBadEvidence, text)
		}
		want = FailedMeasurement
	case strings.HasPrefix(text, VerifiedText):
		v, ok := parseVerified(text)
		if !ok {
			return fmt.Errorf("%w: provd event %q", ErrBadEvidence, text)
		}
		if e.Digest(0x000b) == nil { // TPM_ALG_SHA256
			return fmt.Errorf("%w: provd event %q has no SHA-256 digest to check it by", ErrBadEvidence, text)
		}
		want = func(h crypto.Hash) []byte {
			if h == crypto.SHA256 {
				return VerifiedMeasurement(h, v.Officer, v.Class, v.ManifestSHA256)
			}
			return nil // not checkable without the manifest
		}
	default:
		return fmt.Errorf("%w: provd event %q of no known kind", ErrBadEvidence, text)
	}
	for _, d := range e.Digests {
		h, err := d.HashAlg.Hash()
		if err != nil {
			return fmt.Errorf("%w: provd event with a digest of algorithm 0x%04x", ErrBadEvidence, uint16(d.HashAlg))
		}
		if w := want(h); w != nil && !bytes.Equal(w, d.Digest) {
			return fmt.Errorf("%w: provd event %q: its %s digest is not what the text says", ErrBadEvidence, text, catalog.HashName(d.HashAlg))
		}
	}
	return nil
}

// VerifiedBy is what one of provd's "verified" events says, when e is one
// and its SHA-256 digest matches its text (CheckProvdEvent).
func VerifiedBy(e Event) (Verdict, bool) {
	if CheckProvdEvent(e) != nil {
		return Verdict{}, false
	}
	return parseVerified(ProvdEventText(e))
}

// TaggedEvent is a TCG_PCClientTaggedEvent of provd's: taggedEventID,
// taggedEventDataSize, then the text.
func TaggedEvent(text string) []byte {
	b := binary.LittleEndian.AppendUint32(nil, EventTagID)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(text)))
	return append(b, text...)
}

// ProvdEventText is the text of one of provd's tagged events, or "" when e
// is not one.
func ProvdEventText(e Event) string {
	if e.Type != EVEventTag || len(e.Data) < 8 || binary.LittleEndian.Uint32(e.Data) != EventTagID ||
		int(binary.LittleEndian.Uint32(e.Data[4:])) != len(e.Data)-8 {
		return ""
	}
	return string(e.Data[8:])
}
