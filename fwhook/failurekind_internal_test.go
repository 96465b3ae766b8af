package fwhook

import (
	"errors"
	"testing"

	"github.com/provd/provd/attest"
	"github.com/provd/provd/firmware"
)

// failureKind names each failure by its place in attest.FailureKinds: the
// names are what a failed event says and what fw log accepts, so a list
// reordered must not rename a failure.
func TestFailureKindNames(t *testing.T) {
	for err, want := range map[error]string{
		firmware.ErrNoAnchor: "no anchor", firmware.ErrAnchorUntrusted: "anchor untrusted",
		firmware.ErrBadSignature: "signature", firmware.ErrBadManifest: "manifest malformed",
		firmware.ErrDigest: "image digest", firmware.ErrMissingImage: "image missing",
		firmware.ErrRollback: "rollback", errors.New("read: EIO"): "TPM or I/O error",
	} {
		if got := failureKind(err); got != want {
			t.Errorf("%v: kind %q, want %q", err, got, want)
		}
	}
	if len(attest.FailureKinds) != 8 {
		t.Errorf("attest.FailureKinds has %d kinds, failureKind names 8", len(attest.FailureKinds))
	}
}
