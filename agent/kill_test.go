package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// The kill test's child is this test binary again, selected by these
// variables: it provisions with --force in a loop until it is killed.
const (
	killChildEnv = "PROVD_AGENT_KILL_CHILD"
	killTPMEnv   = "PROVD_AGENT_KILL_TPM"
	killDirEnv   = "PROVD_AGENT_KILL_DIR"
)

// kill -9 at any moment of a provision --force through the in-process agent
// leaves a state that opens, a status that works, an audit trail that
// verifies (after the repair a crash between a line's fsync and its anchor
// calls for), and a TPM on which provision, seal and unseal work. The kill
// moments come from -provd.seed, which is logged so that a failure replays.
func TestKillDuringProvisionLeavesValidState(t *testing.T) {
	if os.Getenv(killChildEnv) != "" {
		provisionUntilKilled()
		return
	}
	env := swtpmtest.Start(t)
	env.RequireSimulator()
	env.CloseTPM() // the child connects; swtpm serves one client at a time
	dir := stateDir(t)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(swtpmtest.Seed(t), 1))
	const kills = 12
	provisioned, repairs, completed := 0, 0, 0
	for i := 1; i <= kills; i++ {
		completed += runAndKill(t, env.Spec, dir, time.Duration(50+rng.IntN(400))*time.Millisecond)

		env.Reopen()
		withAgent(t, env, dir, fmt.Sprintf("after kill %d", i), func(ag *agent.Agent) {
			st, err := ag.Status(ctx)
			if err != nil {
				t.Fatalf("after kill %d: status: %v", i, err)
			}
			if st.Provisioned {
				provisioned++
			}
			if st.AuditError != "" {
				// A crash between the log's fsync and the anchor extend,
				// or during the write: what audit repair exists for.
				repairs++
				if _, err := ag.AuditRepair(ctx, true); err != nil {
					t.Fatalf("after kill %d: audit repair: %v (status said: %s)", i, err, st.AuditError)
				}
			}
			if _, err := ag.AuditVerify(ctx); err != nil {
				t.Fatalf("after kill %d: audit verify: %v", i, err)
			}
		})
		env.CloseTPM()
	}
	t.Logf("%d kills: %d provisions completed in the children, %d kills left a provisioned state, %d needed an audit repair",
		kills, completed, provisioned, repairs)

	env.Reopen()
	withAgent(t, env, dir, "after the kills", func(ag *agent.Agent) {
		if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}, Force: true}); err != nil {
			t.Fatalf("provision after the kills: %v", err)
		}
		blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("after the storm")})
		if err != nil {
			t.Fatalf("seal: %v", err)
		}
		if got, err := ag.Unseal(ctx, blob); err != nil || string(got) != "after the storm" {
			t.Fatalf("unseal: %q, %v", got, err)
		}
		if _, err := ag.AuditVerify(ctx); err != nil {
			t.Fatalf("audit verify: %v", err)
		}
	})
}

// runAndKill starts the child on the TPM at spec and state dir, kills it with
// SIGKILL after d, and returns how many provisions it completed. A child
// that ends on its own failed: its error fails the test.
func runAndKill(t *testing.T, spec, dir string, d time.Duration) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKillDuringProvisionLeavesValidState$", "-test.count=1")
	cmd.Env = append(os.Environ(), killChildEnv+"=1", killTPMEnv+"="+spec, killDirEnv+"="+dir)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(d)
	_ = cmd.Process.Signal(syscall.SIGKILL)
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v before it was killed:\n%s", err, stderr.Bytes())
	}
	return bytes.Count(out.Bytes(), []byte("."))
}

// withAgent runs fn with an agent on env's TPM and dir, and closes it (its
// key cache is flushed before env's leak check). when says at which point of
// the test, for the failure message.
func withAgent(t *testing.T, env *swtpmtest.Env, dir, when string, fn func(*agent.Agent)) {
	t.Helper()
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: dir})
	if err != nil {
		t.Fatalf("%s: the state does not open: %v", when, err)
	}
	defer func() {
		if err := ag.Close(); err != nil {
			t.Errorf("close agent: %v", err)
		}
	}()
	fn(ag)
}

// provisionUntilKilled is the child: one TPM connection, one agent,
// provision --force forever, a dot on stdout after each one. An error ends
// it with exit status 2, which the parent reports.
func provisionUntilKilled() {
	ctx := context.Background()
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "kill-test child:", err)
		os.Exit(2)
	}
	tp, err := tpm.Open(ctx, tpm.Options{Spec: os.Getenv(killTPMEnv)})
	if err != nil {
		fail(err)
	}
	ag, err := agent.New(agent.Config{TPM: tp, StateDir: os.Getenv(killDirEnv)})
	if err != nil {
		fail(err)
	}
	for {
		if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}, Force: true}); err != nil {
			fail(err)
		}
		os.Stdout.WriteString(".")
	}
}
