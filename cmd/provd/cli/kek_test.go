package cli_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/keywrap"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/test/officertest"
)

// custodians are a KEK's components, as the custodians' sheets print them.
type custodians struct {
	parts [][]byte
	kcvs  []string
	kcv   string // the combined key's
	key   []byte // the combined key, for openssl
}

func newCustodians(t *testing.T, n, size int) custodians {
	t.Helper()
	var c custodians
	for range n {
		p := make([]byte, size)
		rand.Read(p)
		k, _ := keywrap.KCV(p)
		c.parts = append(c.parts, p)
		c.kcvs = append(c.kcvs, hex.EncodeToString(k[:]))
	}
	c.key, _ = keywrap.Combine(c.parts)
	k, _ := keywrap.KCV(c.key)
	c.kcv = hex.EncodeToString(k[:])
	return c
}

// fds writes each custodian's entry (component in groups of 8 hex digits,
// then its KCV) to a file of its own and opens it as a raw file
// descriptor, which the command reads and closes: the --component-fd
// flags. edit may change custodian i's entry first.
func (c custodians) fds(t *testing.T, edit func(i int, comp, kcv string) (string, string)) []string {
	t.Helper()
	var args []string
	for i, p := range c.parts {
		h := hex.EncodeToString(p)
		var groups []string
		for len(h) > 0 {
			groups = append(groups, h[:8])
			h = h[8:]
		}
		comp, kcv := strings.Join(groups, " "), c.kcvs[i]
		if edit != nil {
			comp, kcv = edit(i, comp, kcv)
		}
		f := filepath.Join(t.TempDir(), "custodian")
		if err := os.WriteFile(f, []byte(comp+"\n"+kcv+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		fd, err := syscall.Open(f, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		args = append(args, "--component-fd", fmt.Sprint(fd))
	}
	return args
}

// opensslKCV is the first 3 bytes of AES-ECB(key, zero block) by openssl.
func opensslKCV(t *testing.T, key []byte) string {
	t.Helper()
	cmd := exec.Command("openssl", "enc", fmt.Sprintf("-aes-%d-ecb", 8*len(key)), "-K", hex.EncodeToString(key), "-nopad")
	cmd.Stdin = bytes.NewReader(make([]byte, 16))
	out, err := cmd.Output()
	if err != nil || len(out) != 16 {
		t.Fatalf("openssl enc: %v", err)
	}
	return hex.EncodeToString(out[:3])
}

// TestKeyCeremonyCLI is the custodians' job end to end through the command
// tree on two swtpm instances: a 3-component KEK ceremony on A (wrong
// component or KCV: exit 16, nothing imported; the KEK's KCV equals
// openssl's), an extractable RSA key exported with the officer's approval,
// unwrapped by openssl to a PKCS#8 key whose public key is provd's, recovered
// offline with no TPM and no state, imported on B after the same ceremony
// there, where it signs what A's public key verifies; a key created without
// --extractable is refused (exit 5).
func TestKeyCeremonyCLI(t *testing.T) {
	envA, envB, a, b, dir := twoDevices(t)
	p := func(name string) string { return filepath.Join(dir, name) }
	openssl := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("openssl", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	officerKey, officerPub := officertest.Files(t, dir)
	a(0, "provision", "--pcrs", "7", "--ek-ca", ekCAFile(t, envA), "--officer-key", officerPub)
	b(0, "provision", "--pcrs", "7", "--ek-ca", ekCAFile(t, envB), "--officer-key", officerPub)

	c := newCustodians(t, 3, 32)
	// A mistyped component (one hex digit), a KCV read off the wrong sheet,
	// a wrong combined KCV: exit 16, nothing imported.
	flip := func(i int, comp, kcv string) (string, string) {
		if i == 1 {
			comp = strings.Replace(comp, comp[:1], map[bool]string{true: "0", false: "1"}[comp[:1] != "0"], 1)
		}
		return comp, kcv
	}
	a(api.ExitKCV, append([]string{"kek", "import", "backup", "--components", "3", "--kcv", c.kcv}, c.fds(t, flip)...)...)
	swap := func(i int, comp, kcv string) (string, string) { return comp, c.kcvs[(i+1)%3] }
	a(api.ExitKCV, append([]string{"kek", "import", "backup", "--components", "3", "--kcv", c.kcv}, c.fds(t, swap)...)...)
	a(api.ExitKCV, append([]string{"kek", "import", "backup", "--components", "3", "--kcv", "abcdef"}, c.fds(t, nil)...)...)
	if list := a(0, "key", "list"); strings.Contains(list, "backup") {
		t.Fatalf("a refused ceremony left a key:\n%s", list)
	}
	// No terminal and no fds, or no --kcv without a terminal: usage.
	a(api.ExitUsage, "kek", "import", "backup", "--components", "3")
	a(api.ExitUsage, append([]string{"kek", "import", "backup", "--components", "3"}, c.fds(t, nil)...)...)
	var kek api.KeyInfo
	if err := json.Unmarshal([]byte(a(0, append([]string{"-o", "json", "kek", "import", "backup", "--components", "3", "--kcv", c.kcv}, c.fds(t, nil)...)...)), &kek); err != nil {
		t.Fatal(err)
	}
	if want := opensslKCV(t, c.key); kek.KCV != want || kek.Kind != api.KindKEK {
		t.Fatalf("KEK %+v, openssl's KCV of the combined key %s", kek, want)
	}
	b(0, append([]string{"kek", "import", "backup", "--usage", "unwrap", "--components", "3", "--kcv", c.kcv}, c.fds(t, nil)...)...)

	a(0, "key", "create", "signer", "--type", "rsa-2048", "--extractable")
	a(0, "key", "create", "fixed", "--type", "ecc-p256")
	var st struct {
		PolicyDigest string `json:"policy_digest"`
	}
	if err := json.Unmarshal([]byte(a(0, "status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	var pub struct {
		ObjectName string `json:"object_name"`
	}
	if err := json.Unmarshal([]byte(a(0, "key", "pub", "signer", "-o", "json")), &pub); err != nil {
		t.Fatal(err)
	}
	approve := func(code int, out string, extra ...string) {
		t.Helper()
		a(code, append([]string{"key", "approve", "--officer", officerKey, "--pk-policy", st.PolicyDigest, "--export", "--object-name", pub.ObjectName, "--out", p(out)}, extra...)...)
	}
	approve(api.ExitUsage, "nokek.json") // an export is approved under one KEK
	approve(api.ExitUsage, "nokek.json", "--kek-object-name", "000b")
	approve(0, "signer.export.json", "--kek-object-name", kek.ObjectName)
	a(api.ExitUsage, "key", "export", "signer", "--kek", "backup", "--out", p("x")) // no approval
	a(0, "key", "export", "signer", "--kek", "backup", "--approval", p("signer.export.json"), "--out", p("signer.p8.kwp"))
	// The approval of one key does not export another, nor under another
	// KEK (review 45: one caller's own components); an approval of the
	// duplication alone, which named no KEK, is not an export's.
	other := newCustodians(t, 2, 32)
	a(0, append([]string{"kek", "import", "other", "--components", "2", "--kcv", other.kcv}, other.fds(t, nil)...)...)
	dupOnly := p("dup-only.json")
	writeDupOnlyApproval(t, st.PolicyDigest, pub.ObjectName, dupOnly)
	for _, refused := range []struct {
		code          int
		key, kek, app string
	}{
		{api.ExitNotPermitted, "fixed", "backup", p("signer.export.json")},
		{api.ExitNotPermitted, "signer", "other", p("signer.export.json")},
		{api.ExitUsage, "signer", "backup", dupOnly},
	} {
		a(refused.code, "key", "export", refused.key, "--kek", refused.kek, "--approval", refused.app, "--out", p("refused.kwp"))
		if _, err := os.Stat(p("refused.kwp")); err == nil {
			t.Fatalf("a refused export of %s under %s wrote a file", refused.key, refused.kek)
		}
	}

	// openssl unwraps it with the combined key; the public keys match.
	openssl("enc", "-d", "-id-aes256-wrap-pad", "-K", hex.EncodeToString(c.key), "-iv", "A65959A6", "-in", p("signer.p8.kwp"), "-out", p("signer.der"))
	a(0, "key", "pub", "signer", "--out", p("signer.pub.pem"))
	fromOpenssl := openssl("pkey", "-inform", "DER", "-in", p("signer.der"), "-pubout")
	want, _ := os.ReadFile(p("signer.pub.pem"))
	if strings.TrimSpace(fromOpenssl) != strings.TrimSpace(string(want)) {
		t.Fatalf("openssl's public key of the unwrapped export:\n%s\nprovd key pub:\n%s", fromOpenssl, want)
	}

	// Recovery on an air-gapped host: no TPM, no state.
	out, stderr, code := run(t, nil, append([]string{"--tpm", "swtpm://127.0.0.1:1", "--state-dir", p("nowhere"), "key", "recover", "--in", p("signer.p8.kwp"),
		"--components", "3", "--kcv", c.kcv, "--out", p("recovered.p8")}, c.fds(t, nil)...)...)
	if code != 0 {
		t.Fatalf("key recover: exit %d\n%s%s", code, out, stderr)
	}
	der, _ := os.ReadFile(p("signer.der"))
	rec, _ := os.ReadFile(p("recovered.p8"))
	if !bytes.Equal(der, rec) {
		t.Fatal("key recover wrote another key than openssl unwrapped")
	}
	if fi, err := os.Stat(p("recovered.p8")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("recovered key file: %v %v", fi.Mode(), err)
	}
	if _, err := os.Stat(p("nowhere")); err == nil {
		t.Fatal("key recover made a state directory")
	}

	// B takes the backup and signs what A's public key verifies.
	b(0, "key", "import", "signer", "--in", p("signer.p8.kwp"), "--kek", "backup")
	if err := os.WriteFile(p("msg"), []byte("firmware image"), 0o600); err != nil {
		t.Fatal(err)
	}
	b(0, "key", "sign", "signer", "--in", p("msg"), "--out", p("msg.sig"))
	openssl("dgst", "-sha256", "-verify", p("signer.pub.pem"), "-signature", p("msg.sig"), p("msg"))
	// Changed in transit: exit 14, nothing imported.
	w, _ := os.ReadFile(p("signer.p8.kwp"))
	w[len(w)-1] ^= 1
	if err := os.WriteFile(p("changed.kwp"), w, 0o600); err != nil {
		t.Fatal(err)
	}
	b(api.ExitTampered, "key", "import", "signer2", "--in", p("changed.kwp"), "--kek", "backup")
	if list := b(0, "key", "list"); strings.Contains(list, "signer2") {
		t.Fatalf("a changed backup was imported:\n%s", list)
	}
}

// writeDupOnlyApproval writes to path the officer's approval of the
// duplication of the key with TPM name obj to TPM_RH_NULL alone: an export
// approval as it was before it named the KEK.
func writeDupOnlyApproval(t *testing.T, pkPolicy, obj, path string) {
	t.Helper()
	pk, err1 := hex.DecodeString(pkPolicy)
	name, err2 := hex.DecodeString(obj)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	ap, err := officer.ApproveDuplication(officertest.Key(), pk, name, officer.ExportParent)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ap.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
