package attest_test

import (
	"bytes"
	"crypto"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"testing"
	"unicode/utf16"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest"
)

// utf16le is a UEFI CHAR16 string without its terminator.
func utf16le(s string) []byte {
	var b []byte
	for _, r := range utf16.Encode([]rune(s)) {
		b = binary.LittleEndian.AppendUint16(b, r)
	}
	return b
}

// uefiVariable is a UEFI_VARIABLE_DATA: VariableName (GUID),
// UnicodeNameLength, VariableDataLength, UnicodeName, VariableData.
func uefiVariable(guid []byte, name string, data []byte) []byte {
	b := append([]byte(nil), guid...)
	b = binary.LittleEndian.AppendUint64(b, uint64(len([]rune(name))))
	b = binary.LittleEndian.AppendUint64(b, uint64(len(data)))
	b = append(b, utf16le(name)...)
	return append(b, data...)
}

// uefiEvent is one event as OVMF writes it: its PCR, type, data, and what
// its digests are of (the data itself for most types, the image or blob
// for EV_EFI_BOOT_SERVICES_APPLICATION and EV_EFI_PLATFORM_FIRMWARE_BLOB).
type uefiEvent struct {
	pcr      uint32
	typ      attest.EventType
	data     []byte
	measured []byte // nil: the data
}

// uefiEvents is a boot as UEFI firmware logs it, in its order.
func uefiEvents() []uefiEvent {
	efiGlobal := bytes.Repeat([]byte{0x61}, 16)
	imageLoad := binary.LittleEndian.AppendUint64(nil, 0x7e000000) // ImageLocationInMemory
	imageLoad = binary.LittleEndian.AppendUint64(imageLoad, 0x1000)
	imageLoad = binary.LittleEndian.AppendUint64(imageLoad, 0)
	imageLoad = binary.LittleEndian.AppendUint64(imageLoad, 4)
	imageLoad = append(imageLoad, 0x7f, 0xff, 0x04, 0x00) // end of device path
	blob := binary.LittleEndian.AppendUint64(nil, 0xffc00000)
	blob = binary.LittleEndian.AppendUint64(blob, 0x400000)
	ev := []uefiEvent{
		{0, attest.EVSCRTMVersion, utf16le("edk2-stable\x00"), nil},
		{0, attest.EVEFIPlatformFirmwareBlob, blob, []byte("the firmware volume")},
		{7, 0x80000001, uefiVariable(efiGlobal, "SecureBoot", []byte{1}), nil}, // EV_EFI_VARIABLE_DRIVER_CONFIG
		{7, 0x80000001, uefiVariable(efiGlobal, "PK", []byte("pk cert")), nil},
		{1, 0x80000002, uefiVariable(efiGlobal, "BootOrder", []byte{0, 0}), nil}, // EV_EFI_VARIABLE_BOOT
	}
	for pcr := uint32(0); pcr <= 7; pcr++ {
		ev = append(ev, uefiEvent{pcr, attest.EVSeparator, []byte{0, 0, 0, 0}, nil})
	}
	return append(ev,
		uefiEvent{5, 0x80000006, []byte("GPT header and partitions"), nil},              // EV_EFI_GPT_EVENT
		uefiEvent{4, 0x80000003, imageLoad, []byte("the PE/COFF image's authenticode")}, // EV_EFI_BOOT_SERVICES_APPLICATION
		uefiEvent{5, attest.EVEFIAction, []byte("Exit Boot Services Invocation"), nil},
		uefiEvent{5, attest.EVEFIAction, []byte("Exit Boot Services Returned with Success"), nil},
	)
}

// uefiLog writes the log byte by byte as UEFI firmware does: the Spec ID
// event as an EV_NO_ACTION TCG_PCR_EVENT (SHA-1 format) declaring SHA-1 and
// SHA-256, a StartupLocality EV_NO_ACTION, then TCG_PCR_EVENT2 records with
// both banks' digests.
func uefiLog() []byte {
	log := header(specID(2, uint16(tpm2.TPMAlgSHA1), 20, uint16(tpm2.TPMAlgSHA256), 32))
	zeros := cat(digest(uint16(tpm2.TPMAlgSHA1), make([]byte, 20)), digest(uint16(tpm2.TPMAlgSHA256), make([]byte, 32)))
	log = append(log, event2(0, uint32(attest.EVNoAction), 2, zeros, []byte("StartupLocality\x00\x03"))...)
	for _, e := range uefiEvents() {
		m := e.measured
		if m == nil {
			m = e.data
		}
		s1, s2 := sha1.Sum(m), sha256.Sum256(m)
		ds := cat(digest(uint16(tpm2.TPMAlgSHA1), s1[:]), digest(uint16(tpm2.TPMAlgSHA256), s2[:]))
		log = append(log, event2(e.pcr, uint32(e.typ), 2, ds, e.data)...)
	}
	return log
}

// TestUEFIFirmwareLog: a log in the exact layout UEFI firmware writes (what
// Linux exports as binary_bios_measurements) parses with the code that
// reads provd's own log, names its event types, marshals back to the same
// bytes, and replays to the PCRs computed here by hand, locality 3 included.
func TestUEFIFirmwareLog(t *testing.T) {
	raw := uefiLog()
	l, err := attest.ParseEventLog(raw)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := l.MarshalBinary(); err != nil || !bytes.Equal(again, raw) {
		t.Fatalf("marshals to other bytes (%v)", err)
	}
	if got := l.Banks(); len(got) != 2 || got[0] != tpm2.TPMAlgSHA1 || got[1] != tpm2.TPMAlgSHA256 {
		t.Fatalf("banks %v", got)
	}
	names := map[string]bool{}
	for _, e := range l.Events {
		names[e.Type.String()] = true
	}
	for _, n := range []string{"EV_NO_ACTION", "EV_S_CRTM_VERSION", "EV_EFI_PLATFORM_FIRMWARE_BLOB", "EV_EFI_VARIABLE_DRIVER_CONFIG",
		"EV_EFI_VARIABLE_BOOT", "EV_SEPARATOR", "EV_EFI_GPT_EVENT", "EV_EFI_BOOT_SERVICES_APPLICATION", "EV_EFI_ACTION"} {
		if !names[n] {
			t.Errorf("no %s among %v", n, names)
		}
	}
	got, err := l.Replay(attest.Options{AllowSHA1: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256} {
		want := map[int][]byte{}
		for i := range 24 {
			want[i] = make([]byte, h.Size())
			if i >= 17 && i <= 22 {
				want[i] = bytes.Repeat([]byte{0xff}, h.Size())
			}
		}
		want[0][h.Size()-1] = 3
		for _, e := range uefiEvents() {
			m := e.measured
			if m == nil {
				m = e.data
			}
			want[int(e.pcr)] = extend(h, want[int(e.pcr)], hashOf(h, m))
		}
		bank := map[crypto.Hash]tpm2.TPMIAlgHash{crypto.SHA1: tpm2.TPMAlgSHA1, crypto.SHA256: tpm2.TPMAlgSHA256}[h]
		for i := range 24 {
			if !bytes.Equal(got[bank][i], want[i]) {
				t.Errorf("%v PCR %d = %x, want %x", h, i, got[bank][i], want[i])
			}
		}
	}
}
