package agent

// Review 41: what evictSRKUnowed evicts.
//
// FLAW (failed before the mend): TestReview41UnownedEvictionTakesAForeignKey.
// Attack (other local programs with the owner hierarchy's empty
// authorization; no bus attacker): a provisioned state whose SRK another
// program evicted. Process O (one-shot or daemon) creates a key: the PK's
// TPM2_Load meets the empty handle and srkAgain persists the SRK again
// (PersistMissingSRK: reported at unlock). While O works, another
// program's zeroize --srk wipes the state and evicts the SRK, and another
// TPM user (tpm2-tools, another stack: the handle is the TCG's SRK handle,
// and provd's state no longer claims it) creates its own storage key (here
// the TCG RSA SRK template) and persists it at 0x81000001. O's unlock
// reads the state: wiped, so evictSRKUnowed calls tpm.EvictSRK, which
// evicts whatever 0x81000001 holds (TPM2_EvictControl naming only the
// handle), not the SRK O persisted.
// Expected: O evicts only the key it put there (the ECC SRK the pinned
// name or SRKTemplate gives): a key of another name is left alone, as
// zeroize's eviction does (Witness.EvictSRK names the pinned SRK, and the
// TPM refuses another key). Observed: the other user's key is evicted
// (one-shot and daemon; mutation-checked: with unlock's call of
// evictSRKUnowed removed, the key stays and the test passes).
// Suggested mend: evictSRKUnowed reads 0x81000001 and evicts only when its
// name is the pinned SRK's (or SRKTemplate's primary's): e.g. the
// witness's EvictSRK (command HMAC over the pinned name) rather than
// tpm.EvictSRK.
// Mended: the witness's EvictSRK (its session is salted to the pinned
// SRK too, which the foreign key cannot decrypt: refused at the start).
import (
	"context"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

func TestReview41UnownedEvictionTakesAForeignKey(t *testing.T) {
	for _, daemon := range []bool{false, true} {
		t.Run(review26Mode(daemon), func(t *testing.T) {
			s := review32Mount(t, daemon)
			s.a.pk = nil // the PK loads from its blob, under the SRK
			review31EvictSRK(t, s.env, s.b)
			var foreign []byte
			loads, done := 0, false
			s.b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				switch swtpmtest.CommandCode(cmd) {
				case tpm2.TPMCCLoad:
					loads++
					return nil, nil, false
				case tpm2.TPMCCCreate:
				default:
					return nil, nil, false
				}
				if done || loads == 0 {
					return nil, nil, false
				}
				done = true
				if _, err := (tpm2.ReadPublic{ObjectHandle: tpm.SRKHandle}).Execute(next); err != nil {
					t.Errorf("not mounted: the PK's load did not persist the SRK again")
				}
				// Another program's zeroize --srk.
				review40Wipe(t, s.dir, next, true)
				// Another TPM user's own storage key at the SRK handle.
				cp, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.RSASRKTemplate)}).Execute(next)
				if err != nil {
					t.Errorf("the other user's primary: %v", err)
					return nil, nil, false
				}
				if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: tpm2.NamedHandle{Handle: cp.ObjectHandle, Name: cp.Name}, PersistentHandle: tpm.SRKHandle}).Execute(next); err != nil {
					t.Errorf("the other user's persist: %v", err)
				}
				if _, err := (tpm2.FlushContext{FlushHandle: cp.ObjectHandle}).Execute(next); err != nil {
					t.Errorf("the other user's flush: %v", err)
				}
				foreign = cp.Name.Buffer
				return nil, nil, false
			})
			_, err := s.a.CreateKey(context.Background(), review41KeyReq("k"))
			s.b.Set(nil)
			if !done {
				t.Fatalf("not mounted: no TPM2_Create after a TPM2_Load (%v)", err)
			}
			got := review41SRKName(s.env)
			t.Logf("key create across a zeroize --srk and another user's key at 0x81000001: %v; 0x81000001 holds %x (the other user's key %x)", err, got, foreign)
			if string(got) != string(foreign) {
				t.Errorf("the other TPM user's key at 0x81000001 was evicted by provd's evictSRKUnowed (0x81000001 now holds %x)", got)
			}
		})
	}
}
