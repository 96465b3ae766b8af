package agent

import (
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
)

// Found by review of issue 14: a TPM reset the connection survives (swtpm's
// init on the control channel; a platform reset of a TPM behind /dev/tpm0)
// or a suspend and resume (Shutdown(STATE), reset, Startup(STATE), after
// which loaded sessions are gone and the channel sees no TPM_RC_INITIALIZE)
// killed the kept session, and the first request after it failed. A kept
// session that fails while its policy is satisfied, before the authorized
// command, is now tried once more afresh: the first sign works.
func TestKeptSessionSurvivesResetAndResume(t *testing.T) {
	env := swtpmtest.Start(t)
	a := keptAgent(t, env)
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	env.Reset()
	if _, err := signK(a); err != nil {
		t.Fatalf("first sign after a TPM reset (connection kept): %v", err)
	}
	if err := env.TPM.Shutdown(true); err != nil {
		t.Fatal(err)
	}
	env.Reset()
	if _, err := (tpm2.Startup{StartupType: tpm2.TPMSUState}).Execute(env.TPM); err != nil {
		t.Fatalf("Startup(STATE): %v", err)
	}
	if _, err := signK(a); err != nil {
		t.Fatalf("first sign after suspend and resume: %v", err)
	}
}

// Migrate: the connection breaks but the TPM keeps its loaded sessions and
// objects; the generation moves with the new connection, the kept session
// is flushed (not reused, not leaked: the harness's leak check runs at the
// end) and the sign works at once.
func TestKeptSessionAfterMigrate(t *testing.T) {
	env := swtpmtest.Start(t)
	a := keptAgent(t, env)
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	env.Migrate()
	if _, err := signK(a); err != nil {
		t.Fatalf("first sign after a migration: %v", err)
	}
}
