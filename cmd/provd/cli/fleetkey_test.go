package cli_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
)

// TestFleetKeyDelivery: keys, as secrets, go only to devices that pass:
// the operator hands the endpoint an ECDSA P-256 and an RSA-2048 key; the
// device fetches them after a pass and signs with each inside its TPM
// (the signatures verify with the operator's public keys); a key is no
// secret to unseal; root on the device, with the PCRs as they passed,
// can neither unseal, duplicate nor sign with it outside provd's policy
// session (the TPM refuses each); after a change of the PCRs it signs no
// more (exit 3). The endpoint lists the keys' public parts, never the
// private ones, and refuses keys of types it does not deliver.
func TestFleetKeyDelivery(t *testing.T) {
	a := fleetDevice(t)
	e := startEndpoint(t, "sqlite://"+filepath.Join(t.TempDir(), "fleet.db"), a.swtpm)
	a.expect(t, 0, "attest", "enroll", "--endpoint", e.srv.URL, "--ca-cert", e.ca, "--class", "gateway")
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	tokenFile := p("token")
	if err := os.WriteFile(tokenFile, []byte(e.token), 0o600); err != nil {
		t.Fatal(err)
	}
	op := []string{"--endpoint", e.srv.URL, "--ca-cert", e.ca, "--token-file", tokenFile}
	golden := p("golden.json")
	if err := os.WriteFile(golden, []byte(a.expect(t, 0, "tpm", "pcr", "read", "--pcrs", "0,1,2,3,4,5,6,7,12", "-o", "json")), 0o600); err != nil {
		t.Fatal(err)
	}
	a.expect(t, 0, append([]string{"fleet", "policy", "set", "--class", "gateway", "--pcr-values", golden}, op...)...)

	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	writeKey := func(name string, k crypto.Signer) string {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p(name), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p(name)
	}
	a.expect(t, 0, append([]string{"fleet", "key", "put", "--class", "gateway", "--name", "fleet-ec", "--in", writeKey("ec.pem", ecKey)}, op...)...)
	a.expect(t, 0, append([]string{"fleet", "key", "put", "--class", "gateway", "--name", "fleet-rsa", "--in", writeKey("rsa.pem", rsaKey)}, op...)...)
	a.expect(t, api.ExitNotPermitted, append([]string{"fleet", "key", "put", "--class", "gateway", "--name", "weak", "--in", writeKey("small.pem", small)}, op...)...)
	a.expect(t, api.ExitUsage, append([]string{"fleet", "key", "put", "--class", "gateway", "--name", "x", "--in", golden}, op...)...)
	list := a.expect(t, 0, append([]string{"fleet", "secret", "list", "--class", "gateway", "-o", "json"}, op...)...)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ecKey)
	if !strings.Contains(list, `"kind": "key"`) || !strings.Contains(list, "PUBLIC KEY") || strings.Contains(list, base64.StdEncoding.EncodeToString(ecDER)[:40]) || strings.Contains(list, "weak") {
		t.Fatalf("secret list:\n%s", list)
	}

	if out := a.expect(t, 0, "attest", "fetch", "--ca-cert", e.ca); !strings.Contains(out, "installed fleet-ec") || !strings.Contains(out, "installed fleet-rsa") {
		t.Fatalf("fetch:\n%s", out)
	}
	msg := []byte("signed by a key the fleet delivered")
	if err := os.WriteFile(p("msg"), msg, 0o600); err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(msg)
	a.expect(t, 0, "attest", "sign", "fleet-ec", "--in", p("msg"), "--out", p("ec.sig"))
	if sig, _ := os.ReadFile(p("ec.sig")); !ecdsa.VerifyASN1(&ecKey.PublicKey, digest[:], sig) {
		t.Fatal("the delivered ECDSA key's signature does not verify with the operator's public key")
	}
	a.expect(t, 0, "attest", "sign", "fleet-rsa", "--in", p("msg"), "--out", p("rsa.sig"))
	if sig, _ := os.ReadFile(p("rsa.sig")); rsa.VerifyPKCS1v15(&rsaKey.PublicKey, crypto.SHA256, digest[:], sig) != nil {
		t.Fatal("the delivered RSA key's signature does not verify with the operator's public key")
	}
	a.expect(t, api.ExitNotPermitted, "attest", "secret", "fleet-ec")
	a.expect(t, api.ExitNotFound, "attest", "sign", "nosuch", "--in", p("msg"))

	// Root on the device, with the PCRs as they passed: the delivered key
	// on the wire, imported under the EK, then TPM2_Unseal, TPM2_Duplicate
	// and TPM2_Sign through sessions that satisfy its PCRs and name each
	// command but lack provd's AK: the TPM refuses every one.
	v := fetchOnWire(t, e, a, 2)
	wire, _ := json.Marshal(v)
	if d, _ := ecKey.Bytes(); strings.Contains(string(wire), base64.StdEncoding.EncodeToString(d)) {
		t.Fatal("the private key is in the clear in the endpoint's answer")
	}
	dl := v.Deliveries[0]
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](dl.Public)
	if err != nil || pub.Type != tpm2.TPMAlgECC {
		t.Fatalf("delivery %s: %v %v", dl.Name, pub, err)
	}
	ta, obj, done := importAsRoot(t, a, dl)
	sel := policy.PCRValues{Bank: policy.BankSHA256, Values: map[int][]byte{}}
	for _, i := range dl.PCRs["sha256"] {
		sel.Values[i] = make([]byte, 32)
	}
	for _, cc := range []tpm2.TPMCC{tpm2.TPMCCUnseal, tpm2.TPMCCDuplicate, tpm2.TPMCCSign} {
		s, err := ta.StartPolicySession(false)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.PolicyPCR(sel.Selection(), nil); err != nil {
			t.Fatal(err)
		}
		if err := s.PolicyCommandCode(cc); err != nil {
			t.Fatal(err)
		}
		switch cc {
		case tpm2.TPMCCUnseal:
			_, err = ta.UnsealWith(obj, s.Session())
		case tpm2.TPMCCDuplicate:
			_, err = (tpm2.Duplicate{ObjectHandle: obj.Auth(s.Session()), NewParentHandle: tpm2.NamedHandle{Handle: tpm2.TPMRHNull},
				Symmetric: tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull}}).Execute(ta)
		case tpm2.TPMCCSign:
			_, err = ta.Sign(obj, s.Session(), digest[:], tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})})
		}
		s.Close()
		if err == nil {
			t.Fatalf("%v of the delivered key without provd's AK", cc)
		}
	}
	// Nor with a password: the key takes no authValue.
	if _, err := ta.Sign(obj, tpm2.PasswordAuth(nil), digest[:], tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA,
		Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})}); err == nil {
		t.Fatal("the delivered key signed with a password session")
	}
	done()

	a.expect(t, 0, "tpm", "pcr", "extend", "7", "--data", "changed")
	a.expect(t, api.ExitPolicy, "attest", "sign", "fleet-ec", "--in", p("msg"))
}
