package fwhook_test

import (
	"bytes"
	"errors"
	"testing"

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
