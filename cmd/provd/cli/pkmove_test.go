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
	"github.com/provd/provd/test/swtpmtest"
)

// pkFleet is two devices of one fleet for a PK move: A and B on swtpms of
// their own, a policy signer and an officer (their files), each device's EK
// CA and both together, and B provisioned with a signed policy, its peer
// identity challenged by A and proven (proven: the flags that say so).
type pkFleet struct {
	envA, envB           *swtpmtest.Env
	a, b                 device
	dir                  string
	signerKey, signerPub string
	officerKey           string
	officerPub           string
	caA, caB, caAB       string
	stB                  pkStatus
	proven               []string
}

// pkStatus is what a PK move's test reads of provd status -o json.
type pkStatus struct {
	PKName       string `json:"pk_name"`
	PolicyDigest string `json:"policy_digest"`
	Movable      string `json:"movable"`
	Counter      uint64 `json:"policy_counter"`
}

func newPKFleet(t *testing.T) *pkFleet {
	t.Helper()
	envA, envB, a, b, dir := twoDevices(t)
	f := &pkFleet{envA: envA, envB: envB, a: a, b: b, dir: dir}
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sder, _ := x509.MarshalPKCS8PrivateKey(signer)
	pder, _ := x509.MarshalPKIXPublicKey(signer.Public())
	f.signerKey = f.write(t, "signer.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: sder}))
	f.signerPub = f.write(t, "signer.pub.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pder}))
	f.officerKey, f.officerPub = officertest.Files(t, dir)
	f.caA, f.caB = ekCAFile(t, envA), ekCAFile(t, envB)
	ca, _ := os.ReadFile(f.caA)
	cb, _ := os.ReadFile(f.caB)
	f.caAB = f.write(t, "ek-ca-ab.pem", append(ca, cb...))
	f.stB = f.provision(t, b, "b", "--ek-ca", f.caB)
	b(0, "peer", "identity", "--out", f.p("b.peer.json"))
	a(0, "peer", "challenge", "--to", f.p("b.peer.json"), "--ek-ca", f.caB, "--out", f.p("b.challenge.json"))
	b(0, "peer", "prove", "--challenge", f.p("b.challenge.json"), "--out", f.p("b.proof.json"))
	f.proven = []string{"--challenge", f.p("b.challenge.json"), "--proof", f.p("b.proof.json")}
	return f
}

// p is a path in the fleet's directory.
func (f *pkFleet) p(name string) string { return filepath.Join(f.dir, name) }

// write writes data to the fleet's file name and returns its path.
func (f *pkFleet) write(t *testing.T, name string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(f.p(name), data, 0o600); err != nil {
		t.Fatal(err)
	}
	return f.p(name)
}

// provision provisions dev for the fleet (the signer's policy for its
// PCR 7 as it is now installed) with args, and returns its status.
func (f *pkFleet) provision(t *testing.T, dev device, name string, args ...string) pkStatus {
	t.Helper()
	var st pkStatus
	out := dev(0, append([]string{"provision", "--policy-signer", f.signerPub, "--officer-key", f.officerPub, "-o", "json"}, args...)...)
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	golden := f.write(t, name+".golden.json", []byte(dev(0, "tpm", "pcr", "read", "--pcrs", "7", "-o", "json")))
	dev(0, "policy", "sign", "--signer", f.signerKey, "--pcr-values", golden, "--version", fmt.Sprint(st.Counter), "--out", f.p(name+".policy.json"))
	dev(0, "policy", "install", f.p(name+".policy.json"))
	if err := json.Unmarshal([]byte(dev(0, "status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestPKMoveCLI moves a movable PK from A to B through the command tree:
// B, provisioned for the same fleet, publishes its peer identity; A is
// provisioned --duplicable-to it, derives a key and sends its PK with
// dup export --pk; B adopts it with provision --from and the officer's
// approval, and signs with the key A derived: openssl verifies the
// signature with A's public key.
func TestPKMoveCLI(t *testing.T) {
	f := newPKFleet(t)
	a, b, p := f.a, f.b, f.p
	signerPub, officerKey, officerPub := f.signerPub, f.officerKey, f.officerPub
	caA, caB, caAB, stB, proven := f.caA, f.caB, f.caAB, f.stB, f.proven
	fleet := func(dev device, name string, args ...string) pkStatus { return f.provision(t, dev, name, args...) }

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
	var now pkStatus
	if err := json.Unmarshal([]byte(b(0, "status", "-o", "json")), &now); err != nil || now.PKName != stA.PKName || now.Movable != stA.Movable {
		t.Fatalf("B after adoption: %+v (A: %+v) %v", now, stA, err)
	}
	f.write(t, "msg", []byte("signed on B"))
	b(0, "key", "sign", "dk", "--in", p("msg"), "--out", p("msg.sig"))
	out, err := exec.Command("openssl", "dgst", "-sha256", "-verify", p("dk.pub.pem"), "-signature", p("msg.sig"), p("msg")).CombinedOutput()
	if err != nil {
		t.Fatalf("B's signature with the key A derived does not verify with A's public key: %v\n%s", err, out)
	}
}
