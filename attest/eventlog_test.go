package attest_test

import (
	"bytes"
	"crypto"
	_ "embed"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest"
)

// Hand-made log bytes, independent of EventLog.MarshalBinary, so that the
// parser is tested against the format and not against its own writer.

func le32(b []byte, v uint32) []byte { return binary.LittleEndian.AppendUint32(b, v) }
func le16(b []byte, v uint16) []byte { return binary.LittleEndian.AppendUint16(b, v) }

// specID builds a TCG_EfiSpecIDEventStruct; algs are (algorithm, size) pairs.
func specID(major byte, algs ...uint16) []byte {
	b := []byte("Spec ID Event03\x00")
	b = le32(b, 0)
	b = append(b, 0, major, 0, 2)
	b = le32(b, uint32(len(algs)/2))
	for _, a := range algs {
		b = le16(b, a)
	}
	return append(b, 0)
}

// header builds the TCG_PCR_EVENT that starts a crypto-agile log.
func header(spec []byte) []byte {
	b := le32(nil, 0)
	b = le32(b, 3)
	b = append(b, make([]byte, 20)...)
	b = le32(b, uint32(len(spec)))
	return append(b, spec...)
}

// event2 builds a TCG_PCR_EVENT2 from pre-encoded digests.
func event2(pcr, typ, count uint32, digests, data []byte) []byte {
	b := le32(nil, pcr)
	b = le32(b, typ)
	b = le32(b, count)
	b = append(b, digests...)
	b = le32(b, uint32(len(data)))
	return append(b, data...)
}

func digest(alg uint16, d []byte) []byte { return append(le16(nil, alg), d...) }

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

var (
	sha256Spec = specID(2, uint16(tpm2.TPMAlgSHA256), 32)
	sha256Zero = digest(uint16(tpm2.TPMAlgSHA256), make([]byte, 32))
)

type logCase struct {
	name string
	log  []byte
}

// malformedLogs are logs the parser must refuse, each for one reason.
func malformedLogs() []logCase {
	okEvent := event2(7, 4, 1, sha256Zero, []byte{0, 0, 0, 0})
	twoBanks := specID(2, uint16(tpm2.TPMAlgSHA256), 32, uint16(tpm2.TPMAlgSHA384), 48)
	badHeader := func(mod func(b []byte)) []byte {
		b := header(sha256Spec)
		mod(b)
		return b
	}
	return []logCase{
		{"empty", nil},
		{"unknown algorithm of 1-byte digests", header(specID(2, 0x7000, 1))},
		{"unknown algorithm of 17-byte digests", header(specID(2, 0x7000, 17))},
		{"header truncated", header(sha256Spec)[:20]},
		{"header in PCR 1", badHeader(func(b []byte) { b[0] = 1 })},
		{"header not EV_NO_ACTION", badHeader(func(b []byte) { b[4] = 1 })},
		{"header SHA-1 digest not zero", badHeader(func(b []byte) { b[8] = 1 })},
		{"header size beyond the log", badHeader(func(b []byte) { b[28]++ })},
		{"header size huge", badHeader(func(b []byte) { copy(b[28:32], []byte{0xff, 0xff, 0xff, 0xff}) })},
		{"SHA-1 log (not crypto-agile)", header([]byte("Spec ID Event02\x00" + "0123456789"))},
		{"spec version 1", header(specID(1, uint16(tpm2.TPMAlgSHA256), 32))},
		{"no algorithms", header(specID(2))},
		{"nine algorithms", header(specID(2, 0x10, 32, 0x11, 32, 0x12, 32, 0x13, 32, 0x14, 32, 0x15, 32, 0x16, 32, 0x17, 32, 0x18, 32))},
		{"SHA-256 declared 20 bytes", header(specID(2, uint16(tpm2.TPMAlgSHA256), 20))},
		{"unknown algorithm of 0 bytes", header(specID(2, 0x4321, 0))},
		{"algorithm declared twice", header(specID(2, uint16(tpm2.TPMAlgSHA256), 32, uint16(tpm2.TPMAlgSHA256), 32))},
		{"spec ID followed by data", header(append(append([]byte{}, sha256Spec...), 0))},
		{"spec ID truncated", header(sha256Spec[:len(sha256Spec)-1])},
		{"event in PCR 24", cat(header(sha256Spec), event2(24, 4, 1, sha256Zero, nil))},
		{"event PCR 0xffffffff", cat(header(sha256Spec), event2(0xffffffff, 4, 1, sha256Zero, nil))},
		{"two digests, one bank", cat(header(sha256Spec), event2(7, 4, 2, cat(sha256Zero, sha256Zero), nil))},
		{"no digest", cat(header(sha256Spec), event2(7, 4, 0, nil, nil))},
		{"digest count huge", cat(header(sha256Spec), event2(7, 4, 0xffffffff, sha256Zero, nil))},
		{"undeclared algorithm", cat(header(sha256Spec), event2(7, 4, 1, digest(uint16(tpm2.TPMAlgSHA384), make([]byte, 32)), nil))},
		{"same bank twice", cat(header(twoBanks), event2(7, 4, 2, cat(sha256Zero, sha256Zero), nil))},
		{"digest truncated", cat(header(sha256Spec), okEvent[:20])},
		{"data size huge", cat(header(sha256Spec), event2(7, 4, 1, sha256Zero, nil)[:len(event2(7, 4, 1, sha256Zero, nil))-4], []byte{0xff, 0xff, 0xff, 0xff})},
		{"data truncated", cat(header(sha256Spec), okEvent[:len(okEvent)-1])},
		{"trailing bytes", cat(header(sha256Spec), okEvent, []byte{0, 0, 0})},
	}
}

