package attest_test

import (
	"bytes"
	"crypto"
	"errors"
	"runtime"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest"
)

// Review 50: malformed and lying event logs.

func review50SHA256(d []byte) []byte { return digest(uint16(tpm2.TPMAlgSHA256), d) }

// Held: a valid log followed by anything (one byte, a truncated event, an
// all-zero event, an event whose data runs past the end) is refused, by
// both parsers.
func TestReview50LogTrailingGarbage(t *testing.T) {
	ev := event2(7, 4, 1, review50SHA256(hashOf(crypto.SHA256, []byte{0, 0, 0, 0})), []byte{0, 0, 0, 0})
	good := cat(header(sha256Spec), ev)
	if _, err := attest.ParseEventLog(good); err != nil {
		t.Fatal(err)
	}
	for name, tail := range map[string][]byte{
		"one zero byte":         {0},
		"one 0xff byte":         {0xff},
		"an event cut short":    ev[:len(ev)-1],
		"an all-zero event":     make([]byte, 12+2+32+4),
		"zero padding":          make([]byte, 4096),
		"data size past end":    event2(7, 4, 1, sha256Zero, make([]byte, 8))[:len(ev)],
		"a second header":       header(sha256Spec),
		"count 0":               event2(7, 4, 0, nil, nil),
		"count 2 (same digest)": event2(7, 4, 2, cat(sha256Zero, sha256Zero), nil),
	} {
		b := cat(good, tail)
		if _, err := attest.ParseEventLog(b); !errors.Is(err, attest.ErrBadEvidence) {
			t.Errorf("%s: %v, want ErrBadEvidence", name, err)
		}
		if _, err := attest.ParseOwnedEventLog(bytes.Clone(b)); !errors.Is(err, attest.ErrBadEvidence) {
			t.Errorf("owned, %s: %v, want ErrBadEvidence", name, err)
		}
	}
}

// Held: Spec ID variants. A digest size of 0 or of no hash's size, a bank
// named twice, SHA-256 declared with another size, no bank at all, nine
// banks, and a major version other than 2 are refused. An unknown
// algorithm of a hash's size is parsed (its digests are read at that size)
// and never replayed: a log of it alone has nothing to replay.
func TestReview50SpecIDVariants(t *testing.T) {
	s256 := uint16(tpm2.TPMAlgSHA256)
	for name, spec := range map[string][]byte{
		"size 0":                specID(2, s256, 0),
		"unknown alg size 0":    specID(2, 0x0099, 0),
		"unknown alg size 1":    specID(2, 0x0099, 1),
		"unknown alg size 65":   specID(2, 0x0099, 65),
		"SHA-256 twice":         specID(2, s256, 32, s256, 32),
		"SHA-256 of 20 bytes":   specID(2, s256, 20),
		"SHA-256 of 48 bytes":   specID(2, s256, 48),
		"SHA-1 of 32 bytes":     specID(2, uint16(tpm2.TPMAlgSHA1), 32),
		"no bank":               specID(2),
		"version 1":             specID(1, s256, 32),
		"nine banks":            specID(2, s256, 32, 0x90, 32, 0x91, 32, 0x92, 32, 0x93, 32, 0x94, 32, 0x95, 32, 0x96, 32, 0x97, 32),
		"vendor info cut":       append(specID(2, s256, 32)[:len(specID(2, s256, 32))-1], 5, 1),
		"data after vendorInfo": append(specID(2, s256, 32), 0),
	} {
		if _, err := attest.ParseEventLog(header(spec)); !errors.Is(err, attest.ErrBadEvidence) {
			t.Errorf("%s: %v, want ErrBadEvidence", name, err)
		}
	}
	unknown := specID(2, 0x0099, 32)
	l, err := attest.ParseEventLog(cat(header(unknown), event2(7, 4, 1, digest(0x0099, bytes.Repeat([]byte{1}, 32)), nil)))
	if err != nil {
		t.Fatalf("unknown algorithm of 32 bytes: %v", err)
	}
	if _, err := l.Replay(attest.Options{AllowSHA1: true}); !errors.Is(err, attest.ErrUnsupportedAlgorithm) {
		t.Errorf("replay of an unknown-only log: %v, want ErrUnsupportedAlgorithm", err)
	}
	// SHA-1 beside SHA-256: without AllowSHA1 only SHA-256 is replayed.
	both := specID(2, uint16(tpm2.TPMAlgSHA1), 20, s256, 32)
	l, err = attest.ParseEventLog(cat(header(both), event2(7, 4, 2, cat(digest(uint16(tpm2.TPMAlgSHA1), make([]byte, 20)), sha256Zero), nil)))
	if err != nil {
		t.Fatal(err)
	}
	v, err := l.Replay(attest.Options{})
	if err != nil || v[tpm2.TPMAlgSHA1] != nil || v[tpm2.TPMAlgSHA256] == nil {
		t.Errorf("replay without AllowSHA1: banks %v, %v", len(v), err)
	}
}

