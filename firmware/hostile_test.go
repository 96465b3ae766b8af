package firmware

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/provd/provd/policy"
)

func rvImage(name string, content []byte) Image {
	d := sha256.Sum256(content)
	return Image{Name: name, Size: int64(len(content)), Hash: "sha256", Digest: hex.EncodeToString(d[:])}
}

// A FIFO at an image's name is refused at once (found by review: os.Open
// blocked until a writer came, and the boot hook hung with no verdict).
func TestHostileFIFOBlocksVerify(t *testing.T) {
	root := t.TempDir()
	fifo := filepath.Join(root, "kernel")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	m := Manifest{Format: 1, Class: "c", Version: 1, Images: []Image{rvImage("kernel", []byte("k"))}}
	done := make(chan error, 1)
	go func() { done <- m.VerifyImages(context.Background(), root) }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrDigest) {
			t.Fatalf("fifo: %v", err)
		}
		{
			t.Logf("fifo returned: %v", err)
		}
	case <-time.After(2 * time.Second):
		// release the blocked open so the test process can end
		if fd, err := syscall.Open(fifo, syscall.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			syscall.Close(fd)
		}
		<-done
		t.Fatal("VerifyImages blocked on a FIFO for 2s (open before the regular-file check)")
	}
}

// A symlink inside the image root is not followed (found by review: an
// image could live anywhere).
func TestHostileSymlinkFollowed(t *testing.T) {
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "k"), []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(root, "boot")); err != nil {
		t.Fatal(err)
	}
	m := Manifest{Format: 1, Class: "c", Version: 1, Images: []Image{rvImage("boot/k", []byte("kernel"))}}
	if err := m.VerifyImages(context.Background(), root); err == nil {
		t.Fatal("an image reached through a symlink out of the root verified")
	}
}

// A path component that is a regular file is a missing image (found by
// review: ENOTDIR mapped to no firmware kind, exit 1).
func TestHostileENOTDIR(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "kernel"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := Manifest{Format: 1, Class: "c", Version: 1, Images: []Image{rvImage("kernel/Image", []byte("k"))}}
	if err := m.VerifyImages(context.Background(), root); !errors.Is(err, ErrMissingImage) && !errors.Is(err, ErrDigest) {
		t.Fatalf("ENOTDIR maps to no firmware kind: %v", err)
	}
}

// Size MaxInt64: limit+1 overflows; LimitReader reads nothing; n != size.
func TestHostileMaxInt64Size(t *testing.T) {
	_, n, err := digestReader(bytes.NewReader([]byte("abc")), 5 /*crypto.SHA256*/, math.MaxInt64)
	if err != nil || n == math.MaxInt64 {
		t.Fatalf("n=%d err=%v", n, err)
	}
	t.Logf("limit MaxInt64 reads %d bytes: n != size, fails closed", n)
}

// Case-folded and Unicode-folded keys in the signed payload are refused
// (found by review: Go's decoder accepted them, and another parser of the
// same signed bytes would have seen no "version" or "images").
func TestHostileFoldedKeysAccepted(t *testing.T) {
	k := testSigner(t)
	d := strings.Repeat("00", 32)
	payload := []byte(`{"FORMAT":1,"Class":"c","ver\u017fion":9,"IMAGES":[{"NAME":"a","\u017fize":1,"Hash":"sha256","Digest":"` + d + `"}]}`)
	s, err := Parse(signPayload(t, k, payload))
	if err == nil {
		t.Fatalf("accepted folded keys: version=%d images=%+v", s.Manifest.Version, s.Manifest.Images)
	}
}

// The file around the payload is malleable (base64 line breaks, non-zero
// padding bits, ECDSA s -> n-s) but the payload and Digest are not.
func TestHostileFileMalleableDigestNot(t *testing.T) {
	k := testSigner(t)
	good := signedImages(t, k, writeImages(t, map[string][]byte{"a": []byte("a")}), "sha256")
	s0, err := Parse(good)
	if err != nil {
		t.Fatal(err)
	}
	var f map[string]json.RawMessage
	_ = json.Unmarshal(good, &f)
	var b64 string
	_ = json.Unmarshal(f["manifest"], &b64)
	variants := map[string]string{
		"newlines": b64[:8] + "\\n\\r" + b64[8:],
	}
	// non-canonical trailing bits, if the encoding has padding
	if strings.HasSuffix(b64, "=") {
		i := strings.IndexByte(b64, '=') - 1
		const alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
		p := strings.IndexByte(alpha, b64[i])
		variants["padbits"] = b64[:i] + string(alpha[p|1]) + b64[i+1:]
	}
	for name, v := range variants {
		g := bytes.Replace(good, []byte(`"`+b64+`"`), []byte(`"`+v+`"`), 1)
		s, err := Parse(g)
		if err != nil {
			t.Logf("%s: refused: %v", name, err)
			continue
		}
		if !bytes.Equal(s.Digest(), s0.Digest()) {
			t.Fatalf("%s: digest differs", name)
		}
		t.Logf("%s: another file, same payload digest", name)
	}
	// ECDSA s -> n - s
	var sig policy.Signature = s0.Signature
	e, _ := sig.Signature.ECDSA()
	n := elliptic.P256().Params().N
	s2 := new(big.Int).Sub(n, new(big.Int).SetBytes(e.SignatureS.Buffer))
	e2 := *e
	e2.SignatureS = tpm2.TPM2BECCParameter{Buffer: s2.FillBytes(make([]byte, 32))}
	sig2 := policy.Signature{TPMTSignature: tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &e2)}}
	var ff fileJSON
	_ = json.Unmarshal(good, &ff)
	ff.Signature = sig2
	g, _ := json.Marshal(ff)
	if s, err := Parse(g); err == nil {
		t.Logf("high-s signature accepted, digest same: %v", bytes.Equal(s.Digest(), s0.Digest()))
	}
}

