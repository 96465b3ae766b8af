package firmware

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func testSigner(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// writeImages makes an image tree under a temp dir: name -> content.
func writeImages(t testing.TB, files map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	for name, b := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func signedImages(t *testing.T, k *ecdsa.PrivateKey, dir, hash string) []byte {
	t.Helper()
	images, err := HashImages(dir, hash)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Sign(k, Manifest{Class: "gateway", Version: 7, Images: images})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestManifestVerifies: a manifest signed over an image tree parses,
// names its signer, and its images verify; each kind of tampering is its
// own error, and the signer must be the anchored one.
func TestManifestVerifies(t *testing.T) {
	k := testSigner(t)
	dir := writeImages(t, map[string][]byte{"bootloader.bin": bytes.Repeat([]byte{1}, 5000), "kernel/Image": []byte("kernel"), "empty": nil})
	for _, hash := range []string{"sha256", "sha384"} {
		s, err := Parse(signedImages(t, k, dir, hash))
		if err != nil {
			t.Fatal(err)
		}
		if s.Manifest.Version != 7 || s.Manifest.Class != "gateway" || len(s.Manifest.Images) != 3 || s.Manifest.Images[0].Name != "bootloader.bin" {
			t.Fatalf("%+v", s.Manifest)
		}
		if err := s.Manifest.VerifyImages(context.Background(), dir); err != nil {
			t.Fatal(err)
		}
		other := testSigner(t)
		otherSigned, _ := Parse(signedImages(t, other, dir, hash))
		if err := s.SignedBy(otherSigned.SignerName); !errors.Is(err, ErrBadSignature) {
			t.Fatalf("signed by another key: %v", err)
		}
		if err := s.SignedBy(otherSigned.SignerName, s.SignerName); err != nil {
			t.Fatalf("the next signer of a rotation: %v", err)
		}
	}
	s, _ := Parse(signedImages(t, k, dir, "sha256"))
	tampered := writeImages(t, map[string][]byte{"bootloader.bin": append(bytes.Repeat([]byte{1}, 4999), 2), "kernel/Image": []byte("kernel"), "empty": nil})
	if err := s.Manifest.VerifyImages(context.Background(), tampered); !errors.Is(err, ErrDigest) {
		t.Fatalf("a tampered image: %v", err)
	}
	longer := writeImages(t, map[string][]byte{"bootloader.bin": bytes.Repeat([]byte{1}, 5001), "kernel/Image": []byte("kernel"), "empty": nil})
	if err := s.Manifest.VerifyImages(context.Background(), longer); !errors.Is(err, ErrDigest) {
		t.Fatalf("a longer image: %v", err)
	}
	missing := writeImages(t, map[string][]byte{"bootloader.bin": bytes.Repeat([]byte{1}, 5000), "empty": nil})
	if err := s.Manifest.VerifyImages(context.Background(), missing); !errors.Is(err, ErrMissingImage) {
		t.Fatalf("a missing image: %v", err)
	}
	// A FIFO in an image's place does not hold the hook: refused at once.
	fifo := writeImages(t, map[string][]byte{"bootloader.bin": bytes.Repeat([]byte{1}, 5000), "kernel/Image": []byte("kernel")})
	if err := syscall.Mkfifo(filepath.Join(fifo, "empty"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Manifest.VerifyImages(context.Background(), fifo); !errors.Is(err, ErrDigest) {
		t.Fatalf("a FIFO: %v", err)
	}
	if _, err := HashImages(fifo, "sha256"); err == nil {
		t.Fatal("signed a FIFO")
	}
}

// TestManifestTampering: a payload changed after signing, a signature of
// another key with the signer swapped in, and a payload signed without the
// domain prefix are each ErrBadSignature; an RSA-2048 signer is refused.
func TestManifestTampering(t *testing.T) {
	k := testSigner(t)
	dir := writeImages(t, map[string][]byte{"a": []byte("a")})
	good := signedImages(t, k, dir, "sha256")
	var f fileJSON
	if err := json.Unmarshal(good, &f); err != nil {
		t.Fatal(err)
	}
	edit := func(fn func(*fileJSON)) []byte {
		g := f
		fn(&g)
		b, err := json.Marshal(g)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	older := edit(func(g *fileJSON) {
		g.Manifest = bytes.Replace(g.Manifest, []byte(`"version":7`), []byte(`"version":9`), 1)
	})
	if _, err := Parse(older); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("a changed version: %v", err)
	}
	other := testSigner(t)
	otherFile := signedImages(t, other, dir, "sha256")
	var o fileJSON
	_ = json.Unmarshal(otherFile, &o)
	swapped := edit(func(g *fileJSON) { g.Signature = o.Signature })
	if _, err := Parse(swapped); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("another key's signature: %v", err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Sign(rsaKey, Manifest{Class: "c", Version: 1, Images: []Image{{Name: "a", Size: 1, Hash: "sha256", Digest: strings.Repeat("00", 32)}}}); err == nil {
		t.Fatal("an RSA-2048 signer")
	}
}

// TestManifestStrict: unknown fields, duplicate keys, trailing data, bad
// names, classes, hashes and digests are refused as ErrBadManifest.
func TestManifestStrict(t *testing.T) {
	k := testSigner(t)
	good := signedImages(t, k, writeImages(t, map[string][]byte{"a": []byte("a")}), "sha256")
	if _, err := Parse(good); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"trailing":      append(bytes.Clone(good), []byte(" {}")...),
		"unknown field": bytes.Replace(good, []byte(`"format": 1,`), []byte(`"format": 1, "extra": 1,`), 1),
		"duplicate key": bytes.Replace(good, []byte(`"format": 1,`), []byte(`"format": 1, "format": 1,`), 1),
		"format 2":      bytes.Replace(good, []byte(`"format": 1,`), []byte(`"format": 2,`), 1),
		"too big":       append(bytes.Clone(good), bytes.Repeat([]byte(" "), MaxManifest)...),
	} {
		if _, err := Parse(b); !errors.Is(err, ErrBadManifest) {
			t.Errorf("%s: %v", name, err)
		}
	}
	img := Image{Name: "a", Size: 1, Hash: "sha256", Digest: strings.Repeat("00", 32)}
	for name, m := range map[string]Manifest{
		"no images":    {Class: "c", Version: 1},
		"parent":       {Class: "c", Version: 1, Images: []Image{{Name: "../etc/shadow", Size: 1, Hash: "sha256", Digest: img.Digest}}},
		"absolute":     {Class: "c", Version: 1, Images: []Image{{Name: "/boot/a", Size: 1, Hash: "sha256", Digest: img.Digest}}},
		"twice":        {Class: "c", Version: 1, Images: []Image{img, img}},
		"sha1":         {Class: "c", Version: 1, Images: []Image{{Name: "a", Size: 1, Hash: "sha1", Digest: strings.Repeat("00", 20)}}},
		"short digest": {Class: "c", Version: 1, Images: []Image{{Name: "a", Size: 1, Hash: "sha384", Digest: img.Digest}}},
		"upper hex":    {Class: "c", Version: 1, Images: []Image{{Name: "a", Size: 1, Hash: "sha256", Digest: strings.Repeat("AB", 32)}}},
		"negative":     {Class: "c", Version: 1, Images: []Image{{Name: "a", Size: -1, Hash: "sha256", Digest: img.Digest}}},
		"class":        {Class: "Gate Way", Version: 1, Images: []Image{img}},
	} {
		if _, err := Sign(k, m); !errors.Is(err, ErrBadManifest) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A payload with an unknown field, validly signed, is still refused.
	payload := []byte(`{"format":1,"class":"c","version":1,"images":[{"name":"a","size":1,"hash":"sha256","digest":"` + img.Digest + `"}],"extra":true}`)
	if _, err := Parse(signPayload(t, k, payload)); !errors.Is(err, ErrBadManifest) {
		t.Errorf("an unknown field in the signed payload: %v", err)
	}
}

// signPayload signs arbitrary payload bytes as Sign would sign a manifest.
func signPayload(t testing.TB, k *ecdsa.PrivateKey, payload []byte) []byte {
	t.Helper()
	good, err := Sign(k, Manifest{Class: "c", Version: 1, Images: []Image{{Name: "a", Size: 1, Hash: "sha256", Digest: strings.Repeat("00", 32)}}})
	if err != nil {
		t.Fatal(err)
	}
	var f fileJSON
	if err := json.Unmarshal(good, &f); err != nil {
		t.Fatal(err)
	}
	sig, err := signDigestForTest(k, payload)
	if err != nil {
		t.Fatal(err)
	}
	f.Manifest, f.Signature = payload, sig
	b, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzParseManifest: a manifest file never panics the parser; what it
// accepts re-parses from its own payload and signature, and its images
// have valid names.
func FuzzParseManifest(f *testing.F) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good, _ := Sign(k, Manifest{Class: "c", Version: 1, Images: []Image{{Name: "a/b", Size: 1, Hash: "sha256", Digest: strings.Repeat("00", 32)}}})
	f.Add(good)
	f.Add([]byte(`{"format":1,"manifest":"` + base64.StdEncoding.EncodeToString([]byte(`{"format":1}`)) + `","signer":"","signature":{}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Parse(b)
		if err != nil {
			return
		}
		for _, im := range s.Manifest.Images {
			if checkName(im.Name) != nil {
				t.Fatalf("accepted image name %q", im.Name)
			}
		}
		if len(s.Digest()) != 32 {
			t.Fatal("digest")
		}
	})
}
