package agent

// Review 31: the firmware hook's one-shot commands after zeroize --srk.
//
// FLAW (failed before the mend): TestReview31FirmwareAnchorSetPutsTheEvictedSRKBack.
// After a complete zeroize --srk, the operator (or a provisioning script)
// runs `provd fw anchor set` (cmd/provd/cli/fwhook.go): a new process
// whose tpm.TPM never goes through agent.New, so TransientSRKOnly is never
// called on it. It authenticates the TPM (agent.Establish: the SRK made
// through the EK session and flushed, persisting nothing), pins the SRK
// (agent.PinEstablished), and fwhook.Set's authenticated reads salt to the
// pin (tpm.TPM.pinnedSalt -> SRK), which in the default mode creates and
// persists the SRK at 0x81000001 again: the eviction zeroize --srk made
// and recorded is undone by something that is not a provision. Mend: the
// CLI's openTPM (or tpm.Open itself) makes every connection
// TransientSRKOnly, leaving PersistSRK to provision and the PK's load; the
// fw hook then drops the copy when it ends (DropTransientSRK, or Close).
//
// HELD: TestReview31FirmwareAnchorShowLeavesTheSRKEvicted: `provd fw
// anchor show` in a new process after a complete zeroize --srk pins
// nothing and reads unauthenticated: 0x81000001 stays empty.
import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"path/filepath"
	"testing"
	"time"

	"github.com/provd/provd/api"
	"github.com/provd/provd/fwhook"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// review31EvictedOneShot is a complete zeroize --srk, then a new process's
// connection (env.Reopen) that no agent.New has touched.
func review31EvictedOneShot(t *testing.T) *swtpmtest.Env {
	t.Helper()
	env, a := review31Evicted(t, &swtpmtest.Bus{}, false)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	env.Reopen()
	if review26SRKThere(env) {
		t.Fatal("not mounted: the SRK is back after the reopen")
	}
	return env
}

func TestReview31FirmwareAnchorSetPutsTheEvictedSRKBack(t *testing.T) {
	env := review31EvictedOneShot(t)
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// What fw anchor set does (cmd/provd/cli/fwhook.go).
	id, srk, err := Establish(env.TPM, api.IdentityRequest{EKCA: env.CAPEM()}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if review26SRKThere(env) {
		t.Fatal("not mounted: Establish persisted the SRK")
	}
	if err := PinEstablished(env.TPM, id, srk); err != nil {
		t.Fatal(err)
	}
	_, err = fwhook.Set(env.TPM, fwhook.SetRequest{Officer: officertest.Key(), Signer: signer.Public(), Class: "gateway", CommitAuthPath: filepath.Join(t.TempDir(), "commit.auth")})
	t.Logf("fw anchor set after a complete zeroize --srk: %v", err)
	if review26SRKThere(env) {
		t.Errorf("fw anchor set put the SRK zeroize --srk evicted back at 0x81000001 (no provision since)")
	}
	_ = env.TPM.DropTransientSRK()
	srkCopyLeft(t, env, "fw anchor set")
}

func TestReview31FirmwareAnchorShowLeavesTheSRKEvicted(t *testing.T) {
	env := review31EvictedOneShot(t)
	_, err := fwhook.Read(env.TPM)
	t.Logf("fw anchor show after a complete zeroize --srk: %v", err)
	if review26SRKThere(env) {
		t.Errorf("fw anchor show put the SRK zeroize --srk evicted back")
	}
	srkCopyLeft(t, env, "fw anchor show")
}
