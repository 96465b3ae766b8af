package fwhook_test

import (
	"errors"
	"testing"

	"github.com/provd/provd/firmware"
	"github.com/provd/provd/fwhook"
)

// Held: the legitimate workflows around setFloor's new refusal (commit
// c9efdba) still work and keep the floor. After a commit of version 5: a
// signer rotation by the same officer (Next set, then the next signer
// made current) keeps floor 5 with no --lowest-version, and a lower
// --lowest-version is refused; an officer key rotation is refused without
// --lowest-version (ErrAnchorUntrusted, the old floor is another officer's
// word), taken with it at the floor the genuine anchor holds, and the new
// officer's later plain sets keep it; release 1 stays a rollback
// throughout, and release 5 by the rotated signer verifies.
func TestReview73FloorWorkflowsAfterTheMend(t *testing.T) {
	f := newFixture(t)
	f.set(t, f.signer.Public(), nil)
	if res, err := f.verify(f.manifest(t, f.signer, 5, "gateway"), true); err != nil || res.Lowest != 5 {
		t.Fatalf("commit v5: %+v %v", res, err)
	}
	tp := f.env.TPM

	// A signer rotation by the same officer.
	next := newKey(t)
	if in := f.set(t, f.signer.Public(), next.Public()); in.Lowest != 5 {
		t.Fatalf("rotation start: floor %d, want 5", in.Lowest)
	}
	if in := f.set(t, next.Public(), nil); in.Lowest != 5 {
		t.Fatalf("rotation end: floor %d, want 5", in.Lowest)
	}
	three := uint64(3)
	if _, err := fwhook.Set(tp, fwhook.SetRequest{Officer: f.officer, Signer: next.Public(), Class: "gateway", CommitAuthPath: f.authPath(), Lowest: &three}); err == nil {
		t.Fatal("the same officer lowered the floor from 5 to 3")
	}

	// An officer key rotation.
	newOfficer := newKey(t)
	if _, err := fwhook.Set(tp, fwhook.SetRequest{Officer: newOfficer, Signer: next.Public(), Class: "gateway", CommitAuthPath: f.authPath()}); !errors.Is(err, firmware.ErrAnchorUntrusted) {
		t.Fatalf("a new officer's set without --lowest-version: %v, want ErrAnchorUntrusted", err)
	}
	old, err := fwhook.Read(tp)
	if err != nil || old.Lowest != 5 {
		t.Fatalf("the refused set changed the anchor: %+v %v", old, err)
	}
	five := old.Lowest
	in, err := fwhook.Set(tp, fwhook.SetRequest{Officer: newOfficer, Signer: next.Public(), Class: "gateway", CommitAuthPath: f.authPath(), Lowest: &five})
	if err != nil || in.Lowest != 5 {
		t.Fatalf("the new officer's set at the genuine floor: %+v %v", in, err)
	}
	f.officer = newOfficer
	if in := f.set(t, next.Public(), nil); in.Lowest != 5 {
		t.Fatalf("the new officer's plain set: floor %d, want 5", in.Lowest)
	}
	f.reboot()
	if _, err := f.verify(f.manifest(t, next, 1, "gateway"), false); !errors.Is(err, firmware.ErrRollback) {
		t.Errorf("release 1 after the rotations: %v, want a rollback", err)
	}
	f.reboot()
	if res, err := f.verify(f.manifest(t, next, 5, "gateway"), false); err != nil || !res.OK {
		t.Errorf("release 5 by the rotated signer: %+v %v", res, err)
	}
}