// Held: an EV_NO_ACTION event with a non-zero digest extends nothing; an
// EV_SEPARATOR or any other type extends its digest whatever its data
// says; a StartupLocality after an extend of PCR 0, a second one, a
// locality other than 0/3/4 and one of the wrong size are refused; one in
// another PCR than 0 is ignored.
func TestReview50EventTypesInReplay(t *testing.T) {
	d := bytes.Repeat([]byte{0xab}, 32)
	loc := func(pcr uint32, l ...byte) []byte {
		return event2(pcr, 3, 1, sha256Zero, append([]byte("StartupLocality\x00"), l...))
	}
	base := cat(header(sha256Spec), event2(7, 4, 1, review50SHA256(d), []byte("not what was hashed")))
	want := extend(crypto.SHA256, make([]byte, 32), d)
	for name, extra := range map[string][]byte{
		"no action with a digest, PCR 7": event2(7, 3, 1, review50SHA256(bytes.Repeat([]byte{1}, 32)), nil),
		"StartupLocality in PCR 7":       loc(7, 3),
	} {
		l, err := attest.ParseEventLog(cat(base, extra))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		v, err := l.Replay(attest.Options{})
		if err != nil || !bytes.Equal(v[tpm2.TPMAlgSHA256][7], want) {
			t.Errorf("%s: PCR 7 %x, %v; want %x", name, v[tpm2.TPMAlgSHA256][7], err, want)
		}
		if !bytes.Equal(v[tpm2.TPMAlgSHA256][0], make([]byte, 32)) {
			t.Errorf("%s: PCR 0 changed", name)
		}
	}
	for name, log := range map[string][]byte{
		"locality after an extend of PCR 0": cat(header(sha256Spec), event2(0, 8, 1, sha256Zero, nil), loc(0, 3)),
		"locality twice":                    cat(header(sha256Spec), loc(0, 3), loc(0, 4)),
		"locality 2":                        cat(header(sha256Spec), loc(0, 2)),
		"locality of two bytes":             cat(header(sha256Spec), loc(0, 3, 0)),
		"locality of no byte":               cat(header(sha256Spec), loc(0)),
	} {
		l, err := attest.ParseEventLog(log)
		if err != nil {
			t.Fatalf("%s: parse: %v", name, err)
		}
		if _, err := l.Replay(attest.Options{}); !errors.Is(err, attest.ErrBadEvidence) {
			t.Errorf("%s: %v, want ErrBadEvidence", name, err)
		}
	}
}

// Held: a digest count, data size or Spec ID size of 2^32-1 is refused
// without allocating for it, and a log of the largest number of the
// smallest events keeps alive a bounded multiple of its size.
func TestReview50LogHugeCountsAndTinyEvents(t *testing.T) {
	for name, log := range map[string][]byte{
		"digest count 2^32-1": cat(header(sha256Spec), le32(le32(le32(nil, 7), 4), 0xffffffff)),
		"data size 2^32-1":    cat(header(sha256Spec), le32(le32(le32(nil, 7), 4), 1), sha256Zero, le32(nil, 0xffffffff)),
		"spec size 2^32-1":    le32(append(le32(le32(nil, 0), 3), make([]byte, 20)...), 0xffffffff),
		"PCR 2^32-1":          cat(header(sha256Spec), event2(0xffffffff, 4, 1, sha256Zero, nil)),
		"PCR 24":              cat(header(sha256Spec), event2(24, 4, 1, sha256Zero, nil)),
	} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := attest.ParseEventLog(log)
		runtime.ReadMemStats(&after)
		if !errors.Is(err, attest.ErrBadEvidence) {
			t.Errorf("%s: %v, want ErrBadEvidence", name, err)
		}
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
			t.Errorf("%s: allocated %d bytes", name, grew)
		}
	}
	// The smallest event of a SHA-256 log: 12 + 34 + 4 bytes. What the
	// parsed log keeps alive stays within three times the log's size (it
	// is about twice; the Events slice's growth makes some five times the
	// log in garbage on the way, which the collector takes back).
	ev := event2(7, 4, 1, sha256Zero, nil)
	log := cat(header(sha256Spec), bytes.Repeat(ev, attest.MaxEvents))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	l, err := attest.ParseOwnedEventLog(log)
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if live := int64(after.HeapAlloc) - int64(before.HeapAlloc); live > 3*int64(len(log))+(1<<20) {
		t.Errorf("%d tiny events (%d bytes) keep %d bytes alive", len(l.Events), len(log), live)
	}
	runtime.KeepAlive(l)
}
