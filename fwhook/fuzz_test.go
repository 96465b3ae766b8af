package fwhook_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest"
	"github.com/provd/provd/firmware"
	"github.com/provd/provd/fwhook"
)

// FuzzParseAnchor: the anchor's content is read from the TPM, where another
// process may have put anything: ParseAnchor never panics, refuses with
// ErrAnchorUntrusted, and what it accepts marshals back to the same bytes.
func FuzzParseAnchor(f *testing.F) {
	name := append([]byte{0, 0x0b}, bytes.Repeat([]byte{1}, 32)...)
	good, err := fwhook.Anchor{Officer: name, Class: "gateway", Current: name, Base: 7}.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	next, _ := fwhook.Anchor{Officer: name, Class: "a", Current: name, Next: name}.Marshal()
	f.Add(good)
	f.Add(next)
	f.Add([]byte{})
	f.Add(good[:len(good)-1])
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := fwhook.ParseAnchor(b)
		if err != nil {
			if !errors.Is(err, firmware.ErrAnchorUntrusted) {
				t.Fatalf("error without ErrAnchorUntrusted: %v", err)
			}
			return
		}
		again, err := a.Marshal()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("accepted %x, marshals to %x (%v)", b, again, err)
		}
	})
}

// FuzzCheckEvent: an event's data comes from a log anyone with root may
// edit: CheckEvent never panics, and refuses with attest.ErrBadEvidence.
func FuzzCheckEvent(f *testing.F) {
	f.Add([]byte("FDVP\x10\x00\x00\x00provd firmware v"), []byte{1})
	f.Add([]byte("FDVP\x2a\x00\x00\x00provd firmware anchor: officer 00, class a"), make([]byte, 32))
	f.Add([]byte("FDVP\x00\x00\x00\x00"), make([]byte, 32))
	f.Fuzz(func(t *testing.T, data, digest []byte) {
		e := attest.Event{PCR: 12, Type: attest.EVEventTag, Data: data, Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: digest}}}
		if err := fwhook.CheckEvent(e); err != nil && !errors.Is(err, attest.ErrBadEvidence) {
			t.Fatalf("error without ErrBadEvidence: %v", err)
		}
	})
}
