package cli_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm/keyfile"
)

// TestKeyCommands runs the key commands against swtpm and checks their
// output with openssl and tpm2-tools.
func TestKeyCommands(t *testing.T) {
	env := swtpmtest.Start(t)
	env.CloseTPM() // the CLI takes swtpm's one connection
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	p := func(name string) string { return filepath.Join(dir, name) }
	provd := func(want int, args ...string) string {
		t.Helper()
		out, stderr, code := run(t, nil, append([]string{"--tpm", env.Spec, "--state-dir", state}, args...)...)
		if code != want {
			t.Fatalf("provd %s: exit %d, want %d\n%s%s", strings.Join(args, " "), code, want, out, stderr)
		}
		return out
	}
	openssl := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("openssl", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	if err := os.WriteFile(p("msg"), []byte("firmware image"), 0o600); err != nil {
		t.Fatal(err)
	}

	officerKey, officerPub := officertest.Files(t, dir)
	provd(0, "provision", "--pcrs", "7,16", "--ek-ca", ekCAFile(t, env), "--allow-resettable", "--officer-key", officerPub)
	// The officer approves each recipe offline, for the PK policy digest
	// status shows; derive takes the approval.
	var st struct {
		PolicyDigest string `json:"policy_digest"`
		Officer      string `json:"officer"`
	}
	if err := json.Unmarshal([]byte(provd(0, "status", "-o", "json")), &st); err != nil || st.Officer == "" {
		t.Fatalf("status: %+v %v", st, err)
	}
	derive := func(name, label, context, typ string) {
		t.Helper()
		ap := p(name + ".approval.json")
		provd(0, "key", "approve", "--officer", officerKey, "--pk-policy", st.PolicyDigest, "--type", typ, "--label", label, "--context", context, "--out", ap)
		provd(0, "key", "derive", name, "--label", label, "--context", context, "--type", typ, "--approval", ap)
	}
	// Without an approval: refused, and the error says what to run.
	if out := provd(api.ExitNotPermitted, "key", "derive", "tls", "--label", "tls", "--type", "ecc-p256"); out != "" {
		t.Errorf("refused derive printed %q", out)
	}
	derive("tls", "tls", "device-42", "ecc-p256")
	provd(0, "key", "pub", "tls", "--out", p("tls.pub"))
	provd(0, "key", "sign", "tls", "--in", p("msg"), "--out", p("msg.sig"))
	// --out never replaces what is not a regular file (store.WriteOutput):
	// devices made here, in the test's own directory.
	if err := syscall.Mknod(p("null"), syscall.S_IFCHR|0o666, 1<<8|3); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mknod(p("full"), syscall.S_IFCHR|0o666, 1<<8|7); err != nil {
		t.Fatal(err)
	}
	provd(0, "key", "sign", "tls", "--in", p("msg"), "--out", p("null"))
	if fi, err := os.Lstat(p("null")); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Fatalf("--out to a null device replaced it: %v %v", fi.Mode(), err)
	}
	provd(1, "key", "sign", "tls", "--in", p("msg"), "--out", p("full"))
	provd(api.ExitUsage, "key", "sign", "tls", "--in", p("msg"), "--out", dir)
	openssl("dgst", "-sha256", "-verify", p("tls.pub"), "-signature", p("msg.sig"), p("msg"))
	d := sha256.Sum256([]byte("firmware image"))
	if hexSig := strings.TrimSpace(provd(0, "key", "sign", "tls", "--digest", strings.ToLower(bytesHex(d[:])))); len(hexSig) < 140 {
		t.Errorf("sign --digest printed %q", hexSig)
	}
	provd(0, "key", "csr", "tls", "--subject", "CN=device-42,O=Acme", "--dns", "device-42.example", "--out", p("tls.csr"))
	out := openssl("req", "-in", p("tls.csr"), "-verify", "-noout", "-subject")
	if !strings.Contains(out, "CN = device-42") || !strings.Contains(out, "O = Acme") {
		t.Errorf("CSR subject: %s", out)
	}
	// The CSR carries the TPM key.
	csrPub := openssl("req", "-in", p("tls.csr"), "-noout", "-pubkey")
	if pub, _ := os.ReadFile(p("tls.pub")); csrPub != string(pub) {
		t.Errorf("CSR public key differs from key pub:\n%s\n%s", csrPub, pub)
	}

	derive("mac", "mac", "", "hmac-sha256")
	// No command is silent under -o json: one that wrote a file says so.
	for _, args := range [][]string{
		{"key", "pub", "tls", "--out", p("tls2.pub")},
		{"key", "hmac", "mac", "--in", p("msg"), "--out", p("msg.mac")},
	} {
		var res struct {
			Out   string `json:"out"`
			Bytes int    `json:"bytes"`
		}
		if err := json.Unmarshal([]byte(provd(0, append([]string{"-o", "json"}, args...)...)), &res); err != nil || res.Out != args[len(args)-1] || res.Bytes == 0 {
			t.Errorf("provd -o json %s: %+v %v", strings.Join(args, " "), res, err)
		}
	}
	mac1 := provd(0, "key", "hmac", "mac", "--in", p("msg"))
	if mac2 := provd(0, "key", "hmac", "mac", "--in", p("msg")); mac1 != mac2 || len(strings.TrimSpace(mac1)) != 64 {
		t.Errorf("hmac: %q %q", mac1, mac2)
	}
	derive("data", "data", "", "aes-256")
	provd(0, "key", "encrypt", "data", "--in", p("msg"), "--out", p("msg.enc"))
	provd(0, "key", "decrypt", "data", "--in", p("msg.enc"), "--out", p("msg.dec"))
	if b, _ := os.ReadFile(p("msg.dec")); string(b) != "firmware image" {
		t.Errorf("AES round trip: %q", b)
	}
	provd(0, "key", "create", "fw", "--type", "rsa-2048", "--usage", "decrypt")
	provd(0, "key", "pub", "fw", "--out", p("fw.pub"))
	openssl("pkeyutl", "-encrypt", "-pubin", "-inkey", p("fw.pub"), "-in", p("msg"), "-out", p("msg.oaep"),
		"-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256")
	provd(0, "key", "decrypt", "fw", "--in", p("msg.oaep"), "--out", p("msg.plain"))
	if b, _ := os.ReadFile(p("msg.plain")); string(b) != "firmware image" {
		t.Errorf("OAEP: %q", b)
	}
	if list := provd(0, "key", "list"); !strings.Contains(list, "tls") || !strings.Contains(list, "fw") {
		t.Errorf("list:\n%s", list)
	}

	// Key file: byte for byte what tpm2_encodeobject makes of the same parts
	// for a non-persistent parent; and it imports again.
	provd(0, "key", "export-blob", "fw", "--out", p("fw.tss2.pem"))
	ours, _ := os.ReadFile(p("fw.tss2.pem"))
	kf, err := keyfile.ParsePEM(ours)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p("fw.pubarea"), kf.Public, 0o600)
	os.WriteFile(p("fw.privarea"), kf.Private, 0o600)
	tools := func(args ...string) {
		t.Helper()
		c := exec.Command(args[0], args[1:]...)
		c.Env = append(os.Environ(), "TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port="+strings.TrimPrefix(env.Spec, "swtpm://127.0.0.1:"))
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	tools("tpm2_createprimary", "-C", "o", "-c", p("prim.ctx"))
	// tpm2-tools 5.4 writes emptyAuth = (-p given): the key's auth is
	// empty, which its -p flag spells (docs/keys.md).
	tools("tpm2_encodeobject", "-C", p("prim.ctx"), "-u", p("fw.pubarea"), "-r", p("fw.privarea"), "-p", "-o", p("theirs.pem"))
	tools("tpm2_encodeobject", "-C", p("prim.ctx"), "-u", p("fw.pubarea"), "-r", p("fw.privarea"), "-o", p("theirs-nop.pem"))
	tools("tpm2_flushcontext", "-t")
	theirs, _ := os.ReadFile(p("theirs.pem"))
	if !bytes.Equal(ours, theirs) {
		t.Errorf("key file differs from tpm2_encodeobject's:\nours:\n%s\ntheirs:\n%s", ours, theirs)
	}
	provd(0, "key", "import-blob", "fw2", "--in", p("theirs.pem"))
	provd(0, "key", "import-blob", "fw3", "--in", p("theirs-nop.pem"))
	provd(0, "key", "decrypt", "fw2", "--in", p("msg.oaep"), "--out", p("msg.plain2"))

	// Refusals and their exit codes.
	provd(api.ExitNotPermitted, "key", "create", "weak", "--type", "rsa-1024")
	provd(api.ExitNotPermitted, "key", "derive", "r", "--label", "l", "--type", "rsa-2048")
	provd(api.ExitNotPermitted, "key", "sign", "tls", "--in", p("msg"), "--hash", "sha1")
	provd(api.ExitNotPermitted, "key", "export-blob", "tls", "--out", p("x.pem"))
	provd(api.ExitNotFound, "key", "sign", "nope", "--in", p("msg"))
	provd(api.ExitConflict, "key", "derive", "tls", "--label", "tls", "--type", "ecc-p256")
	// An empty key name is a usage error everywhere (found by review: it
	// panicked in checkKeyName, and the daemon's client got EOF).
	for _, args := range [][]string{
		{"key", "derive", "", "--label", "e", "--type", "ecc-p256"},
		{"key", "create", "", "--type", "ecc-p256"},
		{"key", "sign", "", "--in", p("msg")},
		{"key", "pub", ""},
		{"key", "delete", ""},
		{"key", "export-blob", "", "--out", p("e.pem")},
		{"key", "import-blob", "", "--in", p("msg")},
		{"key", "csr", "", "--subject", "CN=x"},
	} {
		provd(api.ExitUsage, args...)
	}
	provd(api.ExitUsage, "key", "sign", "tls")

	// PCR 16 changes: every key use exits 3.
	env.Reopen()
	dg := sha256.Sum256([]byte("debug"))
	if err := env.TPM.PCRExtend(16, tpm2.TPMAlgSHA256, dg[:]); err != nil {
		t.Fatal(err)
	}
	env.CloseTPM()
	provd(api.ExitPolicy, "key", "sign", "tls", "--in", p("msg"))
	provd(api.ExitPolicy, "key", "hmac", "mac", "--in", p("msg"))
	provd(api.ExitPolicy, "key", "decrypt", "fw", "--in", p("msg.oaep"))
	provd(api.ExitPolicy, "key", "csr", "tls", "--subject", "CN=x")
	provd(0, "key", "pub", "tls") // public keys need no TPM use
	provd(0, "key", "delete", "tls")
	env.Reopen() // for the leak check
}

func bytesHex(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}