// Sign writes a file Parse refuses: 4096 images with 200-byte names exceed
// MaxManifest (the comment says they fit).
func TestHostileSignOversize(t *testing.T) {
	k := testSigner(t)
	var ims []Image
	for i := 0; i < MaxImages; i++ {
		ims = append(ims, Image{Name: fmt.Sprintf("%0200d", i), Size: 1, Hash: "sha384", Digest: strings.Repeat("00", 48)})
	}
	b, err := Sign(k, Manifest{Class: "c", Version: 1, Images: ims})
	if err != nil {
		t.Logf("Sign refused: %v", err)
		return
	}
	start := time.Now()
	_, perr := Parse(b)
	t.Logf("file %d bytes, Parse %v", len(b), time.Since(start))
	if perr != nil {
		t.Fatalf("Sign wrote a manifest Parse refuses: %v", perr)
	}
}

// The largest manifest that fits: Parse cost.
func TestHostileParseCost(t *testing.T) {
	k := testSigner(t)
	var ims []Image
	for i := 0; i < MaxImages; i++ {
		ims = append(ims, Image{Name: fmt.Sprintf("%040d", i), Size: math.MaxInt64, Hash: "sha256", Digest: strings.Repeat("00", 32)})
	}
	b, err := Sign(k, Manifest{Class: "c", Version: math.MaxUint64, Images: ims})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := Parse(b); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d bytes, 4096 images of MaxInt64 bytes: Parse %v", len(b), time.Since(start))
}

// Cross-purpose replay: an approval or signed policy signs SHA-256 of at
// most 32+32 bytes; a manifest signs SHA-256 of 27 + a payload that holds at
// least a 64-character digest. The inputs cannot coincide.
func TestHostileCrossPurposeLengths(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	min := []byte(`{"format":1,"class":"c","images":[{"name":"a","hash":"sha256","digest":"` + strings.Repeat("00", 32) + `"}]}`)
	if len(signedPrefix)+len(min) <= 64 {
		t.Fatal("a manifest input fits an aHash input")
	}
	// an approval of the first 32 bytes with the rest as policyRef is refused by length
	in := append(append([]byte{}, signedPrefix...), min...)
	if _, err := policy.ApproveDigest(k, in[:32], in[32:]); err == nil {
		t.Fatal("approval of a manifest's bytes")
	}
	// P-384 signing a SHA-256 digest, TPMT hash sha384: verifies; sha256 in the TPMT refused
	b, err := Sign(k, Manifest{Class: "c", Version: 1, Images: []Image{rvImage("a", nil)}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	e, _ := s.Signature.Signature.ECDSA()
	e2 := *e
	e2.Hash = tpm2.TPMAlgSHA256
	sig := tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &e2)}
	if policy.VerifyDigest(s.Signer, signedDigest(s.Payload), sig) == nil {
		t.Fatal("P-384 with a TPMT naming sha256 accepted")
	}
	_ = base64.StdEncoding
}

// HashImages: FIFOs and symlinks refused; a symlinked root too.
func TestHostileHashImagesSpecial(t *testing.T) {
	dir := writeImages(t, map[string][]byte{"a": []byte("a")})
	_ = syscall.Mkfifo(filepath.Join(dir, "p"), 0o644)
	done := make(chan error, 1)
	go func() { _, err := HashImages(dir, "sha256"); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("fifo hashed")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("HashImages blocked on a FIFO")
	}
	dir2 := writeImages(t, map[string][]byte{"a": []byte("a")})
	_ = os.Symlink("/etc/hostname", filepath.Join(dir2, "l"))
	if _, err := HashImages(dir2, "sha256"); err == nil {
		t.Fatal("symlink hashed")
	}
	dir3 := writeImages(t, map[string][]byte{"a": []byte("a")})
	link := filepath.Join(t.TempDir(), "root")
	_ = os.Symlink(dir3, link)
	if _, err := HashImages(link, "sha256"); err != nil {
		t.Logf("a symlinked --images root is refused: %v", err)
	}
	dir4 := writeImages(t, map[string][]byte{"A": []byte("1"), "a": []byte("2")})
	if ims, err := HashImages(dir4, "sha256"); err == nil {
		t.Logf("case-colliding names signed: %s, %s (one file on a FAT ESP)", ims[0].Name, ims[1].Name)
	}
}

// cancelAfterRead cancels its context once it has been read from.
type cancelAfterRead struct {
	r      io.Reader
	cancel context.CancelFunc
}

func (c cancelAfterRead) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.cancel()
	return n, err
}

// VerifyImages stops once its context is done: before it opens an image,
// and within one, at the next read (the boot hook stops hashing a
// manifest the anchor refused).
func TestVerifyImagesStopsWhenCancelled(t *testing.T) {
	content := bytes.Repeat([]byte{7}, 3*readBuffer)
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "kernel"), content, 0o644); err != nil {
		t.Fatal(err)
	}
	m := Manifest{Format: 1, Class: "c", Version: 1, Images: []Image{rvImage("kernel", content)}}
	if err := m.VerifyImages(context.Background(), root); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.VerifyImages(ctx, root); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled verification: %v", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	_, n, err := digestReader(ctxReader{ctx, cancelAfterRead{bytes.NewReader(content), cancel}}, crypto.SHA256, -1)
	if !errors.Is(err, context.Canceled) || n != readBuffer {
		t.Fatalf("cancelled after the first read: %d bytes, %v", n, err)
	}
}
