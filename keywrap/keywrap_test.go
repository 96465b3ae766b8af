package keywrap_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/provd/provd/keywrap"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// RFC 5649 section 6, both examples. Their KEK is AES-192, which Wrap does
// not take (provd uses AES-128 and AES-256), so they run through the
// functions behind Wrap and Unwrap (export_test.go).
func TestRFC5649Vectors(t *testing.T) {
	kek := unhex(t, "5840df6e29b02af1 ab493b705bf16ea1 ae8338f4dcc176a8")
	for _, v := range []struct{ key, wrapped string }{
		{"c37b7e6492584340 bed1220780894115 5068f738", "138bdeaa9b8fa7fc 61f97742e72248ee 5ae6ae5360d1ae6a 5f54f373fa543b6a"},
		{"466f7250617369", "afbeb0f07dfbf541 9200f2ccb50bb24f"},
	} {
		got, err := keywrap.WrapAnySize(kek, unhex(t, v.key))
		if err != nil || !bytes.Equal(got, unhex(t, v.wrapped)) {
			t.Fatalf("wrap %s: %x %v, want %s", v.key, got, err, v.wrapped)
		}
		back, err := keywrap.UnwrapAnySize(kek, got)
		if err != nil || !bytes.Equal(back, unhex(t, v.key)) {
			t.Fatalf("unwrap: %x %v", back, err)
		}
	}
}

// What OpenSSL wraps (id-aes256-wrap-pad, id-aes128-wrap-pad), Unwrap
// opens, and the reverse, for every length from 1 to 100 bytes and a
// PKCS#8 RSA-4096 key's size: the interop the HSM custodians rely on.
func TestAgreesWithOpenSSL(t *testing.T) {
	dir := t.TempDir()
	for _, bits := range []int{128, 256} {
		kek := make([]byte, bits/8)
		if _, err := rand.Read(kek); err != nil {
			t.Fatal(err)
		}
		for _, n := range append(seq(1, 100), 2374) {
			plain := make([]byte, n)
			if _, err := rand.Read(plain); err != nil {
				t.Fatal(err)
			}
			in := filepath.Join(dir, "in")
			if err := os.WriteFile(in, plain, 0o600); err != nil {
				t.Fatal(err)
			}
			cipher := "-id-aes256-wrap-pad"
			if bits == 128 {
				cipher = "-id-aes128-wrap-pad"
			}
			ours, err := keywrap.Wrap(kek, plain)
			if err != nil {
				t.Fatal(err)
			}
			theirs, err := exec.Command("openssl", "enc", cipher, "-K", hex.EncodeToString(kek), "-iv", "A65959A6", "-in", in).Output()
			if err != nil {
				t.Fatalf("openssl wrap: %v", err)
			}
			if !bytes.Equal(ours, theirs) {
				t.Fatalf("AES-%d, %d bytes: ours %x, openssl %x", bits, n, ours, theirs)
			}
			if err := os.WriteFile(in, ours, 0o600); err != nil {
				t.Fatal(err)
			}
			opened, err := exec.Command("openssl", "enc", "-d", cipher, "-K", hex.EncodeToString(kek), "-iv", "A65959A6", "-in", in).Output()
			if err != nil || !bytes.Equal(opened, plain) {
				t.Fatalf("openssl unwrap of ours, %d bytes: %v", n, err)
			}
			back, err := keywrap.Unwrap(kek, theirs)
			if err != nil || !bytes.Equal(back, plain) {
				t.Fatalf("unwrap of openssl's, %d bytes: %v", n, err)
			}
		}
	}
}

