package fwhook_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	"github.com/provd/provd/firmware"
	"github.com/provd/provd/fwhook"
)

// TestReview69ImitationAnchorLowersFloorAtOfficersNextSet: FLAW (failed
// before the mend: setFloor refuses another officer's floor): the
// imitation anchor the docs concede (A2 or A4, the owner authorization
// empty: undefine the anchor, define one of provd's exact shape naming an
// officer of its own, the genuine signer and class, and a base that puts
// the floor at 0) is said to be harmless to sealed keys, since the hook
// then measures the attacker's officer and no release reaches its good
// value. But the genuine officer's next `fw anchor set` (a rotation, or
// the repair after the keys stayed locked) takes the floor from whatever
// anchor reads as provd's (setFloor: Read succeeds on the imitation, and
// its Lowest is believed whoever its officer is) and writes it into the
// genuine anchor: the floor committed at version 5 is now 0, and the old,
// rolled-back genuine release 1 boots to its good value under the genuine
// officer: a rollback that opens the keys sealed to release 1's good
// PCR 12 (a fleet's signed policy listing every release's golden value).
// docs/firmware.md: "A set never lowers the lowest accepted version ...
// an attacker who removes the anchor ... gets no rollback out of the
// officer's next set"; replacing it instead of removing it does get one.
// Secure: a set over an anchor whose officer is not the one setting
// treats its floor as unknown (refused without --lowest-version), or
// keeps at least the floor the genuine anchor held.
func TestReview69ImitationAnchorLowersFloorAtOfficersNextSet(t *testing.T) {
	f := newFixture(t)
	f.set(t, f.signer.Public(), nil)
	v1, v5 := f.manifest(t, f.signer, 1, "gateway"), f.manifest(t, f.signer, 5, "gateway")
	if res, err := f.verify(v5, true); err != nil || res.Lowest != 5 {
		t.Fatalf("commit v5: %+v %v", res, err)
	}
	f.reboot()
	if _, err := f.verify(v1, false); !errors.Is(err, firmware.ErrRollback) {
		t.Fatalf("v1 after the commit of v5: %v, want a rollback", err)
	}

	// The attacker (TPM access, empty owner authorization) replaces the
	// anchor by an imitation with its own officer, floor 0.
	f.pin(t)
	tp := f.env.TPM
	if err := tp.UndefineNV(fwhook.AnchorHandle); err != nil {
		t.Fatal(err)
	}
	zero := uint64(0)
	if _, err := fwhook.Set(tp, fwhook.SetRequest{Officer: newKey(t), Signer: f.signer.Public(), Class: "gateway",
		CommitAuthPath: filepath.Join(t.TempDir(), "attacker.auth"), Lowest: &zero, Unauthenticated: true}); err != nil {
		t.Fatal(err)
	}

	// The genuine officer's next set, as docs/firmware.md describes it
	// (no --lowest-version: "a set keeps the lowest accepted version").
	f.pin(t)
	in, err := fwhook.Set(tp, fwhook.SetRequest{Officer: f.officer, Signer: f.signer.Public(), Class: "gateway", CommitAuthPath: f.authPath()})
	if errors.Is(err, firmware.ErrAnchorUntrusted) {
		return // refused: the floor is unknown, the officer must state it (secure)
	}
	if err != nil {
		t.Fatalf("the officer's set: %v", err)
	}
	if in.Lowest < 5 {
		t.Errorf("the officer's set over the imitation wrote a lowest accepted version of %d; the genuine anchor's was 5", in.Lowest)
	}
	f.reboot()
	res, err := f.verify(v1, false)
	if err == nil || res.OK {
		t.Errorf("the rolled-back release 1 verifies under the genuine anchor after its next set: %+v", res)
	}
	if bytes.Equal(f.pcr(t), f.good(t, v1)) {
		t.Errorf("PCR 12 holds release 1's good value under the genuine officer (a rollback that opens keys sealed to it)")
	}
}
