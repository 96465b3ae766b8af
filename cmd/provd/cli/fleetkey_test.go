package cli_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/agent"
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
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsa3072, err := rsa.GenerateKey(rand.Reader, 3072)
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
	a.expect(t, 0, append([]string{"fleet", "key", "put", "--class", "gateway", "--name", "fleet-p384", "--in", writeKey("p384.pem", p384)}, op...)...)
	a.expect(t, 0, append([]string{"fleet", "key", "put", "--class", "gateway", "--name", "fleet-rsa3072", "--in", writeKey("rsa3072.pem", rsa3072)}, op...)...)
	a.expect(t, api.ExitNotPermitted, append([]string{"fleet", "key", "put", "--class", "gateway", "--name", "weak", "--in", writeKey("small.pem", small)}, op...)...)
	// Keys no TPM imports are refused at the endpoint (found by review: a
	// valid RSA key with uneven primes, or RSA-4096, failed on every
	// device of the class).
	a.expect(t, api.ExitNotPermitted, append([]string{"fleet", "key", "put", "--class", "gateway", "--name", "uneven", "--in", writeKey("uneven.pem", unbalancedRSA(t))}, op...)...)
	a.expect(t, api.ExitUsage, append([]string{"fleet", "key", "put", "--class", "gateway", "--name", "x", "--in", golden}, op...)...)
	list := a.expect(t, 0, append([]string{"fleet", "secret", "list", "--class", "gateway", "-o", "json"}, op...)...)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ecKey)
	if !strings.Contains(list, `"kind": "key"`) || !strings.Contains(list, "PUBLIC KEY") || strings.Contains(list, base64.StdEncoding.EncodeToString(ecDER)[:40]) || strings.Contains(list, "weak") {
		t.Fatalf("secret list:\n%s", list)
	}

	if out := a.expect(t, 0, "attest", "fetch", "--ca-cert", e.ca); !strings.Contains(out, "installed fleet-ec") || !strings.Contains(out, "installed fleet-rsa") ||
		!strings.Contains(out, "installed fleet-p384") || !strings.Contains(out, "installed fleet-rsa3072") {
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
	// A P-384 key signs with the default SHA-256 and with SHA-384 (found
	// by review: a scheme fixed to SHA-384 refused the default); RSA-3072
	// signs.
	digest384 := sha512.Sum384(msg)
	a.expect(t, 0, "attest", "sign", "fleet-p384", "--in", p("msg"), "--out", p("p384.sig"))
	a.expect(t, 0, "attest", "sign", "fleet-p384", "--in", p("msg"), "--hash", "sha384", "--out", p("p384-384.sig"))
	if sig, _ := os.ReadFile(p("p384.sig")); !ecdsa.VerifyASN1(&p384.PublicKey, digest[:], sig) {
		t.Fatal("the P-384 key's SHA-256 signature does not verify")
	}
	if sig, _ := os.ReadFile(p("p384-384.sig")); !ecdsa.VerifyASN1(&p384.PublicKey, digest384[:], sig) {
		t.Fatal("the P-384 key's SHA-384 signature does not verify")
	}
	a.expect(t, 0, "attest", "sign", "fleet-rsa3072", "--in", p("msg"), "--out", p("rsa3072.sig"))
	if sig, _ := os.ReadFile(p("rsa3072.sig")); rsa.VerifyPKCS1v15(&rsa3072.PublicKey, crypto.SHA256, digest[:], sig) != nil {
		t.Fatal("the RSA-3072 key's signature does not verify")
	}
	a.expect(t, api.ExitNotPermitted, "attest", "secret", "fleet-ec")
	a.expect(t, api.ExitNotFound, "attest", "sign", "nosuch", "--in", p("msg"))

	// Root on the device, with the PCRs as they passed: the delivered key
	// on the wire, imported under the EK, then TPM2_Unseal, TPM2_Duplicate
	// and TPM2_Sign through sessions that satisfy its PCRs and name each
	// command but lack provd's AK: the TPM refuses every one.
	v := fetchOnWire(t, e, a, 4)
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

	// One delivery the TPM refuses keeps none of the others out (found by
	// review): the first one's wrapper changed on the way, the others
	// install, and the refused one is named.
	v.Deliveries[0].Duplicate[len(v.Deliveries[0].Duplicate)-1] ^= 1
	a.swtpm.Reopen()
	ag, err := agent.New(agent.Config{TPM: a.swtpm.TPM, StateDir: a.dir})
	if err != nil {
		t.Fatal(err)
	}
	res, err := ag.AttestInstall(context.Background(), api.AttestInstallRequest{Deliveries: v.Deliveries})
	ag.Close()
	a.swtpm.CloseTPM()
	if err != nil || len(res.Installed) != len(v.Deliveries)-1 || res.Failed["#1 "+strconv.Quote(v.Deliveries[0].Name)] == "" {
		t.Fatalf("install with one bad delivery: %+v %v", res, err)
	}
	// The operator removes a key: no device gets it from now on.
	a.expect(t, 0, append([]string{"fleet", "secret", "delete", "--class", "gateway", "--name", "fleet-rsa3072"}, op...)...)
	a.expect(t, api.ExitNotFound, append([]string{"fleet", "secret", "delete", "--class", "gateway", "--name", "fleet-rsa3072"}, op...)...)
	fetchOnWire(t, e, a, 3)

	a.expect(t, 0, "tpm", "pcr", "extend", "7", "--data", "changed")
	a.expect(t, api.ExitPolicy, "attest", "sign", "fleet-ec", "--in", p("msg"))
}

// unbalancedRSA is a valid RSA-2048 key (Go validates it) whose primes are
// 1000 and 1048 bits: the endpoint sends Primes[0] (1000 bits, 125 bytes)
// as the TPM sensitive, which a TPM refuses for a 2048-bit modulus.
func unbalancedRSA(t *testing.T) *rsa.PrivateKey {
	for {
		p, _ := rand.Prime(rand.Reader, 1000)
		q, _ := rand.Prime(rand.Reader, 1048)
		n := new(big.Int).Mul(p, q)
		if n.BitLen() != 2048 {
			continue
		}
		phi := new(big.Int).Mul(new(big.Int).Sub(p, big.NewInt(1)), new(big.Int).Sub(q, big.NewInt(1)))
		d := new(big.Int).ModInverse(big.NewInt(65537), phi)
		if d == nil {
			continue
		}
		k := &rsa.PrivateKey{PublicKey: rsa.PublicKey{N: n, E: 65537}, D: d, Primes: []*big.Int{p, q}}
		k.Precompute()
		if err := k.Validate(); err != nil {
			t.Fatal(err)
		}
		return k
	}
}
