package agent_test

import (
	"context"
	"testing"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// Seeds: a real sealed blob of each kind, made once on swtpm.
func sealedSeeds(t testing.TB) [][]byte {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: t.TempDir() + "/state"})
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Close()
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	var seeds [][]byte
	for _, req := range []api.SealRequest{{Data: []byte("small")}, {Data: make([]byte, 300)}, {Data: []byte("own"), PCRs: []int{0}}} {
		b, err := ag.Seal(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	return seeds
}

func FuzzParseSealed(f *testing.F) {
	for _, s := range sealedSeeds(f) {
		if err := agent.ParseSealed(s); err != nil {
			f.Fatalf("seed does not parse: %v", err)
		}
		f.Add(s)
	}
	f.Add([]byte(`{"format":"provd-sealed","version":2}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		_ = agent.ParseSealed(data) // must not panic
	})
}
