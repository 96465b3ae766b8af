package api

import (
	"errors"
	"strings"
	"testing"
)

// Hex fields of transfer and sealed files are refused where they are read
// unless hex (empty passes), the error naming the field and never its text.
func TestCheckHexFields(t *testing.T) {
	for _, ok := range []string{"", "000b", "00AbCdEf", strings.Repeat("ab", 34)} {
		if err := CheckHexFields("file", map[string]string{"f": ok}); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"0", "0g", "\x1b[2K", "ab\n", "ab cd", "é0", "0x0b"} {
		err := CheckHexFields("file", map[string]string{"ok": "00", "name": bad})
		if !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), "name is not hex") || (len(bad) > 1 && strings.Contains(err.Error(), bad)) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
