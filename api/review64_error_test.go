package api

// Review 64: answerText (DecodeError's message) after review 63's mend.

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"
)

// Held: nothing a terminal acts on survives DecodeError's message: a lone
// carriage return (not printable per unicode.IsPrint, so escaped, which
// stops "\r" from overwriting the line shown), ESC, DEL, the C1 controls
// (U+0085 NEL, U+009B CSI, as runes; as raw 8-bit bytes, in a body that
// is not JSON, they are invalid UTF-8 and written \x9b), the bidi overrides and isolates
// (U+202E, U+2066..U+2069), zero-width and format runes (U+200B, U+FEFF,
// U+00AD), and the line and paragraph separators (U+2028, U+2029): each
// comes back as its Go escape, and the escaped message is valid UTF-8
// with only newlines and tabs among its non-printing runes. A legitimate
// multi-line, tabbed, non-ASCII message ("clé", "–") is kept exactly.
// The bound is on the daemon's bytes (1,000, then "…"); escaping may
// grow the result to at most four times that (a \xNN per byte), which is
// still bounded. Hangul fillers (U+3164) print as blanks and are
// letters to unicode.IsPrint: kept, no terminal control.
func TestReview64AnswerTextDrivesNoTerminal(t *testing.T) {
	decode := func(msg string) string {
		b, err := json.Marshal(ErrorBody{Error: ErrorDetail{Message: msg, Kinds: []string{}, ExitCode: 1}})
		if err != nil {
			t.Fatal(err)
		}
		return DecodeError(http.StatusInternalServerError, b).Message
	}
	for _, tc := range []struct{ in, want string }{
		{"ok\rFAKE", `ok\rFAKE`},
		{"a\x1b[2Jb", `a\x1b[2Jb`},
		{"a\x7fb", `a\x7fb`},
		{"a\u0085b\u009bc", `a\u0085b\u009bc`},
		{"file \u202Etxt.exe", `file \u202etxt.exe`},
		{"\u2066x\u2069", `\u2066x\u2069`},
		{"a\u200bb\ufeffc\u00add", `a\u200bb\ufeffc\u00add`},
		{"a\u2028b\u2029c", `a\u2028b\u2029c`},
		{"audit trail: \n\ttampered: clé – record 3", "audit trail: \n\ttampered: clé – record 3"},
	} {
		got := decode(tc.in)
		if got != tc.want {
			t.Errorf("message %q: %q; want %q", tc.in, got, tc.want)
		}
		if !utf8.ValidString(got) || strings.ContainsAny(got, "\r\x1b\x7f\u0085\u009b\u202e\u2028") {
			t.Errorf("message %q: %q still holds a control", tc.in, got)
		}
	}
	// Raw 8-bit CSI: JSON decoding makes invalid bytes U+FFFD, so they
	// reach answerText through a body that is not JSON.
	if got := DecodeError(http.StatusBadGateway, []byte("proxy \x9b2J \xff")).Message; !strings.Contains(got, `proxy \x9b2J \xff`) || strings.IndexByte(got, 0x9b) >= 0 || strings.IndexByte(got, 0xff) >= 0 {
		t.Errorf("raw bytes: %q", got)
	}
	long := decode(strings.Repeat("\x01", 5000))
	if len(long) > 4*maxErrorMessage+len("…") || !strings.HasSuffix(long, "…") {
		t.Errorf("5000 control bytes: %d bytes back", len(long))
	}
}
