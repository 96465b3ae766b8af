package attest

import (
	"bytes"
	"crypto"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/catalog"
)

// EventType is a TCG PC Client event type.
type EventType uint32

// Event types this package names (TCG PC Client Platform Firmware Profile,
// 10.4.1). Others pass through parsing and replay unchanged.
const (
	EVPostCode                EventType = 0x00000001
	EVNoAction                EventType = 0x00000003 // not extended into any PCR
	EVSeparator               EventType = 0x00000004
	EVAction                  EventType = 0x00000005
	EVEventTag                EventType = 0x00000006
	EVSCRTMContents           EventType = 0x00000007
	EVSCRTMVersion            EventType = 0x00000008
	EVIPL                     EventType = 0x0000000d
	EVEFIAction               EventType = 0x80000007
	EVEFIPlatformFirmwareBlob EventType = 0x80000008
)

// eventTypeNames are the names the TCG PC Client Platform Firmware Profile
// gives the event types firmware logs carry.
var eventTypeNames = map[EventType]string{
	0x00000000:                "EV_PREBOOT_CERT",
	EVPostCode:                "EV_POST_CODE",
	0x00000002:                "EV_UNUSED",
	EVNoAction:                "EV_NO_ACTION",
	EVSeparator:               "EV_SEPARATOR",
	EVAction:                  "EV_ACTION",
	EVEventTag:                "EV_EVENT_TAG",
	EVSCRTMContents:           "EV_S_CRTM_CONTENTS",
	EVSCRTMVersion:            "EV_S_CRTM_VERSION",
	0x00000009:                "EV_CPU_MICROCODE",
	0x0000000a:                "EV_PLATFORM_CONFIG_FLAGS",
	0x0000000b:                "EV_TABLE_OF_DEVICES",
	0x0000000c:                "EV_COMPACT_HASH",
	EVIPL:                     "EV_IPL",
	0x0000000e:                "EV_IPL_PARTITION_DATA",
	0x0000000f:                "EV_NONHOST_CODE",
	0x00000010:                "EV_NONHOST_CONFIG",
	0x00000011:                "EV_NONHOST_INFO",
	0x00000012:                "EV_OMIT_BOOT_DEVICE_EVENTS",
	0x80000001:                "EV_EFI_VARIABLE_DRIVER_CONFIG",
	0x80000002:                "EV_EFI_VARIABLE_BOOT",
	0x80000003:                "EV_EFI_BOOT_SERVICES_APPLICATION",
	0x80000004:                "EV_EFI_BOOT_SERVICES_DRIVER",
	0x80000005:                "EV_EFI_RUNTIME_SERVICES_DRIVER",
	0x80000006:                "EV_EFI_GPT_EVENT",
	EVEFIAction:               "EV_EFI_ACTION",
	EVEFIPlatformFirmwareBlob: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
	0x80000009:                "EV_EFI_HANDOFF_TABLES",
	0x8000000a:                "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
	0x8000000b:                "EV_EFI_HANDOFF_TABLES2",
	0x8000000c:                "EV_EFI_VARIABLE_BOOT2",
	0x800000e0:                "EV_EFI_VARIABLE_AUTHORITY",
}

// String is the event type's TCG name, or its number in hex.
func (t EventType) String() string {
	if n, ok := eventTypeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("0x%08x", uint32(t))
}

// Limits on an event log. The firmware logs Linux exports are tens of KB;
// these bounds leave room for large ones and for provd's own log, and keep a
// hostile log from making the parser allocate without end.
const (
	MaxEventLogSize  = 16 << 20
	MaxEventDataSize = 1 << 20
	// MaxEvents bounds the events of one log: a firmware log has hundreds
	// to a few thousand, and each parsed event costs memory beyond its
	// bytes, so a log of tiny events must not cost many times its size.
	MaxEvents        = 1 << 16
	maxLogAlgorithms = 8
	maxDigestSize    = 64
)

