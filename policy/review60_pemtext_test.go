package policy_test

import (
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provd/provd/policy"
)

// FLAW (a regression of a679d3a; failed before the mend): key files OpenSSL writes with -text, which OpenSSL and the release
// before a679d3a read, are refused: `openssl ec -text -out signer.pem` (the
// key's dump, then its one EC PRIVATE KEY block) as a policy signer or
// crypto officer key (ParseSignerPEM: policy sign --signer, key approve
// --officer, provision --officer), and a PUBLIC KEY block after a comment
// line (ParsePublicKeyPEM: --policy-signer, --officer-key,
// --duplicable-by). internal/pemblock takes only whitespace before the
// block; the old onePEM (pem.Decode) skipped text before it, as OpenSSL's
// PEM reader does. Attacker: none; loss: an operator's existing files and
// scripts stop working (exit 2), and, where the file was stored as given
// (--duplicable-by: agent.TestReview60StoredDupByOfThePreviousRelease),
// the state. The ambiguity review 58 closed was a second block, which the
// one-BEGIN rule and the nothing-after rule already refuse: text without
// "-----" before the single BEGIN line names no other key. Fix: in
// pemblock.Decode allow lines of text before the BEGIN line that hold no
// "-----" (and no NUL), keep one BEGIN line in the file and nothing after
// the block.
func TestReview60OpenSSLTextFilesRefused(t *testing.T) {
	dir := t.TempDir()
	opensslRun := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}
	key := filepath.Join(dir, "k.pem")
	text := filepath.Join(dir, "k.text.pem")
	pub := filepath.Join(dir, "k.pub.pem")
	opensslRun("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
	opensslRun("ec", "-in", key, "-text", "-out", text)
	opensslRun("pkey", "-in", key, "-pubout", "-out", pub)

	signerText, _ := os.ReadFile(text)
	if !strings.HasPrefix(string(signerText), "Private-Key:") || strings.Count(string(signerText), "-----BEGIN") != 1 {
		t.Fatalf("openssl ec -text wrote:\n%s", signerText)
	}
	// The release before: pem.Decode, nothing but whitespace after.
	if blk, rest := pem.Decode(signerText); blk == nil || blk.Type != "EC PRIVATE KEY" || strings.TrimSpace(string(rest)) != "" {
		t.Fatal("not a file the previous release read")
	}
	if _, err := policy.ParseSignerPEM(signerText); err != nil {
		t.Errorf("`openssl ec -text` signer key (one EC PRIVATE KEY block after the key's dump): %v", err)
	}
	pubPEM, _ := os.ReadFile(pub)
	commented := append([]byte("# policy signer of fleet gw-eu, 2026\n"), pubPEM...)
	if _, err := policy.ParsePublicKeyPEM(commented); err != nil {
		t.Errorf("a PUBLIC KEY block after a comment line: %v", err)
	}
	// Held: the clean files, and with CRLF line ends.
	for name, b := range map[string][]byte{"key": mustRead(t, key), "key CRLF": crlf(mustRead(t, key))} {
		if _, err := policy.ParseSignerPEM(b); err != nil {
			t.Errorf("openssl genpkey %s: %v", name, err)
		}
	}
	for name, b := range map[string][]byte{"pub": pubPEM, "pub CRLF": crlf(pubPEM)} {
		if _, err := policy.ParsePublicKeyPEM(b); err != nil {
			t.Errorf("openssl pkey -pubout %s: %v", name, err)
		}
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func crlf(b []byte) []byte { return []byte(strings.ReplaceAll(string(b), "\n", "\r\n")) }
