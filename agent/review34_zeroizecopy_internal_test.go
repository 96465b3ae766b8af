// Review 34: zeroize's flush of every transient handle and its read-back
// (zeroizeTPMAndState) where the SRK's transient copy is loaded.
//
// FLAW (failed before the mend): none in this file.
//
// HELD: TestReview34ZeroizeWithTheSRKEvictedByAnother — a provisioned
// state whose SRK another program evicted, zeroized by a new process (with
// and without --srk): the copy its records' sessions made is flushed with
// the leftovers and forgotten (Flush's compare-and-swap), no later session
// makes another at the flushed number before the read-back, so the
// read-back raises no false ErrResponseForged; zeroize succeeds, the SRK
// stays evicted and nothing is left loaded.
// HELD: TestReview34ZeroizeAgainInANewProcessWithACopy — the same for
// zeroize run again in a new (pinned) process after a waiting zeroize
// --srk.
package agent

import (
	"context"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

func TestReview34ZeroizeWithTheSRKEvictedByAnother(t *testing.T) {
	for _, srkOpt := range []bool{false, true} {
		t.Run(map[bool]string{false: "zeroize", true: "zeroize --srk"}[srkOpt], func(t *testing.T) {
			ctx := context.Background()
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			a := review8Agent(t, env.TPM, t.TempDir()+"/state")
			if _, err := a.Provision(ctx, review8Req()); err != nil {
				t.Fatal(err)
			}
			srk, err := env.TPM.ReadPublic(tpm.SRKHandle)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: srk.Named(), PersistentHandle: tpm.SRKHandle}).Execute(b.Next); err != nil {
				t.Fatal(err)
			}
			dir := a.dir
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			env.Reopen()
			a = review8Agent(t, env.TPM, dir)
			res, err := a.Zeroize(ctx, api.ZeroizeOptions{SRK: srkOpt})
			t.Logf("zeroize: %+v, %v", res, err)
			if err != nil {
				t.Errorf("zeroize of a provisioned state whose SRK another program evicted: %v", err)
			}
			if review26SRKThere(env) {
				t.Errorf("zeroize put the SRK back")
			}
			srkCopyLeft(t, env, "zeroize")
		})
	}
}

func TestReview34ZeroizeAgainInANewProcessWithACopy(t *testing.T) {
	for _, srkOpt := range []bool{false, true} {
		t.Run(map[bool]string{false: "zeroize", true: "zeroize --srk"}[srkOpt], func(t *testing.T) {
			env, _, z, _ := review26Mount(t, false)
			res, err := z.Zeroize(context.Background(), api.ZeroizeOptions{SRK: srkOpt})
			t.Logf("zeroize again: %+v, %v", res, err)
			if err != nil {
				t.Errorf("zeroize run again in a new process after a waiting zeroize --srk: %v", err)
			}
			if review26SRKThere(env) {
				t.Errorf("zeroize again put the SRK back")
			}
			srkCopyLeft(t, env, "zeroize again")
		})
	}
}