// Fixed strings of the format, with their terminating NUL.
const (
	specIDSignature    = "Spec ID Event03\x00"
	startupLocalitySig = "StartupLocality\x00"
)

// Event is one TCG_PCR_EVENT2 of a crypto-agile log.
type Event struct {
	// PCR is the PCR index the event is extended into (0..23).
	PCR int
	// Type is the event type; EV_NO_ACTION events are not extended.
	Type EventType
	// Digests holds one digest per algorithm of the log. They are what is
	// extended; whether they are the hash of Data depends on the event type.
	Digests []tpm2.TPMTHA
	// Data is the event data, as the measuring code described the event.
	Data []byte
}

// Digest returns the event's digest for alg, or nil.
func (e Event) Digest(alg tpm2.TPMIAlgHash) []byte {
	for _, d := range e.Digests {
		if d.HashAlg == alg {
			return d.Digest
		}
	}
	return nil
}

type logAlg struct {
	alg  tpm2.TPMIAlgHash
	size int
}

// EventLog is a TCG PC Client crypto-agile event log (the format of Linux's
// binary_bios_measurements): a TCG_PCR_EVENT header holding the Spec ID
// Event03, which declares the digest algorithms, then TCG_PCR_EVENT2 events.
// Make one with ParseEventLog or NewEventLog. Events may be read and changed;
// every event is checked again by MarshalBinary and Replay.
type EventLog struct {
	Events []Event
	specID []byte // the header's event data, kept to marshal it back unchanged
	algs   []logAlg
}

// Banks lists the log's digest algorithms, in the Spec ID event's order.
func (l *EventLog) Banks() []tpm2.TPMIAlgHash {
	out := make([]tpm2.TPMIAlgHash, len(l.algs))
	for i, a := range l.algs {
		out[i] = a.alg
	}
	return out
}

// NewEventLog starts an empty log whose events carry digests for banks (each
// at most once; SHA-1, SHA-256, SHA-384 or SHA-512).
func NewEventLog(banks ...tpm2.TPMIAlgHash) (*EventLog, error) {
	if len(banks) == 0 || len(banks) > maxLogAlgorithms {
		return nil, fmt.Errorf("%w: an event log needs 1..%d banks, got %d", ErrUnsupportedAlgorithm, maxLogAlgorithms, len(banks))
	}
	l := &EventLog{}
	spec := []byte(specIDSignature)
	spec = binary.LittleEndian.AppendUint32(spec, 0) // platformClass: client
	spec = append(spec, 0, 2, 0, 2)                  // version 2.0, errata 0, UINTN of 64 bits
	spec = binary.LittleEndian.AppendUint32(spec, uint32(len(banks)))
	for _, b := range banks {
		h, err := b.Hash()
		if err != nil || !h.Available() || h.Size() > maxDigestSize {
			return nil, fmt.Errorf("%w: event log bank %s", ErrUnsupportedAlgorithm, catalog.HashName(b))
		}
		for _, a := range l.algs {
			if a.alg == b {
				return nil, fmt.Errorf("%w: event log bank %s named twice", ErrUnsupportedAlgorithm, catalog.HashName(b))
			}
		}
		l.algs = append(l.algs, logAlg{alg: b, size: h.Size()})
		spec = binary.LittleEndian.AppendUint16(spec, uint16(b))
		spec = binary.LittleEndian.AppendUint16(spec, uint16(h.Size()))
	}
	l.specID = append(spec, 0) // no vendor info
	return l, nil
}

