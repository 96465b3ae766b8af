package agent_test

// Review 45: the key ceremony and PKCS#8 backups under AES key wrap, attacked
// as a custodian's slip, A1 (bus), A3 (an officer-role caller) and A6 (a copy
// of the state directory).

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/keywrap"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// review45Component is a random component of size bytes and its KCV.
func review45Component(t *testing.T, size int) ([]byte, string) {
	t.Helper()
	c := make([]byte, size)
	rand.Read(c)
	k, err := keywrap.KCV(c)
	if err != nil {
		t.Fatal(err)
	}
	return c, hex.EncodeToString(k[:])
}

// review45KCV is the KCV of key, hex.
func review45KCV(t *testing.T, key []byte) string {
	t.Helper()
	k, err := keywrap.KCV(key)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(k[:])
}

// review45StateHolds reports the first file under dir (the state directory,
// audit trail included: what A6 copies) that holds needle.
func review45StateHolds(t *testing.T, dir string, needles ...[]byte) string {
	t.Helper()
	found := ""
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || found != "" {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, n := range needles {
			if len(n) > 0 && bytes.Contains(b, n) {
				found = p
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// review45RawWrap is RFC 3394's wrapping process W (RFC 5649 section 4.1
// for n >= 2; one ECB block for n == 1) with an initial value and padded
// data of the caller's choosing: what a forger holding the KEK (the
// custodians, a test) makes to probe the unwrap's checks one at a time.
func review45RawWrap(t *testing.T, kek []byte, iv [8]byte, padded []byte) []byte {
	t.Helper()
	if len(padded)%8 != 0 || len(padded) == 0 {
		t.Fatalf("raw wrap of %d bytes", len(padded))
	}
	b, err := aes.NewCipher(kek)
	if err != nil {
		t.Fatal(err)
	}
	out := append(iv[:], padded...)
	n := len(padded) / 8
	if n == 1 {
		b.Encrypt(out, out)
		return out
	}
	var block [16]byte
	for j := range 6 {
		for i := 1; i <= n; i++ {
			copy(block[:8], out[:8])
			copy(block[8:], out[8*i:8*i+8])
			b.Encrypt(block[:], block[:])
			binary.BigEndian.PutUint64(out[:8], binary.BigEndian.Uint64(block[:8])^uint64(n*j+i))
			copy(out[8*i:], block[8:])
		}
	}
	return out
}

// review45IV is RFC 5649's AIV with message length mli, or another prefix.
func review45IV(prefix uint32, mli uint32) [8]byte {
	var iv [8]byte
	binary.BigEndian.PutUint32(iv[:4], prefix)
	binary.BigEndian.PutUint32(iv[4:], mli)
	return iv
}

// review45Pad is p zero-padded to whole 8-byte blocks.
func review45Pad(p []byte) []byte {
	return append(bytes.Clone(p), make([]byte, (8-len(p)%8)%8)...)
}

// FLAW (failed before the mend): a key check value is echoed verbatim into the error and, through
// audit.Result, into the hash-chained audit trail in the state directory
// (agent/kek.go parseKCV's `not %q`). A KCV field is where a custodian's
// slip puts a component: the second line of a component printed on two
// lines, a paste into the wrong prompt. Here custodian 2 enters their
// component where its KCV goes: the import is refused, as it must be, and
// the component is then in the error the CLI prints and in the audit log
// A6 copies, for good (the trail cannot be edited). The trail is kept free
// of request strings for the objects (auditKCV: "invalid"), not for the
// result.
func TestReview45KCVFieldNeverEchoesAComponent(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag, dir := signingState(t, env)
	c1, k1 := review45Component(t, 32)
	c2, _ := review45Component(t, 32)
	key, err := keywrap.Combine([][]byte{c1, c2})
	if err != nil {
		t.Fatal(err)
	}
	secret := hex.EncodeToString(c2)
	for what, kcvs := range map[string][]string{
		"the whole component":       {k1, secret},
		"the component's 2nd line":  {k1, secret[32:]},
		"the component, upper case": {k1, strings.ToUpper(secret)},
	} {
		req := api.KEKImportRequest{Name: "kek", Components: [][]byte{bytes.Clone(c1), bytes.Clone(c2)},
			KCVs: kcvs, KCV: review45KCV(t, key)}
		_, err := ag.ImportKEK(ctx, req)
		if err == nil {
			t.Fatalf("%s in the KCV field: imported", what)
		}
		low := strings.ToLower(err.Error())
		if strings.Contains(low, secret[32:]) || strings.Contains(low, secret[:32]) {
			t.Errorf("%s in the KCV field: the error repeats the component: %v", what, err)
		}
	}
	for _, s := range []string{secret[:32], secret[32:], strings.ToUpper(secret[32:])} {
		if p := review45StateHolds(t, dir, []byte(s)); p != "" {
			t.Errorf("half of custodian 2's component (%s...) is in the state directory: %s", s[:6], p)
		}
	}
	recs, err := ag.AuditRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.Op == "kek-import" && strings.Contains(strings.ToLower(r.Result), secret[32:]) {
			t.Errorf("the audit record of the refused kek-import holds the component: %q", r.Result)
			break
		}
	}
}

// FLAW (failed before the mend): split knowledge is the sum of the
// components, not their count.
// keywrap.Combine refuses only a combined key of all zeros; CombineComponents
// (agent/kek.go) and keywrap.Combine (keywrap/keywrap.go) take a component of
// all zeros, and components that cancel each other, so that the KEK is one
// custodian's component: three custodians, two of whom enter the same
// component (a copied sheet, a reused card), or two custodians, one of whom
// enters zeros (whose KCV, 66e94b or dc95c0, every HSM manual prints). The
// ceremony imports a KEK the third (or the second) custodian alone knows,
// and says nothing. An HSM refuses such components. Mended in
// keywrap.Combine: no non-empty subset of the components may XOR to zero
// (bad_input, exit 2), which also refuses four custodians of whom three
// cancel, the key then the fourth's.
func TestReview45ComponentsThatCancelAreRefused(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag := signingAgent(t, env)
	a, ka := review45Component(t, 32)
	b, kb := review45Component(t, 32)
	c, kc := review45Component(t, 32)
	zero := make([]byte, 32)
	kz := review45KCV(t, zero)
	ab := make([]byte, 32)
	subtle.XORBytes(ab, a, b)
	kab := review45KCV(t, ab)
	cases := []struct {
		what  string
		comps [][]byte
		kcvs  []string
	}{
		{"custodians 1 and 2 enter the same component", [][]byte{a, a, b}, []string{ka, ka, kb}},
		{"custodian 1 enters zeros", [][]byte{zero, b}, []string{kz, kb}},
		{"custodian 2 enters zeros among three", [][]byte{a, zero, b}, []string{ka, kz, kb}},
		{"custodians 1 to 3 cancel, the key custodian 4's", [][]byte{a, b, ab, c}, []string{ka, kb, kab, kc}},
	}
	before := keyNames(t, ag)
	for i, tc := range cases {
		key := make([]byte, 32) // the XOR by hand: keywrap.Combine now refuses these
		for _, c := range tc.comps {
			subtle.XORBytes(key, key, c)
		}
		req := api.KEKImportRequest{Name: "kek" + string(rune('a'+i)), KCVs: tc.kcvs, KCV: review45KCV(t, key)}
		for _, c := range tc.comps {
			req.Components = append(req.Components, bytes.Clone(c))
		}
		info, err := ag.ImportKEK(ctx, req)
		if err == nil {
			lone := "the key is no single custodian's"
			for j, c := range tc.comps {
				if bytes.Equal(c, key) {
					lone = "the KEK is custodian " + string(rune('1'+j)) + "'s component alone"
				}
			}
			t.Errorf("%s: imported as KEK %q (KCV %s): %s", tc.what, info.Name, info.KCV, lone)
			continue
		}
		if !errors.Is(err, api.ErrBadInput) {
			t.Errorf("%s: %v (exit %d), want bad_input", tc.what, err, api.ExitCode(err))
		}
		for _, c := range tc.comps {
			if strings.Contains(err.Error(), hex.EncodeToString(c)[:12]) {
				t.Errorf("%s: the error quotes a component: %v", tc.what, err)
			}
		}
	}
	if got := keyNames(t, ag); len(got) != len(before) {
		t.Errorf("keys %v after ceremonies that should have been refused, before %v", got, before)
	}
}

// review45UnwrapKEK imports an unwrapping KEK of size bytes from two random
// components on ag and returns the combined key (what the custodians hold).
func review45UnwrapKEK(t *testing.T, ag *agent.Agent, name string, size int) []byte {
	t.Helper()
	c1, k1 := review45Component(t, size)
	c2, k2 := review45Component(t, size)
	key, err := keywrap.Combine([][]byte{c1, c2})
	if err != nil {
		t.Fatal(err)
	}
	req := api.KEKImportRequest{Name: name, Components: [][]byte{c1, c2}, KCVs: []string{k1, k2}, KCV: review45KCV(t, key), Usage: "unwrap"}
	if _, err := ag.ImportKEK(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	return key
}

// Held: a backup forged with the KEK itself, one RFC 5649 check broken at a
// time (the AIV, the length MLI above the blocks or a whole block below, a
// non-zero padding byte, RFC 3394's IV without padding, a block cut or
// added), a genuine backup under another KEK, and a genuine wrap of bytes
// that are not PKCS#8, import nothing: each is refused, no key is
// recorded, and neither the error, nor the audit trail, nor any file of
// the state holds the unwrapped bytes or the key's private scalar (A6).
// The genuine backup then imports.
func TestReview45ForgedWrapImportsNothing(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag, dir := signingState(t, env)
	kek := review45UnwrapKEK(t, ag, "kek", 16)
	other := make([]byte, 16)
	rand.Read(other)
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	scalar, _ := priv.Bytes()
	mli := uint32(len(der))
	padded := review45Pad(der)
	if len(padded) == len(der) {
		t.Fatalf("a P-256 PKCS#8 of %d bytes needs no padding; the padding cases need some", len(der))
	}
	badPad := bytes.Clone(padded)
	badPad[len(badPad)-1] = 0x01
	notPKCS8 := []byte("PLAINTEXT-NOT-PKCS8: custodian's secret notes 0123456789abcdef")
	genuine, err := keywrap.Wrap(kek, der)
	if err != nil {
		t.Fatal(err)
	}
	foreign, _ := keywrap.Wrap(other, der)
	plain, _ := keywrap.Wrap(kek, notPKCS8)
	n := len(padded) / 8
	cases := map[string][]byte{
		"AIV changed":             review45RawWrap(t, kek, review45IV(0xA65959A7, mli), padded),
		"MLI above the blocks":    review45RawWrap(t, kek, review45IV(0xA65959A6, uint32(8*n+1)), padded),
		"MLI a block below":       review45RawWrap(t, kek, review45IV(0xA65959A6, uint32(8*(n-1))), padded),
		"MLI zero":                review45RawWrap(t, kek, review45IV(0xA65959A6, 0), padded),
		"MLI 2^32-1":              review45RawWrap(t, kek, review45IV(0xA65959A6, 0xFFFFFFFF), padded),
		"padding not zero":        review45RawWrap(t, kek, review45IV(0xA65959A6, mli), badPad),
		"RFC 3394 IV, no padding": review45RawWrap(t, kek, [8]byte{0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6}, padded),
		"a block cut":             genuine[:len(genuine)-8],
		"a block added":           append(bytes.Clone(genuine), genuine[8:16]...),
		"under another KEK":       foreign,
		"not PKCS#8":              plain,
	}
	before := keyNames(t, ag)
	for what, w := range cases {
		_, err := ag.ImportKey(ctx, api.KeyImportRequest{Name: "back", KEK: "kek", Wrapped: w})
		if err == nil {
			t.Fatalf("%s: imported", what)
		}
		if what != "not PKCS#8" && !errors.Is(err, keywrap.ErrIntegrity) && !errors.Is(err, keywrap.ErrSize) {
			t.Errorf("%s: %v, want the wrap's integrity check to refuse it", what, err)
		}
		if strings.Contains(err.Error(), "PLAINTEXT") || strings.Contains(err.Error(), hex.EncodeToString(scalar[:8])) {
			t.Errorf("%s: the error holds unwrapped bytes: %v", what, err)
		}
		if got := keyNames(t, ag); len(got) != len(before) {
			t.Fatalf("%s: keys %v after a refused import, before %v", what, got, before)
		}
	}
	if _, err := ag.ImportKey(ctx, api.KeyImportRequest{Name: "back", KEK: "kek", Wrapped: genuine}); err != nil {
		t.Fatalf("the genuine backup after the forgeries: %v", err)
	}
	pub, _, err := ag.KeyPublic(ctx, "back")
	if err != nil || !priv.PublicKey.Equal(pub) {
		t.Fatalf("imported key %v (%v), not the backup's", pub, err)
	}
	if p := review45StateHolds(t, dir, scalar, der[len(der)-40:], []byte("PLAINTEXT"), []byte(hex.EncodeToString(scalar))); p != "" {
		t.Errorf("plaintext of a backup in the state directory: %s", p)
	}
}

// Held: A1 clears the encrypt bit of the KEK's session in every
// TPM2_EncryptDecrypt2 after the first few of a key import, so that the
// TPM would answer the unwrapped blocks (the PKCS#8 key) in the clear. The
// session attributes are under the command's HMAC: the TPM refuses, no
// block of the key crosses the bus, nothing is recorded, the KEK is noDA
// (no lockout count), and the import runs once A1 lets go.
func TestReview45A1CannotClearTheKEKSessionsEncrypt(t *testing.T) {
	bus := new(swtpmtest.Bus)
	rec := new(swtpmtest.Recorder)
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus), swtpmtest.WithRecorder(rec))
	ctx := context.Background()
	ag := signingAgent(t, env)
	kek := review45UnwrapKEK(t, ag, "kek", 32)
	priv, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(priv)
	scalar, _ := priv.Bytes()
	wrapped, err := keywrap.Wrap(kek, der)
	if err != nil {
		t.Fatal(err)
	}
	lock := swtpmtest.LockoutCounter(t, bus.Next)
	seen, cleared := 0, 0
	bus.Set(swtpmtest.Tamper(swtpmtest.Code(tpm2.TPMCCEncryptDecrypt2), func(cmd, rsp []byte) ([]byte, []byte) {
		if rsp != nil {
			return nil, rsp
		}
		seen++
		if seen <= 3 {
			return nil, nil
		}
		c := bytes.Clone(cmd)
		off := swtpmtest.SessionAttrOffset(c, 1, 0)
		if c[off]&byte(0x40) != 0 {
			c[off] &^= 0x40 // TPMA_SESSION encrypt: the response in the clear
			cleared++
		}
		return c, nil
	}, nil))
	rec.Reset()
	before := keyNames(t, ag)
	_, err = ag.ImportKey(ctx, api.KeyImportRequest{Name: "back", KEK: "kek", Wrapped: wrapped})
	bus.Set(nil)
	if cleared == 0 {
		t.Fatalf("A1 found no EncryptDecrypt2 session that encrypts its response (%d seen)", seen)
	}
	if err == nil {
		t.Fatal("the import went through with the KEK session's encrypt bit cleared")
	}
	t.Logf("refused: %v (exit %d)", err, api.ExitCode(err))
	for i, s := range [][]byte{scalar, der[len(der)-32:], kek} {
		if off := rec.Leak(s); off >= 0 {
			t.Errorf("secret %d (scalar, PKCS#8 tail, KEK) on the bus at %d", i, off)
		}
	}
	if got := keyNames(t, ag); len(got) != len(before) {
		t.Fatalf("keys %v after a refused import, before %v", got, before)
	}
	if after := swtpmtest.LockoutCounter(t, bus.Next); after != lock {
		t.Errorf("lockout counter %d -> %d", lock, after)
	}
	if _, err := ag.ImportKey(ctx, api.KeyImportRequest{Name: "back", KEK: "kek", Wrapped: wrapped}); err != nil {
		t.Fatalf("the import once A1 lets go: %v", err)
	}
}

// FLAW (failed before the mend; dual control): an export approval named
// the key and TPM_RH_NULL, not the KEK the backup goes under, and kek
// import needs no one but an officer-role caller. So one officer-role
// caller (A3 in provd-admin, not root) holding the crypto officer's
// approval of a backup meant for the custodians' KEK entered a KEK from
// components it chose alone, exported the key under it, and opened the
// backup in software: the key's plaintext with no custodian. The approval
// now names the KEK by its TPM name (officer.ExportKEKApproved), and provd
// wraps under no other: A3's own KEK, one it put in the custodians' KEK's
// place under the same name, or an approval stitched from other signatures
// of the officer's are refused before the TPM is asked.
func TestReview45ExportApprovalIsForTheCustodiansKEK(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag := signingAgent(t, env)
	ceremony := func(name string) []byte {
		t.Helper()
		c1, k1 := review45Component(t, 32)
		c2, k2 := review45Component(t, 32)
		key, err := keywrap.Combine([][]byte{c1, c2})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ag.ImportKEK(ctx, api.KEKImportRequest{Name: name, Components: [][]byte{c1, c2}, KCVs: []string{k1, k2}, KCV: review45KCV(t, key)}); err != nil {
			t.Fatal(err)
		}
		return key
	}
	custodians := ceremony("backup-kek")
	for _, n := range []string{"ext", "other"} {
		if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: n, Type: "ecc-p256", Extractable: true}); err != nil {
			t.Fatal(err)
		}
	}
	ap := officertest.ApproveExport(t, ctx, ag, "ext", "backup-kek")
	wrapped, err := ag.ExportKey(ctx, api.KeyExportRequest{Name: "ext", KEK: "backup-kek", Approval: ap})
	if err != nil {
		t.Fatalf("control, the approved backup: %v", err)
	}
	if _, err := keywrap.Unwrap(custodians, wrapped); err != nil {
		t.Fatalf("control: the custodians' key does not open the approved backup: %v", err)
	}
	otherAp := officertest.ApproveExport(t, ctx, ag, "other", "backup-kek")
	mallory, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	st, _ := ag.Status(ctx)
	pkPolicy, _ := hex.DecodeString(st.PolicyDigest)
	keys, _ := ag.ListKeys(ctx)
	names := map[string][]byte{}
	for _, k := range keys {
		names[k.Name], _ = hex.DecodeString(k.ObjectName)
	}
	_, mallorys, err := officer.ApproveExport(mallory, pkPolicy, names["ext"], names["backup-kek"])
	if err != nil {
		t.Fatal(err)
	}

	mine := ceremony("mine") // A3 plays every custodian of a KEK of its own
	refused := func(what string, kek string, ap *api.ExportApproval, own []byte) {
		t.Helper()
		exportRefused(t, ag, what, "ext", kek, ap, own)
	}
	refused("the custodians' approval, under A3's KEK", "mine", ap, mine)
	// The custodians' KEK replaced under its name: another TPM object (its
	// seed is the TPM's), whatever components A3 enters.
	if err := ag.DeleteKey(ctx, "backup-kek"); err != nil {
		t.Fatal(err)
	}
	again := ceremony("backup-kek")
	refused("the custodians' approval, under A3's KEK of the custodians' KEK's name", "backup-kek", ap, again)
	// Stitched approvals: each part is the officer's signature, of another
	// thing.
	refused("the duplication part of this export, with another key's KEK part", "backup-kek", &api.ExportApproval{Duplication: ap.Duplication, KEK: otherAp.KEK}, again)
	refused("the duplication part twice", "backup-kek", &api.ExportApproval{Duplication: ap.Duplication, KEK: ap.Duplication}, again)
	refused("a KEK part signed by another key than the officer's", "backup-kek", &api.ExportApproval{Duplication: ap.Duplication, KEK: mallorys}, again)
	refused("no KEK part", "backup-kek", &api.ExportApproval{Duplication: ap.Duplication}, again)
	refused("no approval", "backup-kek", nil, again)
}
