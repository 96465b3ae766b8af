package cli_test

import (
	"strings"
	"testing"

	"github.com/provd/provd/api"
)

// FLAW (failed before the mend; read by review 52): audit show printed
// what callers sent raw. An officer-role caller's request with a key name
// of terminal control characters is refused (exit 2) and recorded with the
// name as sent, so an auditor's `audit show` erased its line and printed a
// line of the caller's making in its place (the hash chain intact: the
// record is genuine, its display was not). Texts that do not print are
// now shown quoted, and -o json escapes them as JSON does.
func TestAuditShowQuotesWhatDoesNotPrint(t *testing.T) {
	t.Parallel()
	_, _, d := provisionedDevice(t)
	names := []string{
		"\x1b[2K\r9_zeroize_ok", // erase the line, write another (no space: one was quoted before)
		"k\x9b2K",               // an 8-bit CSI: no valid UTF-8 (the record's JSON holds U+FFFD)
		"k\u202egnp.exe",        // a bidi override
		"k\nforged",             // a line of its own
	}
	for _, n := range names {
		d(api.ExitUsage, "key", "delete", n)
	}
	out := d(0, "audit", "show")
	for _, c := range []string{"\x1b", "\r", "\x9b", "\u202e"} {
		if strings.Contains(out, c) {
			t.Errorf("audit show printed %q raw:\n%s", c, out)
		}
	}
	if n := strings.Count(out, "\n"); n != strings.Count(d(0, "audit", "show", "-o", "json"), `"seq"`) {
		t.Errorf("audit show printed %d lines for its records:\n%s", n, out)
	}
	for _, want := range []string{`key="\x1b[2K\r9_zeroize_ok"`, "key=k\ufffd2K", `key="k\u202egnp.exe"`, `key="k\nforged"`} {
		if !strings.Contains(out, want) {
			t.Errorf("audit show does not show %s:\n%s", want, out)
		}
	}
}
