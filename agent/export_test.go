package agent

import (
	"context"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// testAgent is an Agent on env's TPM with a fresh state directory, closed at
// the end of the test; provisioned with req when req is not nil.
func testAgent(t testing.TB, env *swtpmtest.Env, req *api.ProvisionRequest) *Agent {
	t.Helper()
	a, err := New(Config{TPM: env.TPM, StateDir: t.TempDir() + "/state"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if req != nil {
		if _, err := a.Provision(context.Background(), *req); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

// ParseSealed exposes the sealed-blob parser to the fuzz target.
func ParseSealed(data []byte) error {
	_, _, err := parseSealed(data)
	return err
}
