package cli_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// TestDupCLI moves a key module to module through the command tree: B
// publishes its peer identity; A's officer approves the duplication of one
// key to B; A refuses a peer whose EK does not chain to the roots given
// (exit 15) and a key not born extractable (exit 5); B imports the
// duplicate, and its signature verifies with A's public key (openssl).
func TestDupCLI(t *testing.T) {
	envA, envB, a, b, dir := twoDevices(t)
	p := func(name string) string { return filepath.Join(dir, name) }
	caA, caB := ekCAFile(t, envA), ekCAFile(t, envB)
	officerKey, officerPub := officertest.Files(t, dir)
	a(0, "provision", "--pcrs", "7", "--ek-ca", caA, "--officer-key", officerPub)
	b(0, "provision", "--pcrs", "7", "--ek-ca", caB, "--officer-key", officerPub)
	b(0, "peer", "identity", "--out", p("b.peer.json"))
	// The officer proves B's transfer key resident before approving
	// anything to it: a challenge B's TPM alone answers.
	a(0, "peer", "challenge", "--to", p("b.peer.json"), "--ek-ca", caB, "--out", p("b.challenge.json"))
	a(api.ExitIdentity, "peer", "challenge", "--to", p("b.peer.json"), "--ek-ca", caA, "--out", p("x.json"))
	b(0, "peer", "prove", "--challenge", p("b.challenge.json"), "--out", p("b.proof.json"))
	a(api.ExitNotFound, "peer", "prove", "--challenge", p("b.challenge.json"), "--out", p("x.json")) // A has no transfer key
	proven := []string{"--challenge", p("b.challenge.json"), "--proof", p("b.proof.json")}
	// The PK name provisioning reported on B: what the fleet enrolled.
	var stB struct {
		PKName string `json:"pk_name"`
	}
	if err := json.Unmarshal([]byte(b(0, "status", "-o", "json")), &stB); err != nil || stB.PKName == "" {
		t.Fatalf("B's status: %+v %v", stB, err)
	}

	a(0, "key", "create", "signer", "--type", "ecc-p256", "--extractable")
	a(0, "key", "create", "fixed", "--type", "ecc-p256")
	var st struct {
		PolicyDigest string `json:"policy_digest"`
	}
	if err := json.Unmarshal([]byte(a(0, "status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	objName := func(key string) string {
		var pub struct {
			ObjectName string `json:"object_name"`
		}
		if err := json.Unmarshal([]byte(a(0, "key", "pub", key, "-o", "json")), &pub); err != nil {
			t.Fatal(err)
		}
		return pub.ObjectName
	}
	// A peer file that is not bound to the PK enrolled for B (here: A's)
	// is not approved.
	var stA struct {
		PKName string `json:"pk_name"`
	}
	if err := json.Unmarshal([]byte(a(0, "status", "-o", "json")), &stA); err != nil {
		t.Fatal(err)
	}
	a(api.ExitNotPermitted, "key", "approve", "--officer", officerKey, "--pk-policy", st.PolicyDigest, "--dup-to", p("b.peer.json"), "--peer-pk", stA.PKName, "--object-name", objName("signer"), "--out", p("x.json"))
	a(api.ExitUsage, "key", "approve", "--officer", officerKey, "--pk-policy", st.PolicyDigest, "--dup-to", p("b.peer.json"), "--object-name", objName("signer"), "--out", p("x.json"))
	// Not without the proof of residency.
	a(api.ExitUsage, "key", "approve", "--officer", officerKey, "--pk-policy", st.PolicyDigest, "--dup-to", p("b.peer.json"), "--peer-pk", stB.PKName, "--object-name", objName("signer"), "--out", p("x.json"))
	for _, k := range []string{"signer", "fixed"} {
		a(0, append([]string{"key", "approve", "--officer", officerKey, "--pk-policy", st.PolicyDigest, "--dup-to", p("b.peer.json"), "--peer-pk", stB.PKName, "--object-name", objName(k), "--out", p(k + ".dup-b.json")}, proven...)...)
	}
	// B's EK does not chain to A's manufacturer CA: nothing is wrapped.
	a(api.ExitIdentity, "dup", "export", "signer", "--to", p("b.peer.json"), "--approval", p("signer.dup-b.json"), "--ek-ca", caA, "--out", p("x.dup"))
	a(api.ExitNotPermitted, "dup", "export", "fixed", "--to", p("b.peer.json"), "--approval", p("fixed.dup-b.json"), "--ek-ca", caB, "--out", p("x.dup"))
	if _, err := os.Stat(p("x.dup")); err == nil {
		t.Fatal("a refused duplication wrote a file")
	}
	a(0, "dup", "export", "signer", "--to", p("b.peer.json"), "--approval", p("signer.dup-b.json"), "--ek-ca", caB, "--out", p("signer.dup"))
	// A duplicate is not a peer identity, nor the other way round.
	b(api.ExitUsage, "dup", "import", "signer", "--in", p("b.peer.json"))
	b(0, "dup", "import", "signer", "--in", p("signer.dup"))

	a(0, "key", "pub", "signer", "--out", p("signer.pub.pem"))
	if err := os.WriteFile(p("msg"), []byte("signed on B"), 0o600); err != nil {
		t.Fatal(err)
	}
	b(0, "key", "sign", "signer", "--in", p("msg"), "--out", p("msg.sig"))
	out, err := exec.Command("openssl", "dgst", "-sha256", "-verify", p("signer.pub.pem"), "-signature", p("msg.sig"), p("msg")).CombinedOutput()
	if err != nil {
		t.Fatalf("B's signature with the moved key does not verify with A's public key: %v\n%s", err, out)
	}
	if list := b(0, "key", "list", "-o", "json"); !strings.Contains(list, `"kind": "transferred"`) {
		t.Fatalf("key list on B:\n%s", list)
	}
	// Bound to B at birth: no approval, and never a backup.
	a(api.ExitIdentity, append([]string{"key", "create", "bound", "--type", "ecc-p256", "--duplicable-to", p("b.peer.json"), "--peer-pk", stB.PKName, "--ek-ca", caA}, proven...)...)
	a(0, append([]string{"key", "create", "bound", "--type", "ecc-p256", "--duplicable-to", p("b.peer.json"), "--peer-pk", stB.PKName, "--ek-ca", caB}, proven...)...)
	a(0, "dup", "export", "bound", "--to", p("b.peer.json"), "--ek-ca", caB, "--out", p("bound.dup"))
	b(api.ExitNotPermitted, "dup", "import", "bound", "--in", p("bound.dup"))
	a(0, append([]string{"key", "approve", "--officer", officerKey, "--pk-policy", st.PolicyDigest, "--dup-to", p("b.peer.json"), "--peer-pk", stB.PKName, "--object-name", objName("bound"), "--out", p("bound.take.json")}, proven...)...)
	b(0, "dup", "import", "bound", "--in", p("bound.dup"), "--approval", p("bound.take.json"))
}

// device runs provd on one swtpm and state: want is the exit code the call
// must end with, and it returns stdout.
type device func(want int, args ...string) string

// twoDevices starts two swtpms (the CLI takes each one's connection) and
// returns them with a provd on each, states under dir.
func twoDevices(t *testing.T) (envA, envB *swtpmtest.Env, a, b device, dir string) {
	t.Helper()
	envA, envB = swtpmtest.Start(t), swtpmtest.Start(t)
	envA.CloseTPM()
	envB.CloseTPM()
	dir = t.TempDir()
	return envA, envB, deviceOn(t, envA, filepath.Join(dir, "a")), deviceOn(t, envB, filepath.Join(dir, "b")), dir
}

// provisionedDevice is provd on a swtpm of its own (its connection the
// CLI's), provisioned to PCR 7 with the EK chain verified, its state in
// state.
func provisionedDevice(t *testing.T) (env *swtpmtest.Env, state string, d device) {
	t.Helper()
	env = swtpmtest.Start(t)
	env.CloseTPM()
	state = filepath.Join(t.TempDir(), "state")
	d = deviceOn(t, env, state)
	d(0, "provision", "--pcrs", "7", "--ek-ca", ekCAFile(t, env))
	return env, state, d
}

// deviceOn is provd on env's swtpm (whose connection the CLI takes: close
// the test's first) with its state in state.
func deviceOn(t *testing.T, env *swtpmtest.Env, state string) device {
	return func(want int, args ...string) string {
		t.Helper()
		out, stderr, code := run(t, nil, append([]string{"--tpm", env.Spec, "--state-dir", state}, args...)...)
		if code != want {
			t.Fatalf("provd %s: exit %d, want %d\n%s%s", strings.Join(args, " "), code, want, out, stderr)
		}
		return out
	}
}
