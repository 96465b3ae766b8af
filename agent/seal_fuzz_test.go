package agent_test

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

// Sealed blobs of each kind made on swtpm parse, as do the files in
// testdata/sealed that seed the fuzz target (made the same way once, so that
// fuzz workers need no swtpm).
func TestSealedSeedsParse(t *testing.T) {
	for _, s := range append(sealedSeeds(t), fileSeeds(t)...) {
		if err := agent.ParseSealed(s); err != nil {
			t.Fatalf("seed does not parse: %v", err)
		}
	}
}

func fileSeeds(t testing.TB) [][]byte {
	names, err := filepath.Glob("testdata/sealed/*.json")
	if err != nil || len(names) == 0 {
		t.Fatalf("no sealed seeds in testdata/sealed (%v)", err)
	}
	var out [][]byte
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

func FuzzParseSealed(f *testing.F) {
	for _, s := range fileSeeds(f) {
		f.Add(s)
	}
	f.Add([]byte(`{"format":"provd-sealed","version":2}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		_ = agent.ParseSealed(data) // must not panic
	})
}
