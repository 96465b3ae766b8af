package cli_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/firmware"
)

// TestFWManifestCLI: the firmware signer signs a manifest of an image tree
// offline (no TPM, no state); manifest show prints it, -o json included;
// a manifest changed after signing is exit 17, a malformed one exit 2.
func TestFWManifestCLI(t *testing.T) {
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	if err := os.WriteFile(p("signer.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(p("images/efi"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"images/bootloader.bin": bytes.Repeat([]byte{7}, 4096), "images/efi/grubx64.efi": []byte("grub")} {
		if err := os.WriteFile(p(name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	provd := func(want int, args ...string) string {
		t.Helper()
		out, stderr, code := run(t, nil, append([]string{"--state-dir", p("no-state")}, args...)...)
		if code != want {
			t.Fatalf("provd %s: exit %d, want %d\n%s%s", strings.Join(args, " "), code, want, out, stderr)
		}
		return out
	}
	provd(api.ExitUsage, "fw", "sign", "--key", p("signer.pem"), "--images", p("images"), "--class", "gateway", "--out", p("fw.manifest"))
	provd(0, "fw", "sign", "--key", p("signer.pem"), "--images", p("images"), "--version", "42", "--class", "gateway", "--hash", "sha384", "--out", p("fw.manifest"))
	var m struct {
		Class   string `json:"class"`
		Version uint64 `json:"version"`
		Images  []struct {
			Name string `json:"name"`
			Size int64  `json:"size"`
			Hash string `json:"hash"`
		} `json:"images"`
		Signer string `json:"signer"`
	}
	if err := json.Unmarshal([]byte(provd(0, "fw", "manifest", "show", p("fw.manifest"), "-o", "json")), &m); err != nil {
		t.Fatal(err)
	}
	if m.Class != "gateway" || m.Version != 42 || len(m.Images) != 2 || m.Images[0].Name != "bootloader.bin" || m.Images[1].Name != "efi/grubx64.efi" || m.Images[0].Hash != "sha384" || m.Signer == "" {
		t.Fatalf("%+v", m)
	}
	if out := provd(0, "fw", "manifest", "show", p("fw.manifest")); !strings.Contains(out, "efi/grubx64.efi") {
		t.Fatalf("text:\n%s", out)
	}
	if _, err := os.Stat(p("no-state")); err == nil {
		t.Fatal("signing made a state directory")
	}
	provd(api.ExitFWSignature, "fw", "manifest", "show", changedManifest(t, dir))
	if err := os.WriteFile(p("bad.manifest"), []byte(`{"format":1}`), 0o644); err != nil {
		t.Fatal(err)
	}
	provd(api.ExitUsage, "fw", "manifest", "show", p("bad.manifest"))
}

// changedManifest writes, under dir, a manifest whose signed payload was
// changed after signing (its version raised), and returns its path.
func changedManifest(t *testing.T, dir string) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, err := firmware.Sign(k, firmware.Manifest{Class: "c", Version: 42, Images: []firmware.Image{{Name: "a", Size: 1, Hash: "sha256", Digest: strings.Repeat("00", 32)}}})
	if err != nil {
		t.Fatal(err)
	}
	var f map[string]any
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	payload, err := base64.StdEncoding.DecodeString(f["manifest"].(string))
	if err != nil || !bytes.Contains(payload, []byte(`"version":42`)) {
		t.Fatalf("payload %s: %v", payload, err)
	}
	f["manifest"] = base64.StdEncoding.EncodeToString(bytes.Replace(payload, []byte(`"version":42`), []byte(`"version":43`), 1))
	changed, _ := json.Marshal(f)
	path := filepath.Join(dir, "changed.manifest")
	if err := os.WriteFile(path, changed, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
