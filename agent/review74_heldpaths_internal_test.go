package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// Held: root on the sender (A4 on A: A's state directory and TPM, a good
// boot, the duplicate file it made and the officer's approval of the key
// to B's transfer key T) neither opens the duplicate nor sends the key
// elsewhere. TPM2_Rewrap of the outer wrapper needs T in the USER role,
// and A's TPM holds only T's public area (TPM2_LoadExternal): the TPM
// refuses to authorize it (TPM_RC_AUTH_UNAVAILABLE); TPM2_Duplicate of the
// key to TPM_RH_NULL, with the officer's approval of T, fails
// PolicyDuplicationSelect (TPM_RC_POLICY_FAIL).
func TestReview74SenderRootNeitherStripsNorRetargets(t *testing.T) {
	t.Parallel()
	_, _, a, peer, dup := movedKey(t)
	pub, err := api.ParsePublicArea(dup.Public)
	if err != nil {
		t.Fatal(err)
	}
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		t.Fatal(err)
	}
	tPub, tName, err := checkPeer(peer)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	tObj, err := a.t.LoadPublic(tPub)
	if err != nil {
		t.Fatal(err)
	}
	for _, auth := range [][]byte{nil, []byte("a guess")} {
		_, _, err = review74Rewrap(a.t, tObj.Handle, auth, tpm2.TPMRHNull, dup.Duplicate, name.Buffer, dup.Seed)
		if !errors.Is(err, tpm2.TPMRCAuthUnavailable) {
			t.Errorf("TPM2_Rewrap on the sender with T's public area as oldParent (auth %q): %v, want TPM_RC_AUTH_UNAVAILABLE", auth, err)
		}
	}
	if err := a.t.Flush(tObj.Handle); err != nil {
		t.Fatal(err)
	}
	null := tpm2.NamedHandle{Handle: tpm2.TPMRHNull, Name: tpm2.HandleName(tpm2.TPMRHNull)}
	if err := duplicateTo(t, a, "k", null, tName, officertest.Key()); !errors.Is(err, tpm2.TPMRCPolicyFail) {
		t.Errorf("the key duplicated on the sender to TPM_RH_NULL with the approval of T: %v, want TPM_RC_POLICY_FAIL", err)
	}
}

// Held: after the genuine dup import, root on the receiver (A4 on B: the
// key's record, its authValue and T's, B's PK policy on a good boot) does
// not send the imported key on. Through its duplication branch with an
// approval of its own (not the officer's), TPM2_Duplicate to TPM_RH_NULL
// fails the key's PolicyOR (TPM_RC_POLICY_FAIL); through its use branch
// (B's PK policy, CC(Sign), PolicyAuthValue, all A4's to satisfy), the
// TPM refuses TPM2_Duplicate for the command code (TPM_RC_POLICY_CC).
// The imported object is the key as provd made it: ObjectChangeAuth
// gives nothing A4 does not hold (its authValue is in the state).
func TestReview74ImportedKeyDoesNotLeaveTheReceiver(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, b, _, _, dup := movedKey(t)
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup}); err != nil {
		t.Fatal(err)
	}
	null := tpm2.NamedHandle{Handle: tpm2.TPMRHNull, Name: tpm2.HandleName(tpm2.TPMRHNull)}
	own, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := duplicateTo(t, b, "k", null, null.Name.Buffer, own); !errors.Is(err, tpm2.TPMRCPolicyFail) {
		t.Errorf("the imported key duplicated to TPM_RH_NULL with root's own approval: %v, want TPM_RC_POLICY_FAIL", err)
	}
	ks, err := b.readKeyState(ctx, "k", true)
	if err != nil {
		t.Fatal(err)
	}
	if ks.rec.Kind != api.KindTransferred {
		t.Fatalf("kind %q", ks.rec.Kind)
	}
	obj, _, err := b.keyObject(ctx, ks)
	if err != nil {
		t.Fatal(err)
	}
	defer b.t.Flush(obj.Handle)
	officerBranch := policy.Policy{policy.Authorize{Signer: officertest.Public(), PolicyRef: officer.DupRef}, policy.AuthValue{}}
	expr := policy.Policy{policy.Or{Branches: []policy.Policy{useBranch(ks.pk.expr, ks.rec.useCommand()), officerBranch}}}
	d, _ := expr.Digest(tpm2.TPMAlgSHA256)
	if hex.EncodeToString(d) != ks.rec.Policy {
		t.Fatalf("the rebuilt policy %x is not the key's %s", d, ks.rec.Policy)
	}
	opts := ks.pk.opts
	opts.Branches = []int{0}
	auth, err := ks.objectAuth()
	if err != nil {
		t.Fatal(err)
	}
	err = b.withPolicySession(ks.pk.state.Policy, expr, opts, auth, func(s tpm2.Session) error {
		d, err := b.t.Duplicate(obj, s, null)
		clear(d.InnerKey)
		return err
	})
	if !errors.Is(err, tpm2.TPMRCPolicyCC) {
		t.Errorf("the imported key duplicated through its use branch: %v, want TPM_RC_POLICY_CC", err)
	}
}

