package fwhook

import (
	"context"

	"github.com/provd/provd/firmware"
)

// SetVerifyImages replaces the images' check (verifyImages) for a test and
// returns what puts it back.
func SetVerifyImages(f func(ctx context.Context, m firmware.Manifest, root string) error) (restore func()) {
	old := verifyImages
	verifyImages = f
	return func() { verifyImages = old }
}
