package agent

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
)

// Held: A2 (the owner hierarchy's authorization empty) or A4 swapping the
// policy counter for a counter index of its own at 0x01707600, to make an
// older signed policy, written back into the state, look unrevoked to
// `policy show` (and usable): the new counter starts where the highest
// counter the TPM ever had left off (libtpms keeps it across the
// undefine), so the old version still reads as revoked; status does not
// say "satisfied", and the TPM refuses a key's creation.
//
// FLAW (failed before the mend; seen by review 46): readCounter took
// whatever counter was at the handle without comparing its name with
// CounterRef's, so status and policy show reported A2's counter's value as
// provd's. It is now refused as another program's (errForeignCounter), and
// policy show says so instead of a value.
func TestReview46ForeignCounterDoesNotUnrevoke(t *testing.T) {
	bz := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bz))
	ctx := context.Background()
	a := review8Agent(t, env.TPM, t.TempDir()+"/state")
	_, c0, signed := review46Signed(t, a, "")
	old := signed(c0, "")
	for _, v := range []uint64{c0, c0 + 3} {
		if _, err := a.InstallPolicy(ctx, signed(v, "")); err != nil {
			t.Fatal(err)
		}
	}
	next := bz.Next
	rp, err := (tpm2.NVReadPublic{NVIndex: PolicyCounterHandle}).Execute(next)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.NVUndefineSpace{AuthHandle: tpm2.TPMRHOwner, NVIndex: tpm2.NamedHandle{Handle: PolicyCounterHandle, Name: rp.NVName}}).Execute(next); err != nil {
		t.Fatalf("A2's undefine: %v", err)
	}
	pub := tpm2.TPMSNVPublic{NVIndex: PolicyCounterHandle, NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{NT: tpm2.TPMNTCounter, AuthWrite: true, AuthRead: true, NoDA: true}, DataSize: 8}
	if _, err := (tpm2.NVDefineSpace{AuthHandle: tpm2.TPMRHOwner, PublicInfo: tpm2.New2B(pub)}).Execute(next); err != nil {
		t.Fatalf("A2's define: %v", err)
	}
	name, err := tpm2.NVName(&pub)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.NVIncrement{AuthHandle: tpm2.AuthHandle{Handle: PolicyCounterHandle, Name: *name, Auth: tpm2.PasswordAuth(nil)},
		NVIndex: tpm2.NamedHandle{Handle: PolicyCounterHandle, Name: *name}}).Execute(next); err != nil {
		t.Fatalf("A2's increment: %v", err)
	}
	if err := a.st.Update(ctx, func(tx *store.Tx) error { return tx.WriteBlob(blobPolicy, old) }); err != nil {
		t.Fatal(err)
	}
	a.signed.reset()
	c, err := a.readCounter()
	t.Logf("A2's counter at the handle reads %d (%v); provd's was at %d; the policy written back is version %d", c, err, c0+3, c0)
	if !errors.Is(err, errForeignCounter) || !errors.Is(err, api.ErrTampered) {
		t.Errorf("A2's counter at the handle read as provd's: %d, %v", c, err)
	}
	ps, err := a.ShowPolicy(ctx)
	t.Logf("policy show: satisfied %v, reason %q, %v", ps.Satisfied, ps.Reason, err)
	if err == nil && ps.Satisfied {
		t.Errorf("policy show says satisfied with a revoked policy and a foreign counter")
	}
	if err != nil || !strings.Contains(ps.Reason, "not provd's") || ps.Signed == nil || ps.Signed.Counter != 0 {
		t.Errorf("policy show with a foreign counter: %+v, %v; want the reason, and no counter value", ps, err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"}); err == nil {
		t.Errorf("a key created under a revoked policy with a foreign counter")
	} else {
		t.Logf("create: %v", err)
	}
}
