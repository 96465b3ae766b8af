package cli_test

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// notSpokenHere are the commands (a top-level one covers its subcommands)
// this test does not run, and why.
var notSpokenHere = map[string]string{
	"serve":      "a daemon: its API is JSON (docs/api.md, agent/server's tests)",
	"completion": "writes shell code",
	"man":        "writes man pages",
	"help":       "cobra's help",
	"tpm reboot": "sim only (this test's TPM is a swtpm): TestTPMRebootSim checks its -o json",
	"attest":     "needs a fleet endpoint: TestFleetEndToEnd checks every attest and fleet command's -o json",
	"fleet":      "a fleet endpoint and its operators: TestFleetEndToEnd checks the operators' -o json; fleet serve is a server",
}

var (
	snakeKey = regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)
	hexValue = regexp.MustCompile(`^([0-9a-f]{2})*$`)
	pcrIndex = regexp.MustCompile(`^[0-9]{1,2}$`)
	// Keys whose values are digests, chain heads or TPM names: hex, lower
	// case (a key's own "name" and a "hash" algorithm's name are words).
	hexKey = regexp.MustCompile(`(digest|head|sha256|sha384|_name|_hex)$`)
	pcrMap = regexp.MustCompile(`\.pcrs(_[a-z]+)?(\.sha(1|256|384|512))?$`) // by index, or by bank then index
)

// checkJSON fails t unless out is one JSON value whose object keys are all
// snake_case and whose hash-like string values are lower-case hex.
func checkJSON(t *testing.T, what, out string) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Errorf("%s -o json: stdout is not JSON (%v): %q", what, err, out)
		return
	}
	if dec.More() {
		t.Errorf("%s -o json: more than one JSON value: %q", what, out)
	}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				// PCR indices key the PCR value maps (docs/policy.md).
				if !snakeKey.MatchString(k) && !(pcrMap.MatchString(path) && pcrIndex.MatchString(k)) {
					t.Errorf("%s -o json: key %q at %s is not snake_case", what, k, path)
				}
				if s, ok := e.(string); ok && hexKey.MatchString(k) && s != "" && !hexValue.MatchString(s) && !strings.Contains(s, " ") {
					t.Errorf("%s -o json: %s.%s = %q is not lower-case hex", what, path, k, s)
				}
				walk(path+"."+k, e)
			}
		case []any:
			for i, e := range x {
				walk(fmt.Sprintf("%s[%d]", path, i), e)
			}
		}
	}
	walk("", v)
}

