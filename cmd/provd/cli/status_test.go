package cli

import (
	"strings"
	"testing"
)

// audit show prints objects as sorted key=value pairs, not a Go map.
func TestObjectsText(t *testing.T) {
	got := objectsText(map[string]string{"key": "tls", "context": "", "reason": "new trail", "a": `q"x`})
	if want := ` a="q\"x" context="" key=tls reason="new trail"`; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// terminalSafe passes printable text, newlines and tabs as they are and
// writes every other rune, and every byte that is not UTF-8, as its escape.
func TestTerminalSafe(t *testing.T) {
	for in, want := range map[string]string{
		"key list\tok\nnext line\n":    "key list\tok\nnext line\n",
		"café ✓ \ufffd":                "café ✓ \ufffd",
		"\x1b[2K\rforged\a":            `\x1b[2K\rforged\a`,
		"k\x9b2K":                      `k\x9b2K`,
		"k\u202egnp.exe \u0085 \x7f":   `k\u202egnp.exe \u0085 \x7f`,
		"cut \xe2\x82":                 `cut \xe2\x82`,
		"\u2028line separator\u00a0nb": `\u2028line separator\u00a0nb`,
	} {
		var b strings.Builder
		n, err := terminalSafe{&b}.Write([]byte(in))
		if err != nil || n != len(in) || b.String() != want {
			t.Errorf("%q: wrote %q (%d, %v), want %q", in, b.String(), n, err, want)
		}
	}
}
