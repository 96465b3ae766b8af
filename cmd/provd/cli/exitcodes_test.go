package cli_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/cmd/provd/cli"
	"github.com/provd/provd/store"
)

// walkedElsewhere are the documented exit codes no CLI command can draw from
// a healthy swtpm, and the tests that show their cause maps to them.
var walkedElsewhere = map[int]string{
	api.ExitLockout: "provd's objects are all noDA and import refuses others, so no provd command meets TPM_RC_LOCKOUT " +
		"(agent.TestProvdNeverCountsTowardLockout); the kind: tpm.TestBadAuthAndLockoutAreTyped; its exit code: api.TestExitCodeOfSentinels",
	api.ExitTPMFailure: "swtpm does not enter failure mode on request: tpm.TestFailureModeIsTyped answers as one; the kind's exit code: api.TestExitCodeOfSentinels",
	api.ExitTPMResources: "a CLI command flushes what a dead client left before it starts (tpm.TestOpenFlushesStaleHandles " +
		"fills the slots); the daemon's full queue: server.TestQueueDeadlineAndLimit",
	api.ExitBadAuth:      "provd's authorization values come from its state, never from a user: tpm.TestBadAuthAndLockoutAreTyped",
	api.ExitFWDigest:     "drawn by fw verify on its own swtpm and boots: TestFWBootCLI",
	api.ExitFWMissing:    "drawn by fw verify on its own swtpm and boots: TestFWBootCLI",
	api.ExitFWRollback:   "drawn by fw verify on its own swtpm and boots: TestFWBootCLI",
	api.ExitFWNoAnchor:   "drawn by fw verify on its own swtpm and boots: TestFWBootCLI",
	api.ExitFWAnchor:     "drawn by fw verify and fw anchor show after another process replaced the anchor: TestFWBootCLI",
	api.ExitAttestFailed: "drawn by attest now against a fleet endpoint: TestFleetEndToEnd",
}

// Every documented exit code, drawn through the real command tree against a
// swtpm, in the order a user meets them; the codes no command can draw from
// a healthy swtpm are named in walkedElsewhere with the test that covers
// their cause. A code added to the table without either fails here.
func TestEveryExitCode(t *testing.T) {
	c := newCLIEnv(t)
	tmp := t.TempDir()
	secret := filepath.Join(tmp, "secret")
	sealed := filepath.Join(tmp, "sealed")
	if err := os.WriteFile(secret, []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	walked := map[int]bool{}
	expect := func(code int, args ...string) {
		t.Helper()
		_, stderr, got := c.run(args...)
		if got != code {
			t.Fatalf("provd %s: exit %d, want %d: %s", strings.Join(args, " "), got, code, stderr)
		}
		walked[code] = true
	}
	expect(api.ExitNotProvisioned, "seal", "--in", secret, "--out", sealed)
	// A key asked for before provisioning: no state holds one yet, which
	// is the answer that helps (it was "not found", exit 7).
	expect(api.ExitNotProvisioned, "key", "pub", "k")
	expect(api.ExitNotProvisioned, "key", "sign", "k", "--digest", strings.Repeat("00", 32))
	expect(api.ExitIdentity, "provision", "--pcrs", "7,16", "--allow-resettable") // no --ek-ca, no --trust-on-first-use
	expect(api.ExitOK, "provision", "--pcrs", "7,16", "--allow-resettable", "--trust-on-first-use")
	expect(api.ExitConflict, "provision", "--pcrs", "7,16", "--allow-resettable", "--trust-on-first-use")
	expect(api.ExitUsage, "key", "pub") // no name
	expect(api.ExitNotPermitted, "key", "create", "k", "--type", "rsa-1024")
	expect(api.ExitNotFound, "key", "pub", "nope")
	cust := newCustodians(t, 2, 16)
	expect(api.ExitKCV, append([]string{"kek", "import", "k", "--components", "2", "--kcv", "000000"}, cust.fds(t, nil)...)...)
	expect(api.ExitOK, "seal", "--in", secret, "--out", sealed)
	expect(api.ExitUsage, "seal", "--in", secret, "--out", filepath.Join(tmp, "nosuch", "sealed")) // exited 1
	expect(api.ExitOK, "tpm", "pcr", "extend", "16", "--data", "x")
	expect(api.ExitPolicy, "unseal", "--in", sealed, "--out", "-")
	expect(api.ExitUsage, "unseal", "--in", filepath.Join(tmp, "nosuch"), "--out", "-")
	expect(api.ExitError, "--tpm", "tcp:foo", "tpm", "info") // a TPM spec provd does not know

	// The audit trail, one byte changed.
	log := filepath.Join(c.dir, "audit.log")
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(log, bytes.Replace(b, []byte(`"ok"`), []byte(`"OK"`), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	expect(api.ExitTampered, "audit", "verify")
	if err := os.WriteFile(log, b, 0o600); err != nil {
		t.Fatal(err)
	}
	// A firmware manifest changed after signing.
	expect(api.ExitFWSignature, "fw", "manifest", "show", changedManifest(t, tmp))
	// The state, broken.
	if err := os.WriteFile(filepath.Join(c.dir, store.ManifestFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	expect(api.ExitState, "status")

	expect(api.ExitNoTPM, "--tpm", "swtpm://127.0.0.1:1", "tpm", "info")
	// SIGINT or SIGTERM: the command's context is canceled.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errb bytes.Buffer
	if got := cli.Main(ctx, []string{"--tpm", c.swtpm.Spec, "--state-dir", t.TempDir(), "tpm", "info"}, cli.Deps{
		Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" },
	}); got != api.ExitInterrupted {
		t.Fatalf("interrupted: exit %d, want %d: %s", got, api.ExitInterrupted, errb.String())
	}
	walked[api.ExitInterrupted] = true

	for _, e := range api.ExitCodes() {
		if !walked[e.Code] && walkedElsewhere[e.Code] == "" {
			t.Errorf("exit %d (%s) is documented but neither drawn here nor named in walkedElsewhere", e.Code, e.Name)
		}
		if walked[e.Code] && walkedElsewhere[e.Code] != "" {
			t.Errorf("exit %d (%s) is drawn here: take it out of walkedElsewhere", e.Code, e.Name)
		}
	}
}