// Append measures data into pcr as an event of type typ: each digest is the
// bank's hash of data, except for EV_NO_ACTION, whose digests are zero (it is
// not extended). It returns the event, whose digests are what to extend
// into the TPM.
func (l *EventLog) Append(pcr int, typ EventType, data []byte) (Event, error) {
	e := Event{PCR: pcr, Type: typ, Data: data}
	for _, a := range l.algs {
		d := make([]byte, a.size)
		if typ != EVNoAction {
			h, err := a.alg.Hash()
			if err != nil || !h.Available() {
				return Event{}, fmt.Errorf("%w: cannot hash for bank %s", ErrUnsupportedAlgorithm, catalog.HashName(a.alg))
			}
			hh := h.New()
			hh.Write(data)
			d = hh.Sum(nil)
		}
		e.Digests = append(e.Digests, tpm2.TPMTHA{HashAlg: a.alg, Digest: d})
	}
	if err := l.AppendEvent(e); err != nil {
		return Event{}, err
	}
	return e, nil
}

// AppendEvent adds an event whose digests the caller computed (when the
// digest is of something other than the event data, such as a firmware
// image described by the data). The event must carry exactly one digest for
// each bank of the log.
func (l *EventLog) AppendEvent(e Event) error {
	if err := l.checkEvent(e); err != nil {
		return err
	}
	l.Events = append(l.Events, e.clone())
	return nil
}

// clone copies an event, so that the log and the caller never share a
// digest or data buffer.
func (e Event) clone() Event {
	c := Event{PCR: e.PCR, Type: e.Type, Data: bytes.Clone(e.Data), Digests: make([]tpm2.TPMTHA, len(e.Digests))}
	for i, d := range e.Digests {
		c.Digests[i] = tpm2.TPMTHA{HashAlg: d.HashAlg, Digest: bytes.Clone(d.Digest)}
	}
	return c
}

// checkEvent checks an event against the log's banks and the limits.
func (l *EventLog) checkEvent(e Event) error {
	if len(l.algs) == 0 {
		return fmt.Errorf("%w: event log without banks (make it with NewEventLog or ParseEventLog)", ErrBadEvidence)
	}
	if e.PCR < 0 || e.PCR >= numPCRs {
		return fmt.Errorf("%w: PCR %d (want 0..%d)", ErrBadEvidence, e.PCR, numPCRs-1)
	}
	if len(e.Data) > MaxEventDataSize {
		return fmt.Errorf("%w: event data of %d bytes (limit %d)", ErrBadEvidence, len(e.Data), MaxEventDataSize)
	}
	if len(e.Digests) != len(l.algs) {
		return fmt.Errorf("%w: %d digests, the log has %d banks", ErrBadEvidence, len(e.Digests), len(l.algs))
	}
	for i, d := range e.Digests {
		a, ok := l.alg(d.HashAlg)
		if !ok {
			return fmt.Errorf("%w: digest of %s, not a bank of the log", ErrBadEvidence, catalog.HashName(d.HashAlg))
		}
		if len(d.Digest) != a.size {
			return fmt.Errorf("%w: %s digest of %d bytes, want %d", ErrBadEvidence, catalog.HashName(d.HashAlg), len(d.Digest), a.size)
		}
		for _, o := range e.Digests[:i] {
			if o.HashAlg == d.HashAlg {
				return fmt.Errorf("%w: two %s digests", ErrBadEvidence, catalog.HashName(d.HashAlg))
			}
		}
	}
	return nil
}

func (l *EventLog) alg(alg tpm2.TPMIAlgHash) (logAlg, bool) {
	for _, a := range l.algs {
		if a.alg == alg {
			return a, true
		}
	}
	return logAlg{}, false
}

