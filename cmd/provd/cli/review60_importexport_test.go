package cli_test

import (
	"encoding/hex"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// Held: keys brought in from a PKCS#8 backup made outside provd (openssl
// genpkey: an ECC P-384 key and an RSA-2048 key, exponent 65537), imported
// --extractable under a KEK (kind imported: sensitiveDataOrigin clear,
// fixedTPM and fixedParent clear, the RSA exponent 0 in the area provd
// writes), still pass the stricter catalog.TypeOf that withDupBranch runs
// before their duplication: each is exported again under a KEK with the
// officer's approval, and the public key openssl reads from the second
// backup is the one openssl generated.
func TestReview60ImportedKeysExportAgain(t *testing.T) {
	env := swtpmtest.Start(t)
	env.CloseTPM()
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	d := deviceOn(t, env, p("state"))
	officerKey, officerPub := officertest.Files(t, dir)
	d(0, "provision", "--pcrs", "7", "--ek-ca", ekCAFile(t, env), "--officer-key", officerPub)
	openssl := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("openssl", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	c := newCustodians(t, 2, 32)
	d(0, append([]string{"kek", "import", "unwrapk", "--usage", "unwrap", "--components", "2", "--kcv", c.kcv}, c.fds(t, nil)...)...)
	var wrapk api.KeyInfo
	if err := json.Unmarshal([]byte(d(0, append([]string{"-o", "json", "kek", "import", "wrapk", "--usage", "wrap", "--components", "2", "--kcv", c.kcv}, c.fds(t, nil)...)...)), &wrapk); err != nil {
		t.Fatal(err)
	}
	var st struct {
		PolicyDigest string `json:"policy_digest"`
	}
	if err := json.Unmarshal([]byte(d(0, "status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	kek := hex.EncodeToString(c.key)
	for name, gen := range map[string][]string{
		"p384": {"genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"},
		"rsa":  {"genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"},
	} {
		openssl(append(gen, "-out", p(name+".pem"))...)
		openssl("pkcs8", "-topk8", "-nocrypt", "-in", p(name+".pem"), "-outform", "DER", "-out", p(name+".der"))
		openssl("enc", "-id-aes256-wrap-pad", "-K", kek, "-iv", "A65959A6", "-in", p(name+".der"), "-out", p(name+".kwp"))
		d(0, "key", "import", name, "--in", p(name+".kwp"), "--kek", "unwrapk", "--extractable")
		var pub struct {
			ObjectName string `json:"object_name"`
		}
		if err := json.Unmarshal([]byte(d(0, "key", "pub", name, "-o", "json")), &pub); err != nil {
			t.Fatal(err)
		}
		d(0, "key", "approve", "--officer", officerKey, "--pk-policy", st.PolicyDigest, "--export", "--object-name", pub.ObjectName,
			"--kek-object-name", wrapk.ObjectName, "--out", p(name+".export.json"))
		d(0, "key", "export", name, "--kek", "wrapk", "--approval", p(name+".export.json"), "--out", p(name+".again.kwp"))
		openssl("enc", "-d", "-id-aes256-wrap-pad", "-K", kek, "-iv", "A65959A6", "-in", p(name+".again.kwp"), "-out", p(name+".again.der"))
		was := openssl("pkey", "-inform", "DER", "-in", p(name+".der"), "-pubout")
		is := openssl("pkey", "-inform", "DER", "-in", p(name+".again.der"), "-pubout")
		if was != is {
			t.Errorf("%s: the second backup holds another key", name)
		}
	}
}