// Held: root on the receiver after a bad boot (A5: B's state directory
// and TPM, B's PCR 7 no longer the value B's PK policy names) with a copy
// of the duplicate file does not strip the outer wrapper (since review
// 74's mend: TPM2_Rewrap by T's authValue, TPM_RC_AUTH_UNAVAILABLE; before
// it, T's value alone stripped it), nor get the inner wrapper's key: T's ADMIN role is PolicySecret(B's PK),
// and the PK's policy fails in the TPM (provd's session: TPM2_PolicyPCR
// answered TPM_RC_VALUE, the PCR digest no longer the current one; a
// session without it: TPM_RC_POLICY_FAIL at PolicySecret), before any
// TPM2_ActivateCredential. The FLAW of TestReview74ReceiverRootRewrapsADuplicateOpen
// needs a good boot.
func TestReview74ReceiverAfterABadBootGetsNoInnerKey(t *testing.T) {
	t.Parallel()
	bus := new(swtpmtest.Bus)
	envB, b, _, _, dup := movedKey(t, swtpmtest.WithBus(bus))
	extendPCR(t, envB.TPM, 7)
	// The TPM's refusals, by command, while A5 tries.
	var mu sync.Mutex
	var refused []string
	activated := false
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		rsp, err := next.Send(cmd)
		if err == nil && len(rsp) >= 10 {
			cc := swtpmtest.CommandCode(cmd)
			rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
			mu.Lock()
			if rc != tpm2.TPMRCSuccess {
				name := fmt.Sprintf("cc %#x", uint32(cc))
				if cc == tpm2.TPMCCPolicyPCR {
					name = "TPM2_PolicyPCR"
				}
				refused = append(refused, fmt.Sprintf("%s: %v", name, rc))
			} else if cc == tpm2.TPMCCActivateCredential {
				activated = true
			}
			mu.Unlock()
		}
		return rsp, err, true
	})
	_, err := review74OpenOnTheReceiver(t, b, dup)
	bus.Set(nil)
	if err == nil || activated {
		t.Fatalf("A5 activated the credential after a bad boot: %v", err)
	}
	if !errors.Is(err, tpm.ErrPolicyNotSatisfied) {
		t.Errorf("after a bad boot: %v, want the PK's policy not satisfied", err)
	}
	policyFail := false
	for _, r := range refused {
		policyFail = policyFail || strings.Contains(r, "TPM_RC_POLICY_FAIL") || strings.HasPrefix(r, "TPM2_PolicyPCR: TPM_RC_VALUE")
	}
	if !policyFail {
		t.Errorf("no refusal of the PK's policy from the TPM; its refusals: %q", refused)
	}
	t.Logf("refused: %v; the TPM's answers: %q", err, refused)
	// The outer wrapper alone still comes off (T's authValue), which
	// opens nothing without the inner key.
	_, tr, traw, _, err := b.readTransfer(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := api.ParsePublicArea(dup.Public)
	name, _ := tpm2.ObjectName(pub)
	blob, _ := tpm.UnmarshalBlob(traw)
	tauth, _ := tr.auth()
	srk, err := b.t.SRK()
	if err != nil {
		t.Fatal(err)
	}
	tobj, err := b.t.LoadWithAuth(srk, tpm.ParentAuth{}, blob)
	if err != nil {
		t.Fatal(err)
	}
	defer b.t.Flush(tobj.Handle)
	if _, _, err := review74Rewrap(b.t, tobj.Handle, tauth, tpm2.TPMRHNull, dup.Duplicate, name.Buffer, dup.Seed); !errors.Is(err, tpm2.TPMRCAuthUnavailable) {
		t.Errorf("TPM2_Rewrap by T's authValue after a bad boot: %v, want TPM_RC_AUTH_UNAVAILABLE", err)
	}
}
