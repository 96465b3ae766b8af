package cli_test

// Review 66: the CLI's own uses of the state directory's path after review
// 65 moved agent.New onto the path the store resolves.

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// FLAW (failed before the mend): review 65's mend made agent.New open the store with the state path
// as given and keep its files in st.Dir(), the kernel's directory; but the
// CLI still cleans the text itself in several places and hands the result
// on: readPCRs (provd tpm pcr read) runs filepath.Abs(--state-dir), stats
// it, and calls agent.New with the cleaned text; fw verify/fw log/fw pubkey
// set put measurements.log and fw-commit.auth in filepath.Abs's directory
// (fwStateDir even os.MkdirAll's it, unwalked, as root); attest keeps
// attest.json and reads measurements.log at filepath.Join(--state-dir, ...)
// (Join cleans too); fleet serve keeps its db, tokens and TLS key in
// Abs(Join(state, "fleet")) while its serve lock is in the kernel's
// directory. For a --state-dir of "lnk/../state" (or a relative one run
// from a directory reached through a link), every one of these works in
// another directory than the daemon and provision. Here a state
// provisioned at pub/lnk/../state (lnk root's link, every check passes) is
// not found by pcr read: with -o json it refuses, exit 15, "no TPM
// identity is pinned"; without, it prints the bus's unauthenticated values.
// Attacker: none needed for the breakage; a user who may create the
// cleaned name (a sticky /tmp, a shared parent) decides what pcr read,
// fw verify and attest read there (their own measurements.log, attest.json
// naming their endpoint). Gain: authenticated PCR reads fall back to the
// bus's word; the boot hook's log and the attestation state split from
// the state they belong to. Suggested fix: resolve the state path once in
// the CLI (trustedpath.Walk or store.Open's Dir) and build every state
// file from that, never from filepath.Abs/Join of the text.
func TestReview66PCRReadCleansTheStatePath(t *testing.T) {
	base := t.TempDir()
	pub := filepath.Join(base, "pub")
	if err := os.MkdirAll(filepath.Join(pub, "real", "inner"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real/inner", filepath.Join(pub, "lnk")); err != nil { // root's link
		t.Fatal(err)
	}
	raw := filepath.Join(pub, "lnk") + "/../state" // the kernel: pub/real/state
	env := swtpmtest.Start(t)
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: raw})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ag.Provision(context.Background(), api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	ag.Close()
	env.CloseTPM()
	out, stderr, code := run(t, nil, "--tpm", env.Spec, "--state-dir", raw, "tpm", "pcr", "read", "--pcrs", "7", "-o", "json")
	if code != 0 {
		t.Errorf("pcr read of the state provisioned at %s: exit %d (want an authenticated read)\n%s%s", raw, code, out, stderr)
	}
	if _, err := os.Stat(filepath.Join(pub, "state")); err == nil {
		t.Errorf("pcr read made or used %s, the cleaned text, which the kernel does not reach", filepath.Join(pub, "state"))
	}
}
