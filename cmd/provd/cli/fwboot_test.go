package cli_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/attest"
	"github.com/provd/provd/fwhook"
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
	code(0, "fw", "anchor", "set", "--pubkey", p("signer.pub.pem"), "--class", "gateway", "--officer", p("officer.pem"))
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
