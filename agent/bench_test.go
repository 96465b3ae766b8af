package agent_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/keywrap"
	"github.com/provd/provd/officer"
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
	return benchAgentWith(b, req, false)
}

// benchAgentWith is benchAgent; keep makes it the daemon's (KeepSession).
func benchAgentWith(b *testing.B, req api.ProvisionRequest, keep bool) (*swtpmtest.Env, *agent.Agent) {
	env := swtpmtest.Start(b)
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: b.TempDir() + "/state", KeepSession: keep})
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

// BenchmarkKeyExport and BenchmarkKeyImport: a PKCS#8 backup under a KEK in
// the TPM, whose wrap runs one TPM2_EncryptDecrypt2 per AES block (6n for n
// 8-byte blocks of PKCS#8): the command count grows with the key's size.
func BenchmarkKeyExport(b *testing.B) {
	for _, typ := range []string{"ecc-p256", "ecc-p384", "rsa-2048", "rsa-3072"} {
		b.Run(typ, func(b *testing.B) {
			env, ag, wrapped := benchBackup(b, typ)
			_ = wrapped
			ctx := context.Background()
			ap := officertest.ApproveExport(b, ctx, ag, "k", "kek")
			before := env.TPM.Stats()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := ag.ExportKey(ctx, api.KeyExportRequest{Name: "k", KEK: "kek", Approval: ap}); err != nil {
					b.Fatal(err)
				}
			}
			report(b, env.TPM, before)
		})
	}
}

func BenchmarkKeyImport(b *testing.B) {
	for _, typ := range []string{"ecc-p256", "rsa-2048", "rsa-3072"} {
		b.Run(typ, func(b *testing.B) {
			env, ag, wrapped := benchBackup(b, typ)
			ctx := context.Background()
			before := env.TPM.Stats()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				name := fmt.Sprintf("imp%d", i)
				if _, err := ag.ImportKey(ctx, api.KeyImportRequest{Name: name, KEK: "kek-u", Wrapped: wrapped}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := ag.DeleteKey(ctx, name); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			report(b, env.TPM, before)
		})
	}
}

// benchBackup is an agent with an AES-256 KEK "kek" (wrap) and "kek-u"
// (unwrap, the same key) and an extractable key
// "k" of typ, and k's backup.
func benchBackup(b *testing.B, typ string) (*swtpmtest.Env, *agent.Agent, []byte) {
	env, ag := benchAgent(b, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	ctx := context.Background()
	comps := [][]byte{bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)}
	req := api.KEKImportRequest{Name: "kek", Components: comps}
	for _, c := range comps {
		k, _ := keywrap.KCV(c)
		req.KCVs = append(req.KCVs, hex.EncodeToString(k[:]))
	}
	key, _ := keywrap.Combine(comps)
	k, _ := keywrap.KCV(key)
	req.KCV = hex.EncodeToString(k[:])
	if _, err := ag.ImportKEK(ctx, req); err != nil {
		b.Fatal(err)
	}
	req.Name, req.Usage = "kek-u", "unwrap"
	if _, err := ag.ImportKEK(ctx, req); err != nil {
		b.Fatal(err)
	}
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "k", Type: typ, Extractable: true}); err != nil {
		b.Fatal(err)
	}
	wrapped, err := ag.ExportKey(ctx, api.KeyExportRequest{Name: "k", KEK: "kek", Approval: officertest.ApproveExport(b, ctx, ag, "k", "kek")})
	if err != nil {
		b.Fatal(err)
	}
	return env, ag, wrapped
}

// BenchmarkDupExport and BenchmarkDupImport: a P-256 key moved module to
// module (officer-approved), sender and receiver halves.
func BenchmarkDupExport(b *testing.B) {
	envA, a := benchAgent(b, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	envB, rcv := benchAgent(b, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	ctx := context.Background()
	peer, err := rcv.PeerIdentity(ctx)
	if err != nil {
		b.Fatal(err)
	}
	chal, err := agent.NewPeerChallenge(peer, benchCA(b, envB), time.Now)
	if err != nil {
		b.Fatal(err)
	}
	proof, err := rcv.PeerProve(ctx, chal)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256", DuplicableTo: &peer, PeerPK: peer.PKName, EKCA: benchCA(b, envB),
		Residency: &api.Residency{Challenge: chal, Proof: proof}}); err != nil {
		b.Fatal(err)
	}
	var dup api.DupFile
	before := envA.TPM.Stats()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if dup, err = a.DupExport(ctx, api.DupExportRequest{Name: "k", Peer: peer, EKCA: benchCA(b, envB)}); err != nil {
			b.Fatal(err)
		}
	}
	report(b, envA.TPM, before)
	b.StopTimer()
	st, err := a.Status(ctx)
	if err != nil {
		b.Fatal(err)
	}
	_, info, err := a.KeyPublic(ctx, "k")
	if err != nil {
		b.Fatal(err)
	}
	pk, _ := hex.DecodeString(st.PolicyDigest)
	obj, _ := hex.DecodeString(info.ObjectName)
	tName, _ := hex.DecodeString(peer.ParentName)
	ap, err := officer.ApproveDuplication(officertest.Key(), pk, obj, tName)
	if err != nil {
		b.Fatal(err)
	}
	var cmds int64
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("k%d", i)
		before := envB.TPM.Stats()
		if _, err := rcv.DupImport(ctx, api.DupImportRequest{Name: name, Dup: dup, Approval: ap}); err != nil {
			b.Fatal(err)
		}
		cmds += envB.TPM.Stats().Sub(before).Commands
		if err := rcv.DeleteKey(ctx, name); err != nil { // a device holds a key once
			b.Fatal(err)
		}
	}
	d := struct{ Commands int64 }{cmds}
	b.ReportMetric(float64(d.Commands)/3, "import-tpm-cmds/op")
}

// benchCA is env's EK CA bundle.
func benchCA(b *testing.B, env *swtpmtest.Env) []byte {
	return env.CAPEM()
}

// BenchmarkSignKeys: a warm sign with one key while the state holds 5 or
// 57 keys (issue 14: the daemon re-read and re-parsed the state's manifest
// on every request, so throughput fell with the number of keys).
func BenchmarkSignKeys(b *testing.B) {
	for _, c := range []struct {
		n    int
		keep bool
	}{{5, false}, {57, false}, {5, true}} {
		n, name := c.n, fmt.Sprintf("%d-keys", c.n)
		if c.keep {
			name += "-kept-session" // as the daemon
		}
		b.Run(name, func(b *testing.B) {
			env, ag := benchAgentWith(b, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}, c.keep)
			ctx := context.Background()
			for i := range n {
				if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: fmt.Sprintf("k%02d", i), Type: "ecc-p256"}); err != nil {
					b.Fatal(err)
				}
			}
			digest := make([]byte, 32)
			if _, err := ag.Sign(ctx, "k00", digest, api.SignOptions{}); err != nil {
				b.Fatal(err)
			}
			before := env.TPM.Stats()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := ag.Sign(ctx, "k00", digest, api.SignOptions{}); err != nil {
					b.Fatal(err)
				}
			}
			report(b, env.TPM, before)
		})
	}
}
