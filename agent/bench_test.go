package agent_test

import (
	"context"
	"testing"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// report adds TPM commands and TPM wait time per operation to a benchmark.
func report(b *testing.B, tp *tpm.TPM, before tpm.Stats) {
	d := tp.Stats().Sub(before)
	b.ReportMetric(float64(d.Commands)/float64(b.N), "tpm-cmds/op")
	b.ReportMetric(float64(d.Wait.Microseconds())/float64(b.N), "tpm-µs/op")
}

func benchAgent(b *testing.B, req api.ProvisionRequest) (*swtpmtest.Env, *agent.Agent) {
	env := swtpmtest.Start(b)
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: b.TempDir() + "/state"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ag.Close() })
	if _, err := ag.Provision(context.Background(), req); err != nil {
		b.Fatal(err)
	}
	return env, ag
}

func BenchmarkProvision(b *testing.B) {
	env := swtpmtest.Start(b)
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: b.TempDir() + "/state"})
	if err != nil {
		b.Fatal(err)
	}
	defer ag.Close()
	ctx := context.Background()
	before := env.TPM.Stats()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}, Force: true}); err != nil {
			b.Fatal(err)
		}
	}
	report(b, env.TPM, before)
}

func BenchmarkSeal(b *testing.B) {
	env, ag := benchAgent(b, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	ctx := context.Background()
	before := env.TPM.Stats()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := ag.Seal(ctx, api.SealRequest{Data: []byte("0123456789abcdef")}); err != nil {
			b.Fatal(err)
		}
	}
	report(b, env.TPM, before)
}

func BenchmarkUnseal(b *testing.B) {
	for _, size := range []int{32, 4096} {
		b.Run(map[int]string{32: "32B", 4096: "4KiB-envelope"}[size], func(b *testing.B) {
			env, ag := benchAgent(b, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
			ctx := context.Background()
			blob, err := ag.Seal(ctx, api.SealRequest{Data: make([]byte, size)})
			if err != nil {
				b.Fatal(err)
			}
			before := env.TPM.Stats()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				s, err := ag.Unseal(ctx, blob)
				if err != nil {
					b.Fatal(err)
				}
				clear(s)
			}
			report(b, env.TPM, before)
		})
	}
}
