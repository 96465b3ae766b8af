package attest_test

import (
	"bufio"
	"bytes"
	_ "embed"
	"encoding/hex"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest"
)

// The firmware event log and the PCRs of a real UEFI boot: OVMF (Debian 12's
// ovmf package) booting Debian 12's kernel directly, with a swtpm (SHA-1 and
// SHA-256 banks) as a tpm-crb, captured by `make vm-test` from the guest's
// /sys/kernel/security/tpm0/binary_bios_measurements and tpm2_pcrread at the
// first boot (PROVD_VM_FIXTURE=1 writes them again). testdata/README.md says
// more.
var (
	//go:embed testdata/ovmf-bios-measurements.bin
	ovmfLog []byte
	//go:embed testdata/ovmf-pcrs.txt
	ovmfPCRs string
)

// parsePCRFile reads "BANK INDEX HEX" lines.
func parsePCRFile(t *testing.T, s string) attest.PCRValues {
	t.Helper()
	banks := map[string]tpm2.TPMIAlgHash{"sha1": tpm2.TPMAlgSHA1, "sha256": tpm2.TPMAlgSHA256, "sha384": tpm2.TPMAlgSHA384}
	out := attest.PCRValues{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			t.Fatalf("line %d: %q", n, sc.Text())
		}
		bank, ok := banks[f[0]]
		i, err := strconv.Atoi(f[1])
		v, herr := hex.DecodeString(f[2])
		if !ok || err != nil || herr != nil {
			t.Fatalf("line %d: %q", n, sc.Text())
		}
		if out[bank] == nil {
			out[bank] = map[int][]byte{}
		}
		out[bank][i] = v
	}
	return out
}

// extendedPCRs lists the PCRs a log's events extend.
func extendedPCRs(l *attest.EventLog) []int {
	seen := map[int]bool{}
	for _, e := range l.Events {
		if e.Type != attest.EVNoAction {
			seen[e.PCR] = true
		}
	}
	var out []int
	for i := range seen {
		out = append(out, i)
	}
	sort.Ints(out)
	return out
}

// replayMatches replays raw and reports the first PCR, in any bank the TPM
// reported, that differs from the TPM's value ("" when all match).
func replayMatches(raw []byte, tpmPCRs attest.PCRValues) (string, error) {
	l, err := attest.ParseEventLog(raw)
	if err != nil {
		return "", err
	}
	got, err := l.Replay(attest.Options{AllowSHA1: true})
	if err != nil {
		return "", err
	}
	for bank, want := range tpmPCRs {
		for _, i := range extendedPCRs(l) {
			if !bytes.Equal(got[bank][i], want[i]) {
				return "bank " + strconv.Itoa(int(bank)) + " PCR " + strconv.Itoa(i), nil
			}
		}
	}
	return "", nil
}

func TestOVMFFirmwareLogFixture(t *testing.T) {
	tpmPCRs := parsePCRFile(t, ovmfPCRs)
	if len(tpmPCRs[tpm2.TPMAlgSHA1]) != 24 || len(tpmPCRs[tpm2.TPMAlgSHA256]) != 24 {
		t.Fatalf("the fixture should hold 24 PCRs in each of SHA-1 and SHA-256, has %d and %d",
			len(tpmPCRs[tpm2.TPMAlgSHA1]), len(tpmPCRs[tpm2.TPMAlgSHA256]))
	}
	l, err := attest.ParseEventLog(ovmfLog)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := l.MarshalBinary(); err != nil || !bytes.Equal(again, ovmfLog) {
		t.Fatalf("marshals to other bytes (%v)", err)
	}
	if got := l.Banks(); len(got) != 2 || got[0] != tpm2.TPMAlgSHA1 || got[1] != tpm2.TPMAlgSHA256 {
		t.Fatalf("banks %v", got)
	}
	pcrs := extendedPCRs(l)
	for i := range 8 {
		if !contains(pcrs, i) {
			t.Errorf("the firmware log does not extend PCR %d (extends %v)", i, pcrs)
		}
	}
	names := map[string]bool{}
	for _, e := range l.Events {
		names[e.Type.String()] = true
	}
	for _, n := range []string{"EV_S_CRTM_VERSION", "EV_EFI_PLATFORM_FIRMWARE_BLOB", "EV_EFI_VARIABLE_DRIVER_CONFIG", "EV_EVENT_TAG",
		"EV_EFI_VARIABLE_BOOT", "EV_SEPARATOR", "EV_EFI_BOOT_SERVICES_APPLICATION", "EV_EFI_ACTION"} {
		if !names[n] {
			t.Errorf("no %s among %v", n, names)
		}
	}
	differs, err := replayMatches(ovmfLog, tpmPCRs)
	if err != nil {
		t.Fatal(err)
	}
	if differs != "" {
		t.Fatalf("the log does not replay to the PCRs the TPM reported: %s differs", differs)
	}
}

// Every digest of the real log is what the replay vouches for: one byte
// flipped in any of them makes a PCR differ from the TPM's.
func TestOVMFFirmwareLogFlippedByteCaught(t *testing.T) {
	tpmPCRs := parsePCRFile(t, ovmfPCRs)
	l, err := attest.ParseEventLog(ovmfLog)
	if err != nil {
		t.Fatal(err)
	}
	tried := 0
	for n, e := range l.Events {
		if e.Type == attest.EVNoAction {
			continue
		}
		for _, d := range e.Digests {
			at := bytes.Index(ovmfLog, d.Digest)
			if at < 0 {
				t.Fatalf("event %d: digest %x not found in the log", n, d.Digest)
			}
			raw := bytes.Clone(ovmfLog)
			raw[at+len(d.Digest)/2] ^= 0x01
			differs, err := replayMatches(raw, tpmPCRs)
			if err == nil && differs == "" {
				t.Errorf("event %d (%v, PCR %d): a flipped byte in its %v digest replays to the TPM's PCRs", n, e.Type, e.PCR, d.HashAlg)
			}
			tried++
		}
	}
	if tried < 40 {
		t.Fatalf("only %d digests tried", tried)
	}
	// A flipped byte in the header (the Spec ID event) is refused by the parser.
	raw := bytes.Clone(ovmfLog)
	raw[40] ^= 0xff
	if _, err := replayMatches(raw, tpmPCRs); err == nil {
		t.Error("a log with its Spec ID signature changed parses")
	}
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
