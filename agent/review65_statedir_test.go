package agent_test

// Review 65: the state directory agent.New uses, after review 64's mend.

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// FLAW (failed before the mend): since review 64's mend, store.Open and store.HoldServeLock use a
// state path as the kernel resolves it ("lnk/../state" goes through lnk,
// then up), but agent.New still cleans the path as text first
// (filepath.Abs: "lnk/../state" is "state" beside lnk) and opens the store
// there; the daemon (provd serve: HoldServeLock(a.stateDir), then
// server.Run → agent.New(a.stateDir)) and provd fleet serve take the serve
// lock in the kernel's directory and serve the state in the cleaned one.
// Here lnk is root's link (every check passes): the serve lock is held in
// pub/real/state while the agent provisions pub/state, and a second
// server given the cleaned text takes the lock of the very state the first
// serves (the lock exists so that the daemon and fleet serve
// --authority-key never serve one state at once). The same split comes
// from a relative --state-dir "../state" run from a directory reached
// through a link (os.Getwd returns bash's $PWD, link kept). Attacker: no
// privilege needed beyond the split itself; a user who may create a name
// where the cleaned text lands (a sticky /tmp) squats it, and provd
// refuses a state path whose kernel directory is root's. Gain: the serve
// lock does not exclude a second server of the state; squatting denies
// service. Suggested fix: agent.New passes cfg.StateDir to store.Open
// unchanged (only made absolute as text, never cleaned) and takes a.dir
// from st.Dir(); the CLI's other state files (fleet's attest state,
// fwhook's, tpm.Open's sim directory) use the same resolved path.
func TestReview65ServeLockAndStateSplitByCleaning(t *testing.T) {
	base := t.TempDir()
	pub := filepath.Join(base, "pub")
	inner := filepath.Join(pub, "real", "inner")
	if err := os.MkdirAll(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real/inner", filepath.Join(pub, "lnk")); err != nil { // root's link
		t.Fatal(err)
	}
	raw := filepath.Join(pub, "lnk") + "/../state" // the kernel: pub/real/state
	kernels := filepath.Join(pub, "real", "state")
	release, err := store.HoldServeLock(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	env := swtpmtest.Start(t)
	ag := newAgent(t, env, raw)
	if _, err := ag.Provision(context.Background(), api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(kernels, store.ManifestFile)); err != nil {
		t.Errorf("the serve lock of %s is held in %s, but the agent's state is not there: %v", raw, kernels, err)
	}
	if fi, err := os.Stat(filepath.Join(pub, "state")); err == nil {
		t.Errorf("the agent made and used %s (%v), the text %s cleaned, which the kernel does not reach", filepath.Join(pub, "state"), fi.Mode(), raw)
		if rel, err := store.HoldServeLock(filepath.Join(pub, "state")); err == nil {
			rel()
			t.Errorf("a second server took the serve lock of the state the first serves")
		}
	}
}
