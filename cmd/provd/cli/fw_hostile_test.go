package cli_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/firmware"
)

// A signed payload changed after signing into one that no longer checks
// (class upper-cased, or an unknown key) is exit 17, a bad signature
// (found by review: the payload was read before the signature was
// verified, and it was exit 2).
func TestHostileFWTamperedMalformedExit(t *testing.T) {
	dir := t.TempDir()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	b, err := firmware.Sign(k, firmware.Manifest{Class: "gateway", Version: 42, Images: []firmware.Image{{Name: "a", Size: 1, Hash: "sha256", Digest: strings.Repeat("00", 32)}}})
	if err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string][2]string{
		"class":   {`"class":"gateway"`, `"class":"GATEWAY"`},
		"unknown": {`"version":42`, `"version":42,"x":1`},
	} {
		var f map[string]any
		_ = json.Unmarshal(b, &f)
		p, _ := base64.StdEncoding.DecodeString(f["manifest"].(string))
		f["manifest"] = base64.StdEncoding.EncodeToString(bytes.Replace(p, []byte(edit[0]), []byte(edit[1]), 1))
		c, _ := json.Marshal(f)
		path := filepath.Join(dir, name+".manifest")
		_ = os.WriteFile(path, c, 0o644)
		_, stderr, code := run(t, nil, "--state-dir", filepath.Join(dir, "s"), "fw", "manifest", "show", path)
		if code != api.ExitFWSignature {
			t.Errorf("%s: tampered payload exits %d, not %d: %s", name, code, api.ExitFWSignature, strings.TrimSpace(stderr))
		}
	}
}