// Every command a user runs speaks JSON under -o json: one value on stdout,
// snake_case keys, hashes in hex; a command that writes a file says which
// and how many bytes. The leaf commands are found from the command tree
// itself (the man pages provd writes), so a new command without a case here
// fails the test.
func TestEveryCommandSpeaksJSON(t *testing.T) {
	env := swtpmtest.Start(t)
	env.CloseTPM()
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	p := func(name string) string { return filepath.Join(dir, name) }
	ran := map[string]bool{}
	provd := func(args ...string) string {
		t.Helper()
		out, stderr, code := run(t, nil, append([]string{"--tpm", env.Spec, "--state-dir", state, "-o", "json"}, args...)...)
		if code != 0 {
			t.Fatalf("provd -o json %s: exit %d\n%s%s", strings.Join(args, " "), code, out, stderr)
		}
		var words []string
		for _, a := range args {
			if strings.HasPrefix(a, "-") {
				break
			}
			words = append(words, a)
		}
		for n := len(words); n > 0; n-- {
			ran[strings.Join(words[:n], " ")] = true
		}
		checkJSON(t, strings.Join(args, " "), out)
		return out
	}
	write := func(name string, b []byte) string {
		t.Helper()
		if err := os.WriteFile(p(name), b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p(name)
	}
	msg := write("msg", []byte("firmware image"))
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sder, _ := x509.MarshalPKCS8PrivateKey(signer)
	pder, _ := x509.MarshalPKIXPublicKey(signer.Public())
	signerKey := write("signer.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: sder}))
	signerPub := write("signer.pub.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pder}))
	peer, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	peerDER, _ := x509.MarshalPKIXPublicKey(peer.PublicKey())
	peerPub := write("peer.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: peerDER}))
	officerKey, officerPub := officertest.Files(t, dir)
	ca := ekCAFile(t, env)

	provd("version")
	provd("tpm", "info")
	provd("tpm", "selftest")
	provd("tpm", "identity", "--ek-ca", ca)
	golden := write("golden.json", []byte(provd("tpm", "pcr", "read", "--pcrs", "7,16", "--unauthenticated")))
	var prov struct {
		Counter uint64 `json:"policy_counter"`
	}
	if err := json.Unmarshal([]byte(provd("provision", "--ek-ca", ca, "--policy-signer", signerPub, "--officer-key", officerPub, "--allow-resettable")), &prov); err != nil {
		t.Fatal(err)
	}
	provd("policy", "sign", "--signer", signerKey, "--pcr-values", golden, "--version", fmt.Sprint(prov.Counter), "--allow-resettable", "--out", p("policy.json"))
	provd("policy", "install", p("policy.json"))
	provd("policy", "show")
	var st struct {
		PolicyDigest string `json:"policy_digest"`
		PKName       string `json:"pk_name"`
	}
	if err := json.Unmarshal([]byte(provd("status")), &st); err != nil {
		t.Fatal(err)
	}
	provd("tpm", "pcr", "read", "--pcrs", "7")
	provd("key", "approve", "--officer", officerKey, "--pk-policy", st.PolicyDigest, "--type", "ecc-p256", "--label", "tls", "--out", p("tls.approval"))
	provd("key", "derive", "tls", "--label", "tls", "--type", "ecc-p256", "--approval", p("tls.approval"))
	provd("key", "approve", "--officer", officerKey, "--pk-policy", st.PolicyDigest, "--type", "hmac-sha256", "--label", "mac", "--out", p("mac.approval"))
	provd("key", "derive", "mac", "--label", "mac", "--type", "hmac-sha256", "--approval", p("mac.approval"))
	provd("key", "approve", "--officer", officerKey, "--pk-policy", st.PolicyDigest, "--type", "aes-256", "--label", "data", "--out", p("data.approval"))
	provd("key", "derive", "data", "--label", "data", "--type", "aes-256", "--approval", p("data.approval"))
	provd("key", "create", "fw", "--type", "rsa-2048", "--usage", "decrypt")
	provd("key", "create", "ec", "--type", "ecc-p256", "--usage", "decrypt")
	// The custodians' ceremony and a backup.
	cust := newCustodians(t, 2, 32)
	var bk, backup struct {
		ObjectName string `json:"object_name"`
	}
	if err := json.Unmarshal([]byte(provd(append([]string{"kek", "import", "backup", "--components", "2", "--kcv", cust.kcv}, cust.fds(t, nil)...)...)), &backup); err != nil {
		t.Fatal(err)
	}
	provd("key", "create", "bk", "--type", "ecc-p256", "--extractable")
	if err := json.Unmarshal([]byte(provd("key", "pub", "bk")), &bk); err != nil {
		t.Fatal(err)
	}
	provd("key", "approve", "--officer", officerKey, "--pk-policy", st.PolicyDigest, "--export", "--object-name", bk.ObjectName, "--kek-object-name", backup.ObjectName, "--out", p("bk.approval"))
	provd("key", "export", "bk", "--kek", "backup", "--approval", p("bk.approval"), "--out", p("bk.kwp"))
	provd(append([]string{"kek", "import", "backup-u", "--usage", "unwrap", "--components", "2", "--kcv", cust.kcv}, cust.fds(t, nil)...)...)
	provd("key", "import", "bk2", "--kek", "backup-u", "--in", p("bk.kwp"))
	provd(append([]string{"key", "recover", "--in", p("bk.kwp"), "--components", "2", "--kcv", cust.kcv, "--out", p("bk.p8")}, cust.fds(t, nil)...)...)
	// Module to module, to this same TPM as its own peer (the commands'
	// JSON is what is checked here; two TPMs: TestDupCLI).
	if err := os.MkdirAll(p("images"), 0o700); err != nil {
		t.Fatal(err)
	}
	write("images/bootloader.bin", []byte("bootloader"))
	provd("fw", "sign", "--key", signerKey, "--images", p("images"), "--version", "1", "--class", "demo", "--out", p("fw.manifest"))
	provd("fw", "manifest", "show", p("fw.manifest"))
	provd("fw", "anchor", "set", "--pubkey", signerPub, "--class", "demo", "--officer", officerKey, "--ek-ca", ca)
	provd("fw", "anchor", "show")
	provd("fw", "verify", "--manifest", p("fw.manifest"), "--root", p("images"), "--commit")
	provd("fw", "log", "--replay")
	provd("peer", "identity", "--out", p("peer.json"))
	provd("peer", "challenge", "--to", p("peer.json"), "--ek-ca", ca, "--out", p("peer.challenge"))
	provd("peer", "prove", "--challenge", p("peer.challenge"), "--out", p("peer.proof"))
	provd("key", "approve", "--officer", officerKey, "--pk-policy", st.PolicyDigest, "--dup-to", p("peer.json"), "--peer-pk", st.PKName,
		"--challenge", p("peer.challenge"), "--proof", p("peer.proof"), "--object-name", bk.ObjectName, "--out", p("bk.dup.approval"))
	provd("dup", "export", "bk", "--to", p("peer.json"), "--approval", p("bk.dup.approval"), "--ek-ca", ca, "--out", p("bk.dup"))
	provd("key", "delete", "bk") // a device holds a key once
	provd("dup", "import", "bk3", "--in", p("bk.dup"))
	for _, args := range [][]string{
		{"key", "pub", "tls"},
		{"key", "pub", "tls", "--out", p("tls.pub")},
		{"key", "sign", "tls", "--in", msg},
		{"key", "sign", "tls", "--in", msg, "--out", p("msg.sig")},
		{"key", "hmac", "mac", "--in", msg},
		{"key", "hmac", "mac", "--in", msg, "--out", p("msg.mac")},
		{"key", "encrypt", "data", "--in", msg, "--out", p("msg.enc")},
		{"key", "decrypt", "data", "--in", p("msg.enc"), "--out", p("msg.dec")},
		{"key", "ecdh", "ec", "--peer-pub", peerPub, "--out", p("z")},
		{"key", "csr", "tls", "--subject", "CN=device-42", "--out", p("tls.csr")},
		{"key", "export-blob", "fw", "--out", p("fw.key")},
		{"key", "list"},
		{"seal", "--in", msg, "--out", p("msg.sealed")},
		{"unseal", "--in", p("msg.sealed"), "--out", p("msg.unsealed")},
		{"tpm", "pcr", "extend", "23", "--data", "x"},
		{"audit", "show"},
		{"audit", "verify"},
		{"audit", "repair"},
		{"audit", "reanchor"},
		{"key", "delete", "fw"},
		{"key", "import-blob", "fw", "--in", p("fw.key")},
		{"status"},
		{"zeroize", "--yes"},
	} {
		provd(args...)
	}

	// Every leaf command of the tree ran, or is named above.
	pages := t.TempDir()
	if _, stderr, code := run(t, nil, "man", pages); code != 0 {
		t.Fatalf("man: %s", stderr)
	}
	entries, err := os.ReadDir(pages)
	if err != nil {
		t.Fatal(err)
	}
	var all []string
	for _, e := range entries {
		name, _, _ := strings.Cut(e.Name(), ".")
		if name == "provd" || name == "provd-exit-codes" {
			continue
		}
		all = append(all, strings.ReplaceAll(strings.TrimPrefix(name, "provd-"), "-", " "))
	}
	for _, c := range all {
		leaf := true
		for _, o := range all {
			if strings.HasPrefix(o, c+" ") {
				leaf = false
			}
		}
		top, _, _ := strings.Cut(c, " ")
		if !leaf || ran[c] || notSpokenHere[top] != "" || notSpokenHere[c] != "" {
			continue
		}
		// Names with a dash inside (export-blob) came back as two words.
		if ran[strings.Replace(c, " ", "-", strings.Count(c, " ")-1)] || ran[dashLast(c)] {
			continue
		}
		t.Errorf("provd %s: no -o json case here (add one, or name it in notSpokenHere)", c)
	}
}

// dashLast joins the last two words of c with a dash: "key export blob" is
// the command "key export-blob".
func dashLast(c string) string {
	i := strings.LastIndex(c, " ")
	if i < 0 {
		return c
	}
	return c[:i] + "-" + c[i+1:]
}
