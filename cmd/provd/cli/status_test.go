package cli

import (
	"encoding/json"
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
		n, err := terminalSafe{w: &b}.Write([]byte(in))
		if err != nil || n != len(in) || b.String() != want {
			t.Errorf("%q: wrote %q (%d, %v), want %q", in, b.String(), n, err, want)
		}
	}
}

// Under -o json the escapes are JSON's, and what the encoder leaves raw
// (C1 controls, bidi overrides, DEL) is escaped too (review 55).
func TestTerminalSafeJSON(t *testing.T) {
	var b strings.Builder
	in := "{\n  \"message\": \"\u009b2J \u202eok \x7f \U0001F600 é\"\n}\n"
	if _, err := (terminalSafe{w: &b, json: true}).Write([]byte(in)); err != nil {
		t.Fatal(err)
	}
	want := "{\n  \"message\": \"\\u009b2J \\u202eok \\u007f \U0001F600 é\"\n}\n"
	if b.String() != want {
		t.Errorf("wrote %q, want %q", b.String(), want)
	}
	var v map[string]string
	if err := json.Unmarshal([]byte(b.String()), &v); err != nil || v["message"] != "\u009b2J \u202eok \x7f \U0001F600 é" {
		t.Errorf("the escaped JSON reads %q, %v", v["message"], err)
	}
}