// MarshalBinary returns the log in the binary_bios_measurements format. A
// parsed log marshals back to the bytes it was parsed from.
func (l *EventLog) MarshalBinary() ([]byte, error) {
	if len(l.algs) == 0 {
		return nil, fmt.Errorf("%w: event log without banks", ErrBadEvidence)
	}
	le := binary.LittleEndian
	out := le.AppendUint32(nil, 0)
	out = le.AppendUint32(out, uint32(EVNoAction))
	out = append(out, make([]byte, 20)...) // the header's SHA-1 digest field, zero
	out = le.AppendUint32(out, uint32(len(l.specID)))
	out = append(out, l.specID...)
	for i, e := range l.Events {
		if err := l.checkEvent(e); err != nil {
			return nil, fmt.Errorf("event %d: %w", i, err)
		}
		out = le.AppendUint32(out, uint32(e.PCR))
		out = le.AppendUint32(out, uint32(e.Type))
		out = le.AppendUint32(out, uint32(len(e.Digests)))
		for _, d := range e.Digests {
			out = le.AppendUint16(out, uint16(d.HashAlg))
			out = append(out, d.Digest...)
		}
		out = le.AppendUint32(out, uint32(len(e.Data)))
		out = append(out, e.Data...)
		if len(out) > MaxEventLogSize {
			return nil, fmt.Errorf("%w: event log over %d bytes", ErrBadEvidence, MaxEventLogSize)
		}
	}
	return out, nil
}

// reader reads little-endian fields and remembers the first overrun, so
// that a parse checks for truncation once per structure.
type reader struct {
	b   []byte
	off int
	bad bool
}

func (r *reader) take(n int) []byte {
	if r.bad || n < 0 || n > len(r.b)-r.off {
		r.bad = true
		return nil
	}
	s := r.b[r.off : r.off+n : r.off+n]
	r.off += n
	return s
}

