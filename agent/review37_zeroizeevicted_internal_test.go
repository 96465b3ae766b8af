package agent

// Review 37: zeroize --srk in a running daemon after another program
// evicted the SRK it cached (srkAgain's transient copy; srkEvicted).
//
// FLAW (failed before the mend): none.
//
// HELD: TestReview37DaemonZeroizeSRKAfterAnHonestEviction — a warm daemon
// (KeepSession, the PK's saved context, a resident key, the kept shared
// session) whose SRK another program evicts, then zeroize --srk in the same
// daemon, exclusive and behind a resource manager: zeroize succeeds,
// reports and records srk_evicted true with tpm_authenticated true (the
// TPM confirmed it), the copy srkAgain made is flushed and counted, and the
// SRK stays evicted through the requests after it (a refusal, status, a
// PCR read, attest identity, seal, key create); nothing is left loaded.
import (
	"context"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/policy"
)

func TestReview37DaemonZeroizeSRKAfterAnHonestEviction(t *testing.T) {
	t.Parallel()
	bank, err := policy.ParseBank("sha256")
	if err != nil {
		t.Fatal(err)
	}
	for _, rm := range []bool{false, true} {
		t.Run(map[bool]string{false: "exclusive", true: "resource manager"}[rm], func(t *testing.T) {
			ctx := context.Background()
			env, b, a, _ := review35WarmDaemon(t, rm)
			review31EvictSRK(t, env, b)
			res, err := a.Zeroize(ctx, api.ZeroizeOptions{SRK: true})
			t.Logf("zeroize --srk after an honest eviction: %+v %v", res, err)
			if err != nil {
				t.Fatalf("zeroize --srk in the daemon after another program evicted the SRK: %v", err)
			}
			if !res.SRKEvicted || !res.Authenticated {
				t.Errorf("zeroize reports srk_evicted %v, authenticated %v; the TPM holds no SRK", res.SRKEvicted, res.Authenticated)
			}
			recs, err := audit.ReadRecords(res.AuditLog)
			if err != nil {
				t.Fatal(err)
			}
			last := recs[len(recs)-1]
			if last.Op != "zeroize" || last.Objects["srk_evicted"] != "true" || last.Objects["tpm_authenticated"] != "true" {
				t.Errorf("zeroize's record: %s %v", last.Op, last.Objects)
			}
			if review26SRKThere(env) {
				t.Fatal("the SRK is back at its handle after zeroize --srk")
			}
			review32Unheld(t, env, a, "zeroize --srk")
			cctx := api.WithCaller(ctx, api.Caller{UID: 4242})
			for _, op := range []struct {
				name string
				run  func() error
			}{
				{"a refused request", func() error { return a.RecordRefusal(cctx, "key-delete", "no role") }},
				{"status", func() error { _, err := a.Status(cctx); return err }},
				{"pcr read", func() error { _, _, err := a.ReadPCRs(cctx, bank, []int{7}); return err }},
				{"attest identity", func() error { _, err := a.AttestIdentity(cctx); return err }},
				{"seal", func() error { _, err := a.Seal(cctx, api.SealRequest{Data: []byte("x")}); return err }},
				{"key create", func() error {
					_, err := a.CreateKey(cctx, api.CreateRequest{Name: "k2", Type: "ecc-p256"})
					return err
				}},
			} {
				err := op.run()
				t.Logf("%s: %v", op.name, err)
				if review26SRKThere(env) {
					t.Fatalf("%s put the SRK zeroize --srk evicted back", op.name)
				}
				review32Unheld(t, env, a, op.name)
			}
		})
	}
}