func seq(from, to int) []int {
	var s []int
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

// Every changed byte, a wrong KEK, a wrong length and a cut are refused
// with ErrIntegrity or ErrSize, never a plaintext.
func TestUnwrapRefusesChanges(t *testing.T) {
	kek := make([]byte, 32)
	other := make([]byte, 32)
	other[0] = 1
	for _, n := range []int{5, 8, 9, 40} {
		w, err := keywrap.Wrap(kek, bytes.Repeat([]byte{0x5a}, n))
		if err != nil {
			t.Fatal(err)
		}
		for i := range w {
			c := bytes.Clone(w)
			c[i] ^= 0x01
			if p, err := keywrap.Unwrap(kek, c); !errors.Is(err, keywrap.ErrIntegrity) || p != nil {
				t.Fatalf("%d bytes, byte %d flipped: %x %v", n, i, p, err)
			}
		}
		if _, err := keywrap.Unwrap(other, w); !errors.Is(err, keywrap.ErrIntegrity) {
			t.Fatalf("wrong KEK: %v", err)
		}
		if _, err := keywrap.Unwrap(kek, w[:len(w)-8]); err == nil {
			t.Fatalf("%d bytes, cut by a block: accepted", n)
		}
		if _, err := keywrap.Unwrap(kek, w[:len(w)-1]); !errors.Is(err, keywrap.ErrSize) {
			t.Fatalf("%d bytes, cut by a byte: %v", n, err)
		}
	}
	if _, err := keywrap.Wrap(make([]byte, 24), []byte("x")); !errors.Is(err, keywrap.ErrSize) {
		t.Fatalf("an AES-192 KEK: %v", err)
	}
	if _, err := keywrap.Wrap(kek, nil); !errors.Is(err, keywrap.ErrSize) {
		t.Fatalf("nothing to wrap: %v", err)
	}
}

// The KCV of the all-zero AES-128 key is 66E94B (AES-128(0, 0) =
// 66e94bd4ef8a2c3b...), and of random keys what openssl computes.
func TestKCV(t *testing.T) {
	kcv, err := keywrap.KCV(make([]byte, 16))
	if err != nil || hex.EncodeToString(kcv[:]) != "66e94b" {
		t.Fatalf("KCV of the zero key: %x %v", kcv, err)
	}
	for _, n := range []int{16, 32} {
		key := make([]byte, n)
		if _, err := rand.Read(key); err != nil {
			t.Fatal(err)
		}
		cipher := map[int]string{16: "-aes-128-ecb", 32: "-aes-256-ecb"}[n]
		cmd := exec.Command("openssl", "enc", cipher, "-K", hex.EncodeToString(key), "-nopad")
		cmd.Stdin = bytes.NewReader(make([]byte, 16))
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		kcv, err := keywrap.KCV(key)
		if err != nil || !bytes.Equal(kcv[:], out[:3]) {
			t.Fatalf("KCV %x, openssl %x (%v)", kcv, out[:3], err)
		}
	}
}

// Components XOR into the key; fewer than two, sizes that differ or are not
// an AES key's, and components that cancel out are refused.
func TestCombine(t *testing.T) {
	a, b, c := unhex(t, "00112233445566778899aabbccddeeff"), unhex(t, "0f0e0d0c0b0a09080706050403020100"), unhex(t, "ffffffffffffffffffffffffffffffff")
	key, err := keywrap.Combine([][]byte{a, b, c})
	want := make([]byte, 16)
	for i := range want {
		want[i] = a[i] ^ b[i] ^ c[i]
	}
	if err != nil || !bytes.Equal(key, want) {
		t.Fatalf("combine: %x %v, want %x", key, err, want)
	}
	for _, bad := range [][][]byte{
		{a},
		{a, unhex(t, "0011")},
		{unhex(t, "001122"), unhex(t, "001122")},
		make([][]byte, keywrap.MaxComponents+1),
	} {
		if k, err := keywrap.Combine(bad); !errors.Is(err, keywrap.ErrSize) || k != nil {
			t.Fatalf("combine %x: %x %v", bad, k, err)
		}
	}
	// Components of which some cancel (review 45): a fewer custodians
	// than all would know the key.
	ab := make([]byte, 16)
	for i := range ab {
		ab[i] = a[i] ^ b[i]
	}
	many := make([][]byte, keywrap.MaxComponents)
	for i := range many {
		many[i] = make([]byte, 16)
		many[i][i] = 1 // independent: one bit each
	}
	last := slices.Clone(many)
	last[len(last)-1] = bytes.Clone(many[0])
	last[len(last)-1][1] = 1 // the XOR of the first two
	for name, bad := range map[string][][]byte{
		"two equal":                         {a, a},
		"two equal of three":                {a, b, a},
		"all zeros":                         {a, make([]byte, 16)},
		"the key all zeros":                 {a, b, ab},
		"the key one component's":           {a, b, ab, c},
		"the last the XOR of the first two": last,
	} {
		if k, err := keywrap.Combine(bad); !errors.Is(err, keywrap.ErrComponents) || k != nil {
			t.Errorf("%s: %x %v", name, k, err)
		}
	}
	if k, err := keywrap.Combine(many); err != nil || len(k) != 16 {
		t.Errorf("%d independent components: %x %v", len(many), k, err)
	}
}

// Whatever the bytes, Unwrap returns an error or a plaintext that wraps back
// to exactly those bytes (RFC 5649 wrapping is deterministic), and never
// panics.
func FuzzUnwrap(f *testing.F) {
	kek := make([]byte, 32)
	for _, n := range []int{1, 8, 9, 64} {
		w, err := keywrap.Wrap(kek, bytes.Repeat([]byte{7}, n))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(w)
	}
	f.Add([]byte{})
	f.Add(make([]byte, 16))
	f.Fuzz(func(t *testing.T, wrapped []byte) {
		p, err := keywrap.Unwrap(kek, wrapped)
		if err != nil {
			return
		}
		again, err := keywrap.Wrap(kek, p)
		if err != nil || !bytes.Equal(again, wrapped) {
			t.Fatalf("unwrapped %x from %x, which wraps to %x (%v)", p, wrapped, again, err)
		}
	})
}

// failingBlock fails its nth call.
type failingBlock struct {
	inner keywrap.Block
	n     int
}

func (f *failingBlock) Encrypt(dst, src []byte) error {
	if f.n--; f.n == 0 {
		return errors.New("the TPM went away")
	}
	return f.inner.Encrypt(dst, src)
}

func (f *failingBlock) Decrypt(dst, src []byte) error {
	if f.n--; f.n == 0 {
		return errors.New("the TPM went away")
	}
	return f.inner.Decrypt(dst, src)
}

// TestBlockFailureGivesNothing: a Block that fails part way (a TPM KEK
// whose TPM went away) makes the wrap or unwrap fail with its error and
// return nothing, at every step; a Block that works gives Wrap's bytes.
func TestBlockFailureGivesNothing(t *testing.T) {
	kek := bytes.Repeat([]byte{3}, 32)
	plain := bytes.Repeat([]byte("secret!"), 5)
	want, err := keywrap.Wrap(kek, plain)
	if err != nil {
		t.Fatal(err)
	}
	soft := keywrap.SoftBlock(t, kek)
	got, err := keywrap.WrapBlock(soft, plain)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("WrapBlock differs from Wrap: %v", err)
	}
	steps := 6 * (len(want)/8 - 1)
	for n := 1; n <= steps; n++ {
		if out, err := keywrap.WrapBlock(&failingBlock{soft, n}, plain); err == nil || out != nil {
			t.Fatalf("wrap failing at step %d: %x, %v", n, out, err)
		}
		if out, err := keywrap.UnwrapBlock(&failingBlock{soft, n}, want); err == nil || out != nil {
			t.Fatalf("unwrap failing at step %d: %x, %v", n, out, err)
		}
	}
	kcv, err := keywrap.KCVBlock(soft)
	if want, _ := keywrap.KCV(kek); err != nil || kcv != want {
		t.Fatalf("KCVBlock %x, KCV %x, %v", kcv, want, err)
	}
}