func TestParseEventLogMalformed(t *testing.T) {
	for _, c := range malformedLogs() {
		t.Run(c.name, func(t *testing.T) {
			if _, err := attest.ParseEventLog(c.log); !errors.Is(err, attest.ErrBadEvidence) {
				t.Fatalf("ParseEventLog = %v, want ErrBadEvidence", err)
			}
		})
	}
	t.Run("too large", func(t *testing.T) {
		b := cat(header(sha256Spec), make([]byte, attest.MaxEventLogSize))
		if _, err := attest.ParseEventLog(b); !errors.Is(err, attest.ErrBadEvidence) {
			t.Fatalf("ParseEventLog = %v, want ErrBadEvidence", err)
		}
	})
}

// extend is the TPM's PCR extend, written out again for the tests.
func extend(h crypto.Hash, pcr, d []byte) []byte {
	hh := h.New()
	hh.Write(pcr)
	hh.Write(d)
	return hh.Sum(nil)
}

func hashOf(h crypto.Hash, data []byte) []byte {
	hh := h.New()
	hh.Write(data)
	return hh.Sum(nil)
}

// sampleLog builds a log as firmware would write one, in three banks: the
// startup locality, the CRTM version, separators, a firmware blob measured
// by digest, and an EV_NO_ACTION that is not extended.
func sampleLog(t testing.TB, locality byte) *attest.EventLog {
	t.Helper()
	l, err := attest.NewEventLog(tpm2.TPMAlgSHA1, tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384)
	if err != nil {
		t.Fatal(err)
	}
	must := func(_ attest.Event, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(l.Append(0, attest.EVNoAction, append([]byte("StartupLocality\x00"), locality)))
	must(l.Append(0, attest.EVSCRTMVersion, []byte("provd test CRTM 1.0\x00")))
	blob := attest.Event{PCR: 0, Type: attest.EVEFIPlatformFirmwareBlob, Data: []byte("base=0xff000000 len=0x100000")}
	for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256, crypto.SHA384} {
		alg := map[crypto.Hash]tpm2.TPMIAlgHash{crypto.SHA1: tpm2.TPMAlgSHA1, crypto.SHA256: tpm2.TPMAlgSHA256, crypto.SHA384: tpm2.TPMAlgSHA384}[h]
		blob.Digests = append(blob.Digests, tpm2.TPMTHA{HashAlg: alg, Digest: hashOf(h, []byte("firmware image"))})
	}
	if err := l.AppendEvent(blob); err != nil {
		t.Fatal(err)
	}
	must(l.Append(4, attest.EVIPL, []byte("bootloader")))
	must(l.Append(3, attest.EVNoAction, []byte("vendor note")))
	for pcr := 0; pcr <= 7; pcr++ {
		must(l.Append(pcr, attest.EVSeparator, []byte{0, 0, 0, 0}))
	}
	must(l.Append(7, attest.EVEFIAction, []byte("Exit Boot Services Invocation")))
	return l
}

