package firmware

import (
	"strings"
	"testing"
)

// TestReview51ManifestTrailingDotWithCase: Held: trailing dots combined
// with case ("BOOT.EFI." beside "boot.efi", "EFI./boot.efi" beside
// "efi/BOOT.EFI", "a.b.." beside "A.B") are refused, whichever comes
// first; a dot inside a component ("boot..efi", ".hidden") stays valid.
func TestReview51ManifestTrailingDotWithCase(t *testing.T) {
	k := testSigner(t)
	d0, d1 := strings.Repeat("00", 32), strings.Repeat("11", 32)
	for _, pair := range [][2]string{{"boot.efi", "BOOT.EFI."}, {"BOOT.EFI.", "boot.efi"}, {"efi/BOOT.EFI", "EFI./boot.efi"},
		{"A.B", "a.b.."}, {"efi/boot.efi", "EFI/BOOT.EFI"}} {
		m := Manifest{Class: "gateway", Version: 3, Images: []Image{
			{Name: pair[0], Size: 1, Hash: "sha256", Digest: d0},
			{Name: pair[1], Size: 1, Hash: "sha256", Digest: d1},
		}}
		if _, err := Parse(signPayload(t, k, review49Payload(t, m))); err == nil {
			t.Errorf("%q and %q (one file on FAT): accepted", pair[0], pair[1])
		}
	}
	m := Manifest{Class: "gateway", Version: 3, Images: []Image{
		{Name: "boot..efi", Size: 1, Hash: "sha256", Digest: d0},
		{Name: ".hidden/x", Size: 1, Hash: "sha256", Digest: d1},
	}}
	if _, err := Parse(signPayload(t, k, review49Payload(t, m))); err != nil {
		t.Errorf("inner dots refused: %v", err)
	}
}
