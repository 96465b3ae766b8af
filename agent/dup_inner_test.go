package agent

import (
	"bytes"
	"context"
	"encoding/hex"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// TestDupInnerKeyNeverCrossesTheBus: TPM2_Duplicate's inner wrapper key,
// which with the credential to the peer's EK is all that guards the key in
// transit, goes to the TPM encrypted, whichever session carries it: the
// duplication branch's policy session itself (withDupBranch: salted to the
// pinned SRK and encrypting the input, issue 14: no second session), or a
// session of Duplicate's own when its authorization does not encrypt. A
// recorder on the bus looks for the key's bytes in every command.
func TestDupInnerKeyNeverCrossesTheBus(t *testing.T) {
	t.Parallel()
	rec := new(swtpmtest.Recorder)
	env := swtpmtest.Start(t, swtpmtest.WithRecorder(rec))
	peerEnv := swtpmtest.Start(t)
	ctx := context.Background()
	a, _, peer := senderAndPeer(t, env, peerEnv)
	ks, err := a.readKeyState(ctx, "k", true)
	if err != nil {
		t.Fatal(err)
	}
	parentName, _ := hex.DecodeString(peer.ParentName)
	for _, tc := range []struct {
		name    string
		through func(fn func(obj tpm.Object, s tpm2.Session) error) error
	}{
		{"the branch's session encrypts", func(fn func(obj tpm.Object, s tpm2.Session) error) error {
			return a.withDupBranch(ctx, ks, parentName, approveDup(t, a, "k", peer), "", fn)
		}},
		{"a session of Duplicate's own", func(fn func(obj tpm.Object, s tpm2.Session) error) error {
			// withDupBranch's policy in a salted session that does not
			// encrypt (withPolicySession), as before issue 14's change.
			rule, _ := ks.rec.rule()
			objName, _ := hex.DecodeString(ks.rec.Object)
			expr, err := ks.rec.policyUnder(ks.pk, rule, objName)
			if err != nil {
				return err
			}
			opts := ks.pk.opts
			opts.Branches = []int{1}
			opts.Approved = []policy.Approved{{Policy: officer.DupApprovedExpr(ks.pk.expr, objName, parentName), Approval: approveDup(t, a, "k", peer)}}
			auth, _ := ks.objectAuth()
			obj, _, err := a.keyObject(ctx, ks)
			if err != nil {
				return err
			}
			return a.withPolicySession(ks.pk.state.Policy, expr, opts, auth, func(s tpm2.Session) error {
				if s.IsDecryption() {
					t.Fatal("withPolicySession's session encrypts: this case tests one that does not")
				}
				return fn(obj, s)
			})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := loadPeerParent(t, env, peer)
			defer env.TPM.Flush(parent.Handle)
			var inner []byte
			rec.Reset()
			err := tc.through(func(obj tpm.Object, s tpm2.Session) error {
				d, err := a.t.Duplicate(obj, s, parent.Named())
				inner = bytes.Clone(d.InnerKey)
				clear(d.InnerKey)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(inner) != 16 {
				t.Fatalf("an inner key of %d bytes", len(inner))
			}
			if off := rec.Leak(inner); off >= 0 {
				t.Fatalf("the inner wrapper key crossed the bus in the clear (offset %d)", off)
			}
			if !rec.Sent(tpm2.TPMCCDuplicate) {
				t.Fatal("no TPM2_Duplicate on the bus")
			}
		})
	}
}