// expectedSample computes what sampleLog's PCRs must be, by hand.
func expectedSample(h crypto.Hash, locality byte) map[int][]byte {
	v := map[int][]byte{}
	for i := 0; i < 24; i++ {
		v[i] = make([]byte, h.Size())
		if i >= 17 && i <= 22 {
			v[i] = bytes.Repeat([]byte{0xff}, h.Size())
		}
	}
	v[0][h.Size()-1] = locality
	v[0] = extend(h, v[0], hashOf(h, []byte("provd test CRTM 1.0\x00")))
	v[0] = extend(h, v[0], hashOf(h, []byte("firmware image")))
	v[4] = extend(h, v[4], hashOf(h, []byte("bootloader")))
	for pcr := 0; pcr <= 7; pcr++ {
		v[pcr] = extend(h, v[pcr], hashOf(h, []byte{0, 0, 0, 0}))
	}
	v[7] = extend(h, v[7], hashOf(h, []byte("Exit Boot Services Invocation")))
	return v
}

func TestEventLogBuildParseReplay(t *testing.T) {
	for _, loc := range []byte{0, 3, 4} {
		built := sampleLog(t, loc)
		b, err := built.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		l, err := attest.ParseEventLog(b)
		if err != nil {
			t.Fatalf("locality %d: ParseEventLog: %v", loc, err)
		}
		if again, err := l.MarshalBinary(); err != nil || !bytes.Equal(again, b) {
			t.Fatalf("locality %d: parsed log marshals to other bytes (%v)", loc, err)
		}
		if len(l.Events) != len(built.Events) {
			t.Fatalf("locality %d: %d events, built %d", loc, len(l.Events), len(built.Events))
		}
		for _, c := range []struct {
			opts  attest.Options
			banks map[tpm2.TPMIAlgHash]crypto.Hash
		}{
			{attest.Options{}, map[tpm2.TPMIAlgHash]crypto.Hash{tpm2.TPMAlgSHA256: crypto.SHA256, tpm2.TPMAlgSHA384: crypto.SHA384}},
			{attest.Options{AllowSHA1: true}, map[tpm2.TPMIAlgHash]crypto.Hash{tpm2.TPMAlgSHA1: crypto.SHA1, tpm2.TPMAlgSHA256: crypto.SHA256, tpm2.TPMAlgSHA384: crypto.SHA384}},
		} {
			got, err := l.Replay(c.opts)
			if err != nil {
				t.Fatalf("locality %d: Replay: %v", loc, err)
			}
			if len(got) != len(c.banks) {
				t.Fatalf("locality %d, AllowSHA1 %v: replayed %d banks, want %d", loc, c.opts.AllowSHA1, len(got), len(c.banks))
			}
			for bank, h := range c.banks {
				want := expectedSample(h, loc)
				for i := 0; i < 24; i++ {
					if !bytes.Equal(got[bank][i], want[i]) {
						t.Errorf("locality %d: %v PCR %d = %x, want %x", loc, bank, i, got[bank][i], want[i])
					}
				}
			}
		}
	}
}

