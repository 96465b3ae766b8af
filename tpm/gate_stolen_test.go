package tpm_test

import (
	"bytes"
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// The gate's proof is bound to the one extend provd prepared (found by
// review: A1 answered the policy session's StartAuthSession with a session
// of its own, received the proof, and extended the audit anchor with data
// of its own). A1 holding the session extends nothing else: its data is
// refused (TPM_RC_POLICY_FAIL, the cpHash), and provd's own head, the one
// extend the proof allows, is all it can make. Through both ways of
// preparing: the shared read's session and PrepareGatedExtend.
func TestStolenGateProofExtendsOnlyProvdsHead(t *testing.T) {
	for _, shared := range []bool{true, false} {
		name := "PrepareGatedExtend"
		if shared {
			name = "ReadPrepareGatedExtend"
		}
		t.Run(name, func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			tp := env.TPM
			first := sha256.Sum256([]byte("head"))
			gate, x := writtenGatedIndex(t, tp, first[:])
			head := sha256.Sum256([]byte("provd's next head"))
			thief := &swtpmtest.PolicySessionThief{}
			b.Set(thief.Hook)
			var ge *tpm.GatedExtend
			var err error
			if shared {
				_, ge, err = tp.ReadPrepareGatedExtend(x, gate, head[:])
			} else {
				ge, err = tp.PrepareGatedExtend(testGatedHandle, gate, head[:])
			}
			b.Set(nil)
			if err != nil {
				t.Fatalf("prepare through A1: %v", err)
			}
			if thief.Stolen() == 0 {
				t.Fatal("attack not mounted")
			}
			defer ge.Close()
			was, err := tp.Anchor(testGatedHandle).Read()
			if err != nil {
				t.Fatal(err)
			}
			evil := sha256.Sum256([]byte("A1 was here"))
			if rc, err := swtpmtest.OwnSessionExtend(b.Next, testGatedHandle, thief.Stolen(), evil[:]); err != nil || rc == tpm2.TPMRCSuccess {
				t.Fatalf("A1's data through the stolen proof: %v %v, want a refusal", rc, err)
			} else {
				t.Logf("A1's data through the stolen proof: %v", rc)
			}
			if now, _ := tp.Anchor(testGatedHandle).Read(); !bytes.Equal(now, was) {
				t.Fatal("the anchor moved")
			}
			if rc, err := swtpmtest.OwnSessionExtend(b.Next, testGatedHandle, thief.Stolen(), head[:]); err != nil || rc != tpm2.TPMRCSuccess {
				t.Fatalf("provd's head through the stolen proof: %v %v", rc, err)
			}
			want := sha256.Sum256(append(was, head[:]...))
			if now, _ := tp.Anchor(testGatedHandle).Read(); !bytes.Equal(now, want[:]) {
				t.Fatalf("anchor %x, want provd's extend %x", now, want)
			}
		})
	}
}
