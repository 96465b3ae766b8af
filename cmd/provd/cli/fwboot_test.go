package cli_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/attest"
	"github.com/provd/provd/firmware"
	"github.com/provd/provd/fwhook"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/swtpmtest"
)

// writeKeyPair writes an ECDSA P-256 key as dir/name.pem (PKCS#8) and
// dir/name.pub.pem (PKIX).
func writeKeyPair(t *testing.T, dir, name string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	pub, _ := x509.MarshalPKIXPublicKey(k.Public())
	if err := os.WriteFile(filepath.Join(dir, name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".pub.pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestFWBootCLI: the boot hook from the command line, as the unit runs it:
// anchor set and show, a good verify with --commit, each bad case's exit
// code, an anchor another process replaced (exit 22), and fw log --replay
// agreeing with the TPM, then refusing a log that was edited.
func TestFWBootCLI(t *testing.T) {
	c := newCLIEnv(t)
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	writeKeyPair(t, dir, "officer")
	writeKeyPair(t, dir, "signer")
	writeKeyPair(t, dir, "evil")
	if err := os.MkdirAll(p("images"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("images/boot.bin"), bytes.Repeat([]byte{3}, 5000), 0o644); err != nil {
		t.Fatal(err)
	}
	code := func(want int, args ...string) string {
		t.Helper()
		out, stderr, got := c.run(args...)
		if got != want {
			t.Fatalf("provd %s: exit %d, want %d\n%s%s", strings.Join(args, " "), got, want, out, stderr)
		}
		return out
	}
	sign := func(key string, version, out string) string {
		code(0, "fw", "sign", "--key", p(key+".pem"), "--images", p("images"), "--version", version, "--class", "gateway", "--out", p(out))
		return p(out)
	}
	reboot := func() {
		c.swtpm.Restart(false)
		c.swtpm.CloseTPM()
	}
	v2, v1 := sign("signer", "2", "v2.manifest"), sign("signer", "1", "v1.manifest")
	verify := func(want int, m string, extra ...string) {
		t.Helper()
		code(want, append([]string{"fw", "verify", "--manifest", m, "--root", p("images")}, extra...)...)
	}

	verify(api.ExitFWNoAnchor, v2)
	code(api.ExitUsage, "fw", "anchor", "set", "--pubkey", p("signer.pub.pem"), "--class", "gateway")
	// The TPM is authenticated first: without the manufacturer's
	// certificates the set is refused before anything is read.
	code(api.ExitIdentity, "fw", "anchor", "set", "--pubkey", p("signer.pub.pem"), "--class", "gateway", "--officer", p("officer.pem"))
	code(0, "fw", "anchor", "set", "--pubkey", p("signer.pub.pem"), "--class", "gateway", "--officer", p("officer.pem"), "--ek-ca", ekCAFile(t, c.swtpm))
	var anchor struct {
		Class  string `json:"class"`
		Lowest uint64 `json:"lowest_version"`
	}
	if err := json.Unmarshal([]byte(code(0, "fw", "anchor", "show", "-o", "json")), &anchor); err != nil || anchor.Class != "gateway" {
		t.Fatalf("anchor show: %+v %v", anchor, err)
	}
	if fi, err := os.Stat(filepath.Join(c.dir, fwhook.CommitAuthName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("commit authorization: %v %v", fi, err)
	}

	reboot()
	var res struct {
		OK        bool              `json:"ok"`
		PCRValues map[string]string `json:"pcr_values"`
		Lowest    uint64            `json:"lowest_version"`
	}
	if err := json.Unmarshal([]byte(code(0, "fw", "verify", "--manifest", v2, "--root", p("images"), "--commit", "-o", "json")), &res); err != nil || !res.OK || res.Lowest != 2 {
		t.Fatalf("verify: %+v %v", res, err)
	}
	if out := code(0, "fw", "log", "--replay"); !strings.Contains(out, "provd firmware verified") || !strings.Contains(out, "replayed") {
		t.Fatalf("fw log:\n%s", out)
	}
	// The log as written, edited: --replay says the PCR differs.
	logPath := filepath.Join(c.dir, fwhook.LogName)
	good, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	edited := bytes.Clone(good)
	edited[len(edited)-1] ^= 1 // the event's text
	i := bytes.LastIndex(edited, []byte{0x0b, 0x00})
	edited[i+2] ^= 1 // the event's SHA-256 digest
	if err := os.WriteFile(logPath, edited, 0o644); err != nil {
		t.Fatal(err)
	}
	code(api.ExitTampered, "fw", "log", "--replay")

	// Each bad case on its own boot.
	for _, tc := range []struct {
		name  string
		want  int
		setup func() string
		undo  func()
	}{
		{"rolled back", api.ExitFWRollback, func() string { return v1 }, nil},
		{"wrong signer", api.ExitFWSignature, func() string { return sign("evil", "3", "evil.manifest") }, nil},
		{"tampered image", api.ExitFWDigest, func() string {
			if err := os.WriteFile(p("images/boot.bin"), bytes.Repeat([]byte{4}, 5000), 0o644); err != nil {
				t.Fatal(err)
			}
			return v2
		}, func() {
			if err := os.WriteFile(p("images/boot.bin"), bytes.Repeat([]byte{3}, 5000), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{"missing image", api.ExitFWMissing, func() string {
			if err := os.Rename(p("images/boot.bin"), p("boot.bin")); err != nil {
				t.Fatal(err)
			}
			return v2
		}, func() {
			if err := os.Rename(p("boot.bin"), p("images/boot.bin")); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		reboot()
		verify(tc.want, tc.setup())
		if tc.undo != nil {
			tc.undo()
		}
		out := code(0, "fw", "log", "--replay")
		if !strings.Contains(out, "verification failed") {
			t.Fatalf("%s: log:\n%s", tc.name, out)
		}
	}

	// Another process replaces the anchor with an index of its own.
	reboot()
	c.swtpm.Reopen()
	tp := c.swtpm.TPM
	if err := tp.UndefineNV(fwhook.AnchorHandle); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.DefineNV(tpm2.TPMSNVPublic{NVIndex: fwhook.AnchorHandle, NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{NT: tpm2.TPMNTOrdinary, AuthWrite: true, AuthRead: true, NoDA: true}, DataSize: uint16(fwhook.AnchorSize)}); err != nil {
		t.Fatal(err)
	}
	c.swtpm.CloseTPM()
	verify(api.ExitFWAnchor, v2)
	code(api.ExitFWAnchor, "fw", "anchor", "show")

	// A firmware log in the kernel's layout (SHA-1 and SHA-256 banks, EFI
	// event types): fw log reads it with the same parser; this swtpm's
	// PCRs 0-7 were never measured by firmware, so --replay says so.
	l, err := attest.NewEventLog(tpm2.TPMAlgSHA1, tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []struct {
		pcr int
		typ attest.EventType
	}{{0, attest.EVSCRTMVersion}, {0, attest.EVEFIPlatformFirmwareBlob}, {7, 0x80000001}, {4, 0x80000003}, {5, attest.EVEFIAction}} {
		if _, err := l.Append(e.pcr, e.typ, []byte("event")); err != nil {
			t.Fatal(err)
		}
	}
	b, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("bios.bin"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	out := code(0, "fw", "log", "--log", p("bios.bin"))
	for _, want := range []string{"EV_S_CRTM_VERSION", "EV_EFI_PLATFORM_FIRMWARE_BLOB", "EV_EFI_VARIABLE_DRIVER_CONFIG", "EV_EFI_BOOT_SERVICES_APPLICATION", "EV_EFI_ACTION"} {
		if !strings.Contains(out, want) {
			t.Errorf("fw log --log: no %s in\n%s", want, out)
		}
	}
	code(api.ExitTampered, "fw", "log", "--log", p("bios.bin"), "--replay")
}

// fwSetup: keys, images, a v2 manifest, the anchor set, one reboot.
func fwSetup(t *testing.T) (c *cliEnv, p func(string) string, code func(int, ...string) string, v2 string) {
	t.Helper()
	c = newCLIEnv(t)
	dir := t.TempDir()
	p = func(name string) string { return filepath.Join(dir, name) }
	writeKeyPair(t, dir, "officer")
	writeKeyPair(t, dir, "signer")
	if err := os.MkdirAll(p("images"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("images/boot.bin"), bytes.Repeat([]byte{3}, 5000), 0o644); err != nil {
		t.Fatal(err)
	}
	code = func(want int, args ...string) string {
		t.Helper()
		out, stderr, got := c.run(args...)
		if got != want {
			t.Fatalf("provd %s: exit %d, want %d\n%s%s", strings.Join(args, " "), got, want, out, stderr)
		}
		return out
	}
	code(0, "fw", "sign", "--key", p("signer.pem"), "--images", p("images"), "--version", "2", "--class", "gateway", "--out", p("v2.manifest"))
	code(0, "fw", "anchor", "set", "--pubkey", p("signer.pub.pem"), "--class", "gateway", "--officer", p("officer.pem"), "--ek-ca", ekCAFile(t, c.swtpm))
	c.swtpm.Restart(false)
	c.swtpm.CloseTPM()
	return c, p, code, p("v2.manifest")
}

func pcr12(t *testing.T, c *cliEnv) []byte {
	t.Helper()
	c.swtpm.Reopen()
	defer c.swtpm.CloseTPM()
	v, err := c.swtpm.TPM.PCRRead(tpm2.TPMAlgSHA256, []int{12})
	if err != nil {
		t.Fatal(err)
	}
	return v[12]
}

// TestFWVerifyUnreadableManifest: a manifest that is missing, a directory
// or a FIFO is a measured failure, not an exit before the TPM (found by
// review: PCR 12 stayed at its reset value, and a hand extend of the good
// digest later reached the good value; a FIFO hung the boot).
func TestFWVerifyUnreadableManifest(t *testing.T) {
	c, p, code, _ := fwSetup(t)
	d := sha256.Sum256([]byte("provd firmware verification failed\x00"))
	failed := sha256.Sum256(append(make([]byte, 32), d[:]...))
	for _, tc := range []struct {
		name  string
		setup func(path string) error
	}{
		{"missing", func(string) error { return nil }},
		{"directory", func(path string) error { return os.Mkdir(path, 0o755) }},
		{"fifo", func(path string) error { return syscall.Mkfifo(path, 0o644) }},
	} {
		m := p("unreadable-" + tc.name + ".manifest")
		if err := tc.setup(m); err != nil {
			t.Fatal(err)
		}
		code(api.ExitUsage, "fw", "verify", "--manifest", m, "--root", p("images"))
		if got := pcr12(t, c); !bytes.Equal(got, failed[:]) {
			t.Fatalf("%s: PCR 12 %x, want the failed state", tc.name, got)
		}
		c.swtpm.Restart(false)
		c.swtpm.CloseTPM()
	}
}

// TestFWLogTextChecked: after a failed boot, the failed event's text
// rewritten to read "verified" with the good manifest's digest: fw log
// refuses the log, exit 14 (found by review: --replay passed it, the text
// not being covered by the PCR).
func TestFWLogTextChecked(t *testing.T) {
	c, p, code, v2 := fwSetup(t)
	failedBoot(t, p, code, v2)
	code(0, "fw", "log", "--replay")
	mb, err := os.ReadFile(v2)
	if err != nil {
		t.Fatal(err)
	}
	s, err := firmware.Parse(mb)
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(c.dir, fwhook.LogName)
	l, err := fwhook.ReadLogFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	last := &l.Events[len(l.Events)-1]
	text := fmt.Sprintf("provd firmware verified: manifest sha256:%x", s.Digest())
	d := binary.LittleEndian.AppendUint32(nil, attest.EventTagID)
	d = binary.LittleEndian.AppendUint32(d, uint32(len(text)))
	last.Data = append(d, text...)
	b, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(logPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	code(api.ExitTampered, "fw", "log", "--replay")
	code(api.ExitTampered, "fw", "log")
}

// TestFWLogMissingBank and TestFWLogOtherPCR: logs that lie, found by a
// second review: a SHA-1-only log saying "verified" on a TPM with a SHA-256
// bank, and provd's good verdict moved to PCR 14 (extended there by hand)
// while PCR 12 holds the failure. fw log refuses both (exit 14).

// TestFWLogMissingBank: on a TPM with SHA-1 and SHA-256 banks
// (common on PCs), after a failed boot, A4 rewrites measurements.log as a
// log of the SHA-1 bank only whose one event reads "verified" over the good
// manifest's digest, its SHA-1 digest the failed measurement's. CheckEvent
// checks a "verified" text only in the SHA-256 bank, and --replay compares
// only the banks the log has: exit 0, "provd firmware verified". Only the
// file is edited; nothing is extended.
func TestFWLogMissingBank(t *testing.T) {
	c, p, code, v2 := fwSetup(t)
	c.swtpm.Reopen()
	swtpmtest.AllocatePCRs(t, c.swtpm.TPM, []tpm2.TPMAlgID{tpm2.TPMAlgSHA1, tpm2.TPMAlgSHA256}, nil)
	c.swtpm.Restart(false)
	c.swtpm.CloseTPM()

	failedBoot(t, p, code, v2)
	s, err := firmware.Parse(mustReadFile(t, v2))
	if err != nil {
		t.Fatal(err)
	}
	l, err := attest.NewEventLog(tpm2.TPMAlgSHA1)
	if err != nil {
		t.Fatal(err)
	}
	failed := sha1.Sum([]byte("provd firmware verification failed\x00"))
	if err := l.AppendEvent(attest.Event{PCR: 12, Type: attest.EVEventTag,
		Data:    attest.TaggedEvent(attest.VerifiedEventText(make([]byte, 34), "gateway", s.Digest())),
		Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA1, Digest: failed[:]}}}); err != nil {
		t.Fatal(err)
	}
	b, _ := l.MarshalBinary()
	if err := os.WriteFile(filepath.Join(c.dir, fwhook.LogName), b, 0o644); err != nil {
		t.Fatal(err)
	}
	code(api.ExitTampered, "fw", "log", "--replay")
}

// TestFWLogOtherPCR: after a failed boot, A4 (TPM access, writes
// the state directory) replaces the log by provd's two good events (the
// genuine officer and class, the good manifest's digest) at PCR 14 and
// extends PCR 14 with them by hand. CheckEvent ignores the PCR index and
// --replay compares only the PCRs the log names: PCR 12's failure is gone
// from the log, exit 0, "provd firmware verified".
func TestFWLogOtherPCR(t *testing.T) {
	c, p, code, v2 := fwSetup(t)
	failedBoot(t, p, code, v2)
	on, s := genuineVerdict(t, p, v2)
	handLog(t, c, attest.Event{PCR: 14, Type: attest.EVEventTag, Data: attest.TaggedEvent(attest.VerifiedEventText(on, "gateway", s.Digest())),
		Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: attest.VerifiedMeasurement(crypto.SHA256, on, "gateway", s.Digest())}}})
	code(api.ExitTampered, "fw", "log", "--replay")
	code(api.ExitTampered, "fw", "log")
}

// failedBoot changes an image of fwSetup's and runs the hook: PCR 12 then
// holds the failed measurement and the log its event (exit 17).
func failedBoot(t *testing.T, p func(string) string, code func(int, ...string) string, v2 string) {
	t.Helper()
	if err := os.WriteFile(p("images/boot.bin"), bytes.Repeat([]byte{4}, 5000), 0o644); err != nil {
		t.Fatal(err)
	}
	code(api.ExitFWDigest, "fw", "verify", "--manifest", v2, "--root", p("images"))
}

// genuineVerdict is what a "verified" event of fwSetup's names: the
// officer's TPM name and the good manifest v2, parsed.
func genuineVerdict(t *testing.T, p func(string) string, v2 string) ([]byte, *firmware.Signed) {
	t.Helper()
	s, err := firmware.Parse(mustReadFile(t, v2))
	if err != nil {
		t.Fatal(err)
	}
	officer, err := policy.ParseSignerPEM(mustReadFile(t, p("officer.pem")))
	if err != nil {
		t.Fatal(err)
	}
	on, err := policy.SignerName(officer.Public())
	if err != nil {
		t.Fatal(err)
	}
	return on, s
}

// handLog is A4 after a boot: a SHA-256 log of evs, each extended into its
// PCR by hand, written over the state's measurements.log, whose path it
// returns.
func handLog(t *testing.T, c *cliEnv, evs ...attest.Event) string {
	t.Helper()
	l, err := attest.NewEventLog(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	c.swtpm.Reopen()
	for _, e := range evs {
		if err := l.AppendEvent(e); err != nil {
			t.Fatal(err)
		}
		if err := c.swtpm.TPM.PCRExtendAll(e.PCR, e.Digests); err != nil {
			t.Fatal(err)
		}
	}
	c.swtpm.CloseTPM()
	b, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(c.dir, fwhook.LogName)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func mustReadFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
