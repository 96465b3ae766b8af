package cli_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/agent/tpmkey"
	"github.com/provd/provd/api"
	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/test/officertest"
)

// authorityHost is the endpoint's host: a provd of its own with a
// non-extractable P-256 key, the fleet's duplication authority, used in
// process as fleet serve --authority-key uses it.
func authorityHost(t *testing.T) *tpmkey.Key {
	t.Helper()
	h := newCLIEnv(t)
	h.must("provision", "--ek-ca", ekCAFile(t, h.swtpm))
	h.must("key", "create", "fleet-authority", "--type", "ecc-p256")
	h.swtpm.Reopen()
	t.Cleanup(h.swtpm.CloseTPM)
	ag, err := agent.New(agent.Config{TPM: h.swtpm.TPM, StateDir: h.dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ag.Close() })
	k, err := tpmkey.New(context.Background(), ag, "fleet-authority")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestFleetAuthority: the endpoint as the transfer's duplication
// authority, end to end on three swtpms. B enrolls and registers its
// transfer key (attest peer: the peer file in the quote, the residency
// credential activated by B's TPM), refused while its class has only a
// trust-on-first-use baseline; A creates a key --duplicable-by the
// endpoint's authority key (fleet authority); the operator has the
// endpoint approve that key to B (fleet approve), and A's TPM duplicates
// it with that approval; B imports it with its own officer's approval and
// signs with A's public key. The endpoint refuses an approval without an
// operator token, for a device that registered nothing, for a bad name,
// and once B's last attestation failed.
func TestFleetAuthority(t *testing.T) {
	authority := authorityHost(t)
	a, b := newCLIEnv(t), newCLIEnv(t)
	e := startEndpointWith(t, "sqlite://"+filepath.Join(t.TempDir(), "fleet.db"), func(c *fleet.Config) { c.Authority = authority }, a.swtpm, b.swtpm)
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	caB := ekCAFile(t, b.swtpm)
	officerKey, officerPub := officertest.Files(t, dir)
	a.expect(t, 0, "provision", "--pcrs", "7", "--ek-ca", ekCAFile(t, a.swtpm), "--officer-key", officerPub)
	b.expect(t, 0, "provision", "--pcrs", "7", "--ek-ca", caB, "--officer-key", officerPub)
	b.expect(t, 0, "attest", "enroll", "--endpoint", e.srv.URL, "--ca-cert", e.ca, "--class", "gateway")
	idB := deviceID(t, b)
	tokenFile := p("token")
	if err := os.WriteFile(tokenFile, []byte(e.token), 0o600); err != nil {
		t.Fatal(err)
	}
	op := []string{"--endpoint", e.srv.URL, "--ca-cert", e.ca, "--token-file", tokenFile}

	// Under a trust-on-first-use baseline the endpoint takes no transfer
	// key: whichever device attested first set the golden values.
	if _, stderr, code := b.run("attest", "peer", "--ca-cert", e.ca); code != api.ExitNotPermitted || !strings.Contains(stderr, "trust-on-first-use") {
		t.Fatalf("attest peer under a baseline: exit %d\n%s", code, stderr)
	}
	golden := p("golden.json")
	if err := os.WriteFile(golden, []byte(b.expect(t, 0, "tpm", "pcr", "read", "--pcrs", "0,1,2,3,4,5,6,7,12", "-o", "json")), 0o600); err != nil {
		t.Fatal(err)
	}
	// Golden values alone register nothing: the class must name the PK
	// policy its devices may register (the approval is signed over it).
	b.expect(t, 0, append([]string{"fleet", "policy", "set", "--class", "gateway", "--pcr-values", golden}, op...)...)
	if _, stderr, code := b.run("attest", "peer", "--ca-cert", e.ca); code != api.ExitNotPermitted || !strings.Contains(stderr, "names no PK policy") {
		t.Fatalf("attest peer without a PK policy: exit %d\n%s", code, stderr)
	}
	var pol struct {
		PolicyDigest string `json:"policy_digest"`
	}
	if err := json.Unmarshal([]byte(b.expect(t, 0, "status", "-o", "json")), &pol); err != nil {
		t.Fatal(err)
	}
	b.expect(t, 0, append([]string{"fleet", "policy", "set", "--class", "gateway", "--pcr-values", golden, "--pk-policy", pol.PolicyDigest}, op...)...)
	// New golden values keep the PK policy; PolicyAuthValue's digest, which
	// checks no platform state, is refused (found by review).
	b.expect(t, 0, append([]string{"fleet", "policy", "set", "--class", "gateway", "--pcr-values", golden}, op...)...)
	if out := b.expect(t, 0, append([]string{"fleet", "policy", "show", "--class", "gateway", "-o", "json"}, op...)...); !strings.Contains(out, pol.PolicyDigest) {
		t.Fatalf("the PK policy was dropped:\n%s", out)
	}
	b.expect(t, api.ExitNotPermitted, append([]string{"fleet", "policy", "set", "--class", "gateway", "--pcr-values", golden,
		"--pk-policy", "8fcd2169ab92694e0c633f1ab772842b8241bbc20288981fc7ac1eddc1fddb0e"}, op...)...)
	if out := b.expect(t, 0, "attest", "peer", "--ca-cert", e.ca); !strings.Contains(out, "registered transfer key") {
		t.Fatalf("attest peer:\n%s", out)
	}
	var stB struct {
		PKName string `json:"pk_name"`
	}
	if err := json.Unmarshal([]byte(b.expect(t, 0, "status", "-o", "json")), &stB); err != nil {
		t.Fatal(err)
	}

	// A's key, movable only where the endpoint approves.
	a.expect(t, 0, "fleet", "authority", "--endpoint", e.srv.URL, "--ca-cert", e.ca, "--out", p("authority.pem"))
	a.expect(t, 0, "key", "create", "moving", "--type", "ecc-p256", "--extractable", "--duplicable-by", p("authority.pem"))
	var pub struct {
		ObjectName string `json:"object_name"`
	}
	if err := json.Unmarshal([]byte(a.expect(t, 0, "key", "pub", "moving", "-o", "json")), &pub); err != nil {
		t.Fatal(err)
	}

	// Refusals: no token, no registration, a bad name.
	if _, err := e.client(t, "").ApproveDuplication(context.Background(), idB, fleetapi.DupApprovalRequest{ObjectName: pub.ObjectName}); !isStatus(err, http.StatusUnauthorized) {
		t.Fatalf("an approval without an operator token: %v", err)
	}
	a.expect(t, api.ExitNotFound, append([]string{"fleet", "approve", strings.Repeat("ab", 32), "--object-name", pub.ObjectName, "--out", p("x.json"), "--peer-out", p("x.peer.json")}, op...)...)
	a.expect(t, api.ExitNotPermitted, append([]string{"fleet", "approve", idB, "--object-name", "000b00", "--out", p("x.json"), "--peer-out", p("x.peer.json")}, op...)...)
	if _, err := os.Stat(p("x.json")); err == nil {
		t.Fatal("a refused approval wrote a file")
	}

	out := a.expect(t, 0, append([]string{"fleet", "approve", idB, "--object-name", pub.ObjectName, "--out", p("approval.json"), "--peer-out", p("b.peer.json"), "-o", "json"}, op...)...)
	var res struct {
		PKName string `json:"pk_name"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.PKName != stB.PKName {
		t.Fatalf("fleet approve: %s (B's PK %s)", out, stB.PKName)
	}
	a.expect(t, 0, "dup", "export", "moving", "--to", p("b.peer.json"), "--approval", p("approval.json"), "--ek-ca", caB, "--out", p("moving.dup"))

	// B takes it with its own officer's approval, which needs B's
	// transfer key proven to the officer as ever.
	a.expect(t, 0, "peer", "challenge", "--to", p("b.peer.json"), "--ek-ca", caB, "--out", p("b.challenge.json"))
	b.expect(t, 0, "peer", "prove", "--challenge", p("b.challenge.json"), "--out", p("b.proof.json"))
	var stA struct {
		PolicyDigest string `json:"policy_digest"`
	}
	if err := json.Unmarshal([]byte(a.expect(t, 0, "status", "-o", "json")), &stA); err != nil {
		t.Fatal(err)
	}
	a.expect(t, 0, "key", "approve", "--officer", officerKey, "--pk-policy", stA.PolicyDigest, "--dup-to", p("b.peer.json"), "--peer-pk", stB.PKName,
		"--object-name", pub.ObjectName, "--challenge", p("b.challenge.json"), "--proof", p("b.proof.json"), "--out", p("take.json"))
	b.expect(t, 0, "dup", "import", "moving", "--in", p("moving.dup"), "--approval", p("take.json"))
	a.expect(t, 0, "key", "pub", "moving", "--out", p("moving.pub.pem"))
	if err := os.WriteFile(p("msg"), []byte("signed on B"), 0o600); err != nil {
		t.Fatal(err)
	}
	b.expect(t, 0, "key", "sign", "moving", "--in", p("msg"), "--out", p("msg.sig"))
	if out, err := exec.Command("openssl", "dgst", "-sha256", "-verify", p("moving.pub.pem"), "-signature", p("msg.sig"), p("msg")).CombinedOutput(); err != nil {
		t.Fatalf("B's signature with the moved key does not verify with A's public key: %v\n%s", err, out)
	}

	// Once B's last attestation fails, the endpoint approves nothing to it.
	b.expect(t, 0, "tpm", "pcr", "extend", "7", "--data", "tampered")
	b.expect(t, api.ExitAttestFailed, "attest", "now", "--ca-cert", e.ca)
	if _, stderr, code := a.run(append([]string{"fleet", "approve", idB, "--object-name", pub.ObjectName, "--out", p("y.json"), "--peer-out", p("y.peer.json")}, op...)...); code != api.ExitNotPermitted || !strings.Contains(stderr, "did not pass") {
		t.Fatalf("an approval after a failed attestation: exit %d\n%s", code, stderr)
	}
}

func isStatus(err error, status int) bool {
	var ae *fleetapi.APIError
	return errors.As(err, &ae) && ae.Status == status
}
