// Review 33: a stale SRK copy behind a resource manager after an honest
// TPM reset.
//
// FLAW (failed before the mend): TestReview33StaleCopyFlushedByNumberAfterReset —
// behind a resource manager, a copy of the SRK is held (0x80000000); the TPM
// is reset (every transient handle gone, the numbers free again); provd's
// next command that makes an object on the same connection is started up
// and resent transparently and gets the copy's old number; the next
// DropTransientSRK (the agent's unlock) or SRK finds the copy stale and,
// behind a resource manager, flushes it by its number: the connection's new
// object is flushed.
//
// HELD: (none in this file)
package tpm_test

import (
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
)

func TestReview33StaleCopyFlushedByNumberAfterReset(t *testing.T) {
	for _, drop := range []string{"DropTransientSRK", "SRK"} {
		t.Run(drop, func(t *testing.T) {
			env := swtpmtest.Start(t, swtpmtest.WithResourceManager())
			env.RequireSimulator()
			tp := env.TPM
			tp.TransientSRKOnly()
			srk, err := tp.SRK()
			if err != nil {
				t.Fatal(err)
			}
			if srk.Handle>>24 != 0x80 {
				t.Fatalf("not mounted: the SRK is at 0x%08x, not a copy", uint32(srk.Handle))
			}
			env.Reset()
			// An object of the same connection, made after the reset: the
			// command meets TPM_RC_INITIALIZE, provd starts the TPM up and
			// sends it again.
			rsp, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tpm2.ECCEKTemplate)}).Execute(tp)
			if err != nil {
				t.Fatal(err)
			}
			obj := rsp.ObjectHandle
			defer tp.Flush(obj)
			if obj != srk.Handle {
				t.Fatalf("not mounted: the new object is at 0x%08x, the copy was at 0x%08x", uint32(obj), uint32(srk.Handle))
			}
			switch drop {
			case "DropTransientSRK":
				if err := tp.DropTransientSRK(); err != nil {
					t.Logf("DropTransientSRK: %v", err)
				}
			case "SRK":
				s, err := tp.SRK()
				if err != nil {
					t.Fatal(err)
				}
				defer tp.DropTransientSRK()
				_ = s
			}
			// What the number holds now must still be the new object (its name:
			// after SRK, a new copy may have taken the freed number).
			got, err := tp.ReadPublic(obj)
			if err != nil || string(got.Name.Buffer) != string(rsp.Name.Buffer) {
				t.Errorf("%s after the reset flushed 0x%08x, the connection's new object, by the stale copy's number (now: %x, %v)", drop, uint32(obj), got.Name.Buffer, err)
			}
		})
	}
}