func (r *reader) u8() uint8 {
	if s := r.take(1); s != nil {
		return s[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if s := r.take(2); s != nil {
		return binary.LittleEndian.Uint16(s)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if s := r.take(4); s != nil {
		return binary.LittleEndian.Uint32(s)
	}
	return 0
}

func (r *reader) left() int { return len(r.b) - r.off }

// ParseEventLog parses a crypto-agile TCG PC Client event log, strictly: the
// first event must be the Spec ID Event03 header (PCR 0, EV_NO_ACTION, zero
// SHA-1 digest), every later event must carry exactly one digest for each
// algorithm the header declares, PCR indices are 0..23, and nothing may
// follow the last event. Sizes are bounded (MaxEventLogSize,
// MaxEventDataSize); the parser copies what it keeps.
func ParseEventLog(b []byte) (*EventLog, error) {
	// One copy of the whole log, which events' digests and data are
	// capped slices of: the parser keeps nothing of the caller's buffer, in
	// one allocation rather than two per event.
	return parseEventLog(b, true)
}

// ParseOwnedEventLog is ParseEventLog for a caller that gives b up: the
// events' digests and data are capped slices of b itself (an append to one
// never writes into b), and b must not change while the log is in use. The
// fleet endpoint parses each request's logs so, which nothing else holds:
// one copy of up to MaxEventLogSize fewer per appraisal (a 64 KiB log: a
// tenth of the endpoint's throughput, in its garbage collector).
func ParseOwnedEventLog(b []byte) (*EventLog, error) { return parseEventLog(b, false) }

// parseEventLog parses b, which the log keeps, or a copy of it.
func parseEventLog(b []byte, copied bool) (*EventLog, error) {
	if len(b) > MaxEventLogSize {
		return nil, fmt.Errorf("%w: event log of %d bytes (limit %d)", ErrBadEvidence, len(b), MaxEventLogSize)
	}
	if copied {
		b = bytes.Clone(b)
	}
	r := &reader{b: b[:len(b):len(b)]}
	pcr, typ := r.u32(), EventType(r.u32())
	sha1 := r.take(20)
	size := r.u32()
	if r.bad {
		return nil, fmt.Errorf("%w: event log header truncated", ErrBadEvidence)
	}
	if pcr != 0 || typ != EVNoAction || len(bytes.Trim(sha1, "\x00")) != 0 {
		return nil, fmt.Errorf("%w: first event is not a crypto-agile log header", ErrBadEvidence)
	}
	if size > MaxEventDataSize {
		return nil, fmt.Errorf("%w: Spec ID event of %d bytes", ErrBadEvidence, size)
	}
	spec := r.take(int(size))
	if r.bad {
		return nil, fmt.Errorf("%w: Spec ID event truncated", ErrBadEvidence)
	}
	algs, err := parseSpecID(spec)
	if err != nil {
		return nil, err
	}
	l := &EventLog{specID: spec, algs: algs}
	for r.left() > 0 {
		if len(l.Events) == MaxEvents {
			return nil, fmt.Errorf("%w: more than %d events", ErrBadEvidence, MaxEvents)
		}
		at := r.off
		e, err := parseEvent2(r, l)
		if err != nil {
			return nil, fmt.Errorf("event %d (byte %d): %w", len(l.Events), at, err)
		}
		l.Events = append(l.Events, e)
	}
	return l, nil
}

// parseSpecID parses a TCG_EfiSpecIDEventStruct and returns its algorithms.
func parseSpecID(b []byte) ([]logAlg, error) {
	r := &reader{b: b}
	sig := r.take(len(specIDSignature))
	r.u32() // platformClass
	r.u8()  // specVersionMinor
	major := r.u8()
	r.u8() // specErrata
	r.u8() // uintnSize
	n := r.u32()
	if r.bad || string(sig) != specIDSignature {
		return nil, fmt.Errorf("%w: the header is not a Spec ID Event03 (not a crypto-agile log)", ErrBadEvidence)
	}
	if major != 2 {
		return nil, fmt.Errorf("%w: Spec ID version %d, want 2", ErrBadEvidence, major)
	}
	if n == 0 || n > maxLogAlgorithms {
		return nil, fmt.Errorf("%w: Spec ID declares %d algorithms (want 1..%d)", ErrBadEvidence, n, maxLogAlgorithms)
	}
	var algs []logAlg
	for range n {
		a := logAlg{alg: tpm2.TPMIAlgHash(r.u16()), size: int(r.u16())}
		if r.bad {
			break
		}
		if a.size == 0 || a.size > maxDigestSize {
			return nil, fmt.Errorf("%w: %s digests of %d bytes", ErrBadEvidence, catalog.HashName(a.alg), a.size)
		}
		// An algorithm this package knows must have its own digest size; an
		// unknown one is parsed by its declared size and never replayed, and
		// that size must be a hash's (20, 32, 48 or 64 bytes), not a way to
		// make events tiny.
		if h, err := a.alg.Hash(); err == nil && h.Size() != a.size {
			return nil, fmt.Errorf("%w: %s digests declared %d bytes, want %d", ErrBadEvidence, catalog.HashName(a.alg), a.size, h.Size())
		}
		if !slices.Contains([]int{20, 32, 48, 64}, a.size) {
			return nil, fmt.Errorf("%w: %s digests of %d bytes: no hash has that size", ErrBadEvidence, catalog.HashName(a.alg), a.size)
		}
		for _, o := range algs {
			if o.alg == a.alg {
				return nil, fmt.Errorf("%w: Spec ID names %s twice", ErrBadEvidence, catalog.HashName(a.alg))
			}
		}
		algs = append(algs, a)
	}
	r.take(int(r.u8())) // vendorInfo
	if r.bad || r.left() != 0 {
		return nil, fmt.Errorf("%w: Spec ID event truncated or followed by data", ErrBadEvidence)
	}
	return algs, nil
}

// parseEvent2 parses one TCG_PCR_EVENT2.
func parseEvent2(r *reader, l *EventLog) (Event, error) {
	pcr, typ, count := r.u32(), EventType(r.u32()), r.u32()
	if r.bad {
		return Event{}, fmt.Errorf("%w: event truncated", ErrBadEvidence)
	}
	if pcr >= numPCRs {
		return Event{}, fmt.Errorf("%w: PCR %d (want 0..%d)", ErrBadEvidence, pcr, numPCRs-1)
	}
	if count != uint32(len(l.algs)) {
		return Event{}, fmt.Errorf("%w: %d digests, the log has %d banks", ErrBadEvidence, count, len(l.algs))
	}
	e := Event{PCR: int(pcr), Type: typ, Digests: make([]tpm2.TPMTHA, 0, count)}
	for range count {
		alg := tpm2.TPMIAlgHash(r.u16())
		a, ok := l.alg(alg)
		if r.bad || !ok {
			return Event{}, fmt.Errorf("%w: digest truncated or of an algorithm the header does not declare", ErrBadEvidence)
		}
		d := r.take(a.size)
		if r.bad {
			return Event{}, fmt.Errorf("%w: digest truncated", ErrBadEvidence)
		}
		e.Digests = append(e.Digests, tpm2.TPMTHA{HashAlg: alg, Digest: d})
	}
	size := r.u32()
	if r.bad || size > MaxEventDataSize || int(size) > r.left() {
		return Event{}, fmt.Errorf("%w: event data truncated or too large", ErrBadEvidence)
	}
	e.Data = r.take(int(size))
	// checkEvent catches a digest named twice (the count matched the banks).
	if err := l.checkEvent(e); err != nil {
		return Event{}, err
	}
	return e, nil
}

// Replay computes the PCR values the log's events give, in every bank of the
// log that opts accept (SHA-256, SHA-384, and SHA-1 with opts.AllowSHA1);
// other banks are not replayed. Each bank gets all 24 PCRs, starting from
// their reset values (zero; all ones for 17..22), so a PCR the log does not
// touch has its reset value. EV_NO_ACTION events are not extended, except
// that a StartupLocality event in PCR 0 before any extend of PCR 0 sets PCR
// 0's initial value to the locality in its last byte, as TPM2_Startup at that
// locality does.
//
// Replay says what the digests add up to; it does not check an event's data
// against its digests, which the meaning of each event type decides.
func (l *EventLog) Replay(opts Options) (PCRValues, error) {
	out := PCRValues{}
	for _, a := range l.algs {
		h, err := bankHash(a.alg, opts.AllowSHA1)
		if err != nil {
			continue
		}
		vals, err := l.replayBank(a.alg, h)
		if err != nil {
			return nil, err
		}
		out[a.alg] = vals
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: the event log has no bank to replay (SHA-256, SHA-384, or SHA-1 when allowed)", ErrUnsupportedAlgorithm)
	}
	return out, nil
}

func (l *EventLog) replayBank(alg tpm2.TPMIAlgHash, h crypto.Hash) (map[int][]byte, error) {
	vals := make(map[int][]byte, numPCRs)
	for i := range numPCRs {
		v := make([]byte, h.Size())
		if i >= 17 && i <= 22 {
			for j := range v {
				v[j] = 0xff
			}
		}
		vals[i] = v
	}
	extended0, located := false, false
	hh := h.New()
	for i, e := range l.Events {
		if err := l.checkEvent(e); err != nil {
			return nil, fmt.Errorf("event %d: %w", i, err)
		}
		if e.Type == EVNoAction {
			if e.PCR != 0 || !bytes.HasPrefix(e.Data, []byte(startupLocalitySig)) {
				continue
			}
			if len(e.Data) != len(startupLocalitySig)+1 {
				return nil, fmt.Errorf("%w: event %d: StartupLocality event of %d bytes", ErrBadEvidence, i, len(e.Data))
			}
			loc := e.Data[len(startupLocalitySig)]
			if loc != 0 && loc != 3 && loc != 4 {
				return nil, fmt.Errorf("%w: event %d: startup locality %d (want 0, 3 or 4)", ErrBadEvidence, i, loc)
			}
			if extended0 || located {
				return nil, fmt.Errorf("%w: event %d: StartupLocality after PCR 0 was extended or set", ErrBadEvidence, i)
			}
			vals[0][len(vals[0])-1] = loc
			located = true
			continue
		}
		hh.Reset()
		hh.Write(vals[e.PCR])
		hh.Write(e.Digest(alg))
		vals[e.PCR] = hh.Sum(vals[e.PCR][:0])
		if e.PCR == 0 {
			extended0 = true
		}
	}
	return vals, nil
}
