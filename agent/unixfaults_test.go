package agent_test

import (
	"context"
	"crypto/sha256"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// The faults between operations over a unix socket (swtpm --server
// type=unixio): the idle-close peek and the redial work there as over TCP.
func TestTPMFaultsOverUnixSocket(t *testing.T) {
	env := swtpmtest.Start(t, swtpmtest.WithUnixSocket())
	env.RequireSimulator()
	ctx := context.Background()
	ag := signingAgent(t, env)
	d := sha256.Sum256([]byte("m"))
	for _, f := range []struct {
		name  string
		cause func()
	}{{"migration", env.Migrate}, {"power cut", env.PowerCut}, {"reset", env.Reset}, {"hibernation", func() { env.Hibernate(true) }}} {
		f.cause()
		if _, err := ag.Sign(ctx, "sig", d[:], api.SignOptions{}); err != nil {
			t.Fatalf("sign after a %s: %v", f.name, err)
		}
		if _, err := ag.AuditVerify(ctx); err != nil {
			t.Fatalf("audit verify after a %s: %v", f.name, err)
		}
	}
	if err := ag.Close(); err != nil {
		t.Fatal(err)
	}
}