// Altering one event's digest in the binary log changes the replay of its
// PCR, and ComparePCRs names that PCR and no other. Reordering events of
// different PCRs changes nothing: only the order within a PCR counts.
func TestEventLogTamperNamesPCR(t *testing.T) {
	l := sampleLog(t, 0)
	quoted, err := l.Replay(attest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	sel := selection(tpm2.TPMAlgSHA256, 0, 1, 2, 3, 4, 5, 6, 7)
	b, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	// The last event is PCR 7's EV_EFI_ACTION; its sha256 digest follows its
	// sha1 digest: the data (4-byte size + 29 bytes), sha384 (2+48), sha256
	// (32 bytes) from the end.
	at := len(b) - (4 + 29) - (2 + 48) - 32
	altered, err := attest.ParseEventLog(flip(b, at))
	if err != nil {
		t.Fatal(err)
	}
	replayed, err := altered.Replay(attest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = attest.ComparePCRs(sel, quoted, replayed)
	var me *attest.PCRMismatchError
	if !errors.As(err, &me) || !errors.Is(err, attest.ErrPCRMismatch) {
		t.Fatalf("ComparePCRs = %v, want a PCR mismatch", err)
	}
	if len(me.Mismatches) != 1 || me.Mismatches[0].Index != 7 || me.Mismatches[0].Bank != tpm2.TPMAlgSHA256 {
		t.Fatalf("mismatches = %+v, want sha256 PCR 7 only", me.Mismatches)
	}

	dropped := sampleLog(t, 0)
	dropped.Events = append(dropped.Events[:3], dropped.Events[4:]...) // the PCR 4 EV_IPL
	r, err := dropped.Replay(attest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := attest.ComparePCRs(sel, quoted, r); !errors.As(err, &me) || len(me.Mismatches) != 1 || me.Mismatches[0].Index != 4 {
		t.Fatalf("dropped event: %v, want PCR 4 named", err)
	}

	swapped := sampleLog(t, 0)
	e := swapped.Events
	e[3], e[4] = e[4], e[3] // PCR 4's IPL before PCR 3's no-action: different PCRs
	if r, err = swapped.Replay(attest.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := attest.ComparePCRs(sel, quoted, r); err != nil {
		t.Fatalf("reordered events of different PCRs: %v", err)
	}
}

func TestReplayStartupLocality(t *testing.T) {
	loc := func(b byte) []byte { return append([]byte("StartupLocality\x00"), b) }
	for _, c := range []struct {
		name    string
		build   func(l *attest.EventLog) error
		wantErr error
		want0   byte // last byte of PCR 0's initial value
	}{
		{"locality 3", func(l *attest.EventLog) error { _, err := l.Append(0, attest.EVNoAction, loc(3)); return err }, nil, 3},
		{"no locality event", func(l *attest.EventLog) error { return nil }, nil, 0},
		{"in PCR 1 it is only an EV_NO_ACTION", func(l *attest.EventLog) error { _, err := l.Append(1, attest.EVNoAction, loc(3)); return err }, nil, 0},
		{"locality 2", func(l *attest.EventLog) error { _, err := l.Append(0, attest.EVNoAction, loc(2)); return err }, attest.ErrBadEvidence, 0},
		{"too long", func(l *attest.EventLog) error {
			_, err := l.Append(0, attest.EVNoAction, append(loc(3), 0))
			return err
		}, attest.ErrBadEvidence, 0},
		{"after PCR 0 was extended", func(l *attest.EventLog) error {
			if _, err := l.Append(0, attest.EVSCRTMVersion, []byte("v")); err != nil {
				return err
			}
			_, err := l.Append(0, attest.EVNoAction, loc(3))
			return err
		}, attest.ErrBadEvidence, 0},
		{"twice", func(l *attest.EventLog) error {
			if _, err := l.Append(0, attest.EVNoAction, loc(0)); err != nil {
				return err
			}
			_, err := l.Append(0, attest.EVNoAction, loc(3))
			return err
		}, attest.ErrBadEvidence, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, err := attest.NewEventLog(tpm2.TPMAlgSHA256)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.build(l); err != nil {
				t.Fatal(err)
			}
			got, err := l.Replay(attest.Options{})
			if !errors.Is(err, c.wantErr) || (c.wantErr == nil) != (err == nil) {
				t.Fatalf("Replay = %v, want %v", err, c.wantErr)
			}
			if err == nil {
				want := make([]byte, 32)
				want[31] = c.want0
				if !bytes.Equal(got[tpm2.TPMAlgSHA256][0], want) {
					t.Errorf("PCR 0 = %x, want %x", got[tpm2.TPMAlgSHA256][0], want)
				}
			}
		})
	}
}

func TestEventLogBanks(t *testing.T) {
	for _, c := range []struct {
		name    string
		banks   []tpm2.TPMIAlgHash
		newErr  error
		replay  error
		allowed error // Replay with AllowSHA1
	}{
		{"sha256", []tpm2.TPMIAlgHash{tpm2.TPMAlgSHA256}, nil, nil, nil},
		{"sha1 only", []tpm2.TPMIAlgHash{tpm2.TPMAlgSHA1}, nil, attest.ErrUnsupportedAlgorithm, nil},
		{"sha512 only", []tpm2.TPMIAlgHash{tpm2.TPMAlgSHA512}, nil, attest.ErrUnsupportedAlgorithm, attest.ErrUnsupportedAlgorithm},
		{"none", nil, attest.ErrUnsupportedAlgorithm, nil, nil},
		{"twice", []tpm2.TPMIAlgHash{tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA256}, attest.ErrUnsupportedAlgorithm, nil, nil},
		{"not a hash", []tpm2.TPMIAlgHash{tpm2.TPMAlgAES}, attest.ErrUnsupportedAlgorithm, nil, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, err := attest.NewEventLog(c.banks...)
			if !errors.Is(err, c.newErr) || (c.newErr == nil) != (err == nil) {
				t.Fatalf("NewEventLog = %v, want %v", err, c.newErr)
			}
			if err != nil {
				return
			}
			if _, err := l.Append(0, attest.EVPostCode, []byte("x")); err != nil {
				t.Fatal(err)
			}
			if got := l.Banks(); len(got) != len(c.banks) || got[0] != c.banks[0] {
				t.Errorf("Banks = %v, want %v", got, c.banks)
			}
			if _, err := l.Replay(attest.Options{}); !errors.Is(err, c.replay) || (c.replay == nil) != (err == nil) {
				t.Errorf("Replay = %v, want %v", err, c.replay)
			}
			if _, err := l.Replay(attest.Options{AllowSHA1: true}); !errors.Is(err, c.allowed) || (c.allowed == nil) != (err == nil) {
				t.Errorf("Replay(AllowSHA1) = %v, want %v", err, c.allowed)
			}
		})
	}
}

// Events are checked when they are appended, and again when the log is
// marshalled or replayed, since Events is an exported slice.
func TestAppendEventChecked(t *testing.T) {
	l, err := attest.NewEventLog(tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384)
	if err != nil {
		t.Fatal(err)
	}
	d256 := tpm2.TPMTHA{HashAlg: tpm2.TPMAlgSHA256, Digest: make([]byte, 32)}
	d384 := tpm2.TPMTHA{HashAlg: tpm2.TPMAlgSHA384, Digest: make([]byte, 48)}
	for _, c := range []struct {
		name string
		e    attest.Event
		ok   bool
	}{
		{"both banks", attest.Event{PCR: 7, Type: attest.EVSeparator, Digests: []tpm2.TPMTHA{d256, d384}}, true},
		{"banks in another order", attest.Event{PCR: 7, Type: attest.EVSeparator, Digests: []tpm2.TPMTHA{d384, d256}}, true},
		{"one bank missing", attest.Event{PCR: 7, Digests: []tpm2.TPMTHA{d256}}, false},
		{"one bank twice", attest.Event{PCR: 7, Digests: []tpm2.TPMTHA{d256, d256}}, false},
		{"short digest", attest.Event{PCR: 7, Digests: []tpm2.TPMTHA{d256, {HashAlg: tpm2.TPMAlgSHA384, Digest: make([]byte, 32)}}}, false},
		{"foreign bank", attest.Event{PCR: 7, Digests: []tpm2.TPMTHA{d256, {HashAlg: tpm2.TPMAlgSHA1, Digest: make([]byte, 20)}}}, false},
		{"PCR 24", attest.Event{PCR: 24, Digests: []tpm2.TPMTHA{d256, d384}}, false},
		{"PCR -1", attest.Event{PCR: -1, Digests: []tpm2.TPMTHA{d256, d384}}, false},
		{"data too large", attest.Event{PCR: 7, Digests: []tpm2.TPMTHA{d256, d384}, Data: make([]byte, attest.MaxEventDataSize+1)}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := l.AppendEvent(c.e)
			if c.ok != (err == nil) || (err != nil && !errors.Is(err, attest.ErrBadEvidence)) {
				t.Fatalf("AppendEvent = %v, want ok=%v or ErrBadEvidence", err, c.ok)
			}
		})
	}
	l.Events = append(l.Events, attest.Event{PCR: 30})
	if _, err := l.MarshalBinary(); !errors.Is(err, attest.ErrBadEvidence) {
		t.Errorf("MarshalBinary with a bad event = %v", err)
	}
	if _, err := l.Replay(attest.Options{}); !errors.Is(err, attest.ErrBadEvidence) {
		t.Errorf("Replay with a bad event = %v", err)
	}
	var zero attest.EventLog
	if _, err := zero.Append(0, attest.EVPostCode, nil); !errors.Is(err, attest.ErrBadEvidence) {
		t.Errorf("Append to a zero EventLog = %v", err)
	}
}

// A log of more than MaxEvents events is refused: each parsed event costs
// memory beyond its bytes, and no firmware log has that many.
func TestEventLogEventLimit(t *testing.T) {
	ev := event2(7, 4, 1, sha256Zero, nil)
	log := cat(header(sha256Spec), bytes.Repeat(ev, attest.MaxEvents))
	l, err := attest.ParseEventLog(log)
	if err != nil || len(l.Events) != attest.MaxEvents {
		t.Fatalf("%d events: %v", attest.MaxEvents, err)
	}
	if _, err := attest.ParseEventLog(append(log, ev...)); !errors.Is(err, attest.ErrBadEvidence) {
		t.Errorf("%d events: %v, want ErrBadEvidence", attest.MaxEvents+1, err)
	}
}
