package cli_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
)

// TestPKMoveCLI moves a movable PK from A to B through the command tree:
// B, provisioned for the same fleet, publishes its peer identity; A is
// provisioned --duplicable-to it, derives a key and sends its PK with
// dup export --pk; B adopts it with provision --from and the officer's
// approval, and signs with the key A derived: openssl verifies the
// signature with A's public key.
func TestPKMoveCLI(t *testing.T) {
	envA, envB, a, b, dir := twoDevices(t)
	p := func(name string) string { return filepath.Join(dir, name) }
	write := func(name string, data []byte) string {
		if err := os.WriteFile(p(name), data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p(name)
	}
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sder, _ := x509.MarshalPKCS8PrivateKey(signer)
	pder, _ := x509.MarshalPKIXPublicKey(signer.Public())
	signerKey := write("signer.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: sder}))
	signerPub := write("signer.pub.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pder}))
	officerKey, officerPub := officertest.Files(t, dir)
	caA, caB := ekCAFile(t, envA), ekCAFile(t, envB)
	ca, _ := os.ReadFile(caA)
	cb, _ := os.ReadFile(caB)
	caAB := write("ek-ca-ab.pem", append(ca, cb...))

	type status struct {
		PKName       string `json:"pk_name"`
		PolicyDigest string `json:"policy_digest"`
		Movable      string `json:"movable"`
		Counter      uint64 `json:"policy_counter"`
	}
	fleet := func(dev device, name string, args ...string) status {
		var st status
		out := dev(0, append([]string{"provision", "--policy-signer", signerPub, "--officer-key", officerPub, "-o", "json"}, args...)...)
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatal(err)
		}
		golden := write(name+".golden.json", []byte(dev(0, "tpm", "pcr", "read", "--pcrs", "7", "-o", "json")))
		dev(0, "policy", "sign", "--signer", signerKey, "--pcr-values", golden, "--version", fmt.Sprint(st.Counter), "--out", p(name+".policy.json"))
		dev(0, "policy", "install", p(name+".policy.json"))
		if err := json.Unmarshal([]byte(dev(0, "status", "-o", "json")), &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	stB := fleet(b, "b", "--ek-ca", caB)
	b(0, "peer", "identity", "--out", p("b.peer.json"))
	a(0, "peer", "challenge", "--to", p("b.peer.json"), "--ek-ca", caB, "--out", p("b.challenge.json"))
	b(0, "peer", "prove", "--challenge", p("b.challenge.json"), "--out", p("b.proof.json"))
	proven := []string{"--challenge", p("b.challenge.json"), "--proof", p("b.proof.json")}

	// Movable only with a signed policy, and bound to an enrolled peer.
	a(api.ExitNotPermitted, append([]string{"provision", "--pcrs", "7", "--ek-ca", caA, "--officer-key", officerPub, "--duplicable-to", p("b.peer.json"), "--peer-pk", stB.PKName}, proven...)...)
	a(api.ExitUsage, "provision", "--policy-signer", signerPub, "--officer-key", officerPub, "--ek-ca", caAB, "--duplicable-to", p("b.peer.json"))
	a(api.ExitUsage, "provision", "--policy-signer", signerPub, "--officer-key", officerPub, "--ek-ca", caAB, "--duplicable-to", p("b.peer.json"), "--peer-pk", stB.PKName)
	stA := fleet(a, "a", append([]string{"--ek-ca", caAB, "--force", "--duplicable-to", p("b.peer.json"), "--peer-pk", stB.PKName}, proven...)...)
	if !strings.HasPrefix(stA.Movable, "to ") {
		t.Fatalf("A's status: %+v", stA)
	}
	a(0, "key", "approve", "--officer", officerKey, "--pk-policy", stA.PolicyDigest, "--movable", "--type", "ecc-p256", "--label", "telemetry", "--out", p("dk.approval.json"))
	a(0, "key", "derive", "dk", "--type", "ecc-p256", "--label", "telemetry", "--approval", p("dk.approval.json"))
	a(0, "key", "pub", "dk", "--out", p("dk.pub.pem"))

	a(api.ExitUsage, "dup", "export", "dk", "--pk", "--to", p("b.peer.json"), "--peer-pk", stB.PKName, "--ek-ca", caB, "--out", p("pk.dup"))
	a(api.ExitIdentity, "dup", "export", "--pk", "--to", p("b.peer.json"), "--peer-pk", stB.PKName, "--ek-ca", caA, "--out", p("pk.dup"))
	a(0, "dup", "export", "--pk", "--to", p("b.peer.json"), "--peer-pk", stB.PKName, "--ek-ca", caB, "--out", p("pk.dup"))
	a(0, append([]string{"key", "approve", "--officer", officerKey, "--pk-policy", stA.PolicyDigest, "--dup-to", p("b.peer.json"), "--peer-pk", stB.PKName,
		"--object-name", stA.PKName, "--out", p("pk.take.json")}, proven...)...)

	b(api.ExitNotPermitted, "provision", "--from", p("pk.dup"), "--force")
	b(api.ExitUsage, "provision", "--from", p("pk.dup"), "--approval", p("pk.take.json"), "--force", "--pcrs", "7")
	b(api.ExitCode(api.ErrAlreadyProvisioned), "provision", "--from", p("pk.dup"), "--approval", p("pk.take.json"))
	b(0, "provision", "--from", p("pk.dup"), "--approval", p("pk.take.json"), "--force")
	var now status
	if err := json.Unmarshal([]byte(b(0, "status", "-o", "json")), &now); err != nil || now.PKName != stA.PKName || now.Movable != stA.Movable {
		t.Fatalf("B after adoption: %+v (A: %+v) %v", now, stA, err)
	}
	write("msg", []byte("signed on B"))
	b(0, "key", "sign", "dk", "--in", p("msg"), "--out", p("msg.sig"))
	out, err := exec.Command("openssl", "dgst", "-sha256", "-verify", p("dk.pub.pem"), "-signature", p("msg.sig"), p("msg")).CombinedOutput()
	if err != nil {
		t.Fatalf("B's signature with the key A derived does not verify with A's public key: %v\n%s", err, out)
	}
}
