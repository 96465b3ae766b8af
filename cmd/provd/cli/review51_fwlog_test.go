package cli_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/attest"
	"github.com/provd/provd/fwhook"
)

// review51Verified is a "verified" event of class class for the genuine
// officer and manifest of fwSetup, with a digest in each of the log's
// banks (the one the text names in SHA-256: attest.CheckProvdEvent passes).
func review51Verified(t *testing.T, p func(string) string, v2, class string, banks []tpm2.TPMIAlgHash) attest.Event {
	t.Helper()
	on, s := genuineVerdict(t, p, v2)
	e := attest.Event{PCR: fwhook.DefaultPCR, Type: attest.EVEventTag, Data: attest.TaggedEvent(attest.VerifiedEventText(on, class, s.Digest()))}
	for _, b := range banks {
		h, err := b.Hash()
		if err != nil {
			t.Fatal(err)
		}
		e.Digests = append(e.Digests, tpm2.TPMTHA{HashAlg: b, Digest: attest.VerifiedMeasurement(h, on, class, s.DigestFor(h))})
	}
	return e
}

// TestReview51FWLogC1EscapeInVerifiedClass: FLAW (failed before the mend): fw log quotes a provd
// text only when strings.ContainsFunc finds a rune that unicode.IsPrint
// refuses; an invalid UTF-8 byte decodes as U+FFFD, which IsPrint accepts,
// so raw bytes 0x80..0xFF pass unquoted. A "verified" event's class (any
// bytes up to 255, attest.parseVerified) made of 8-bit C1 controls, 0x9B
// being CSI ("\x9bA" cursor up, "\x9bM" delete line, "\x9b2K" erase line,
// "\x9bG" column 1) followed by a line in fw log's format for the genuine
// class: after a failed boot (an image tampered with), root on that boot
// extends PCR 12 with that event's digests (any root can; sealed keys stay
// locked, but the log is what the operator reads) and appends it to
// measurements.log. fw log --replay exits 0 and prints the bytes raw: on a
// terminal that honours 8-bit controls the failed line is deleted and a
// "verified ... class gateway" line is all that shows.
func TestReview51FWLogC1EscapeInVerifiedClass(t *testing.T) {
	c, p, code, v2 := fwSetup(t)
	failedBoot(t, p, code, v2)
	logPath := filepath.Join(c.dir, fwhook.LogName)
	l, err := fwhook.ReadLogFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	genuine := review51Verified(t, p, v2, "gateway", l.Banks())
	text := attest.ProvdEventText(genuine)
	fake := fmt.Sprintf("PCR %-2d %-34s %x…  %s", 12, "EV_EVENT_TAG", genuine.Digests[len(genuine.Digests)-1].Digest[:8], strings.TrimSuffix(text, text[strings.Index(text, ", manifest sha256:"):]))
	class := "\x9bA\x9bM\x9b2K\x9bG" + fake
	if len(class) > 255 {
		t.Fatalf("class of %d bytes", len(class))
	}
	e := review51Verified(t, p, v2, class, l.Banks())
	// Since review 50's class rule the forged text is refused first
	// (CheckProvdEvent); fw log must still print none of it raw.
	if err := attest.CheckProvdEvent(e); err != nil {
		t.Logf("refused by CheckProvdEvent: %v", err)
	}
	c.swtpm.Reopen()
	if err := c.swtpm.TPM.PCRExtendAll(fwhook.DefaultPCR, e.Digests); err != nil { // root, by hand
		t.Fatal(err)
	}
	c.swtpm.CloseTPM()
	if err := l.AppendEvent(e); err != nil {
		t.Fatal(err)
	}
	b, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(logPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, stderr, got := c.run("fw", "log", "--replay")
	t.Logf("exit %d, output %q%s", got, out, stderr)
	if !utf8.ValidString(out+stderr) && strings.Contains(out+stderr, "\x9b") {
		t.Fatalf("fw log --replay (exit %d) prints raw C1 CSI bytes (0x9b) from a provd text unquoted: on an 8-bit terminal the failed line is deleted and a \"verified ... class gateway\" line shows", got)
	}
}

// TestReview51FWLogUnicodeSeparatorsQuoted: Held: a "verified" event whose
// class holds U+2028 LINE SEPARATOR, U+0085 NEXT LINE, U+202E RIGHT-TO-LEFT
// OVERRIDE, U+2029, U+000B, U+00A0 or U+FEFF (each a Zl/Zp/Cc/Cf/Zs rune
// unicode.IsPrint refuses) is printed quoted, one line per event, the rune
// never raw.
func TestReview51FWLogUnicodeSeparatorsQuoted(t *testing.T) {
	c, p, _, v2 := fwSetup(t)
	for _, r := range []string{"\u2028", "\u0085", "\u202e", "\u2029", "\v", "\u00a0", "\ufeff", "\u200b"} {
		l, err := attest.NewEventLog(tpm2.TPMAlgSHA256)
		if err != nil {
			t.Fatal(err)
		}
		e := review51Verified(t, p, v2, "gateway"+r+"PCR 12 EV_EVENT_TAG verified", l.Banks())
		if err := l.AppendEvent(e); err != nil {
			t.Fatal(err)
		}
		b, _ := l.MarshalBinary()
		if err := os.WriteFile(filepath.Join(c.dir, fwhook.LogName), b, 0o644); err != nil {
			t.Fatal(err)
		}
		out, stderr, got := c.run("fw", "log")
		// Exit 14 since review 50's class rule (the text is refused);
		// printed or refused, the rune is never raw.
		if got != 0 && got != api.ExitTampered {
			t.Fatalf("%q: exit %d\n%s%s", r, got, out, stderr)
		}
		if strings.Contains(out+stderr, r) || strings.Count(strings.TrimSuffix(out, "\n"), "\n") != 0 {
			t.Errorf("%q printed raw: %q %q", r, out, stderr)
		}
	}
}

// TestReview51FWLogHardLinkAnswersForHookPCR: Held: review 49's attack
// (after a failed boot, measurements.log replaced by one non-provd event
// in PCR 14, extended by hand) with the log named through a hard link
// elsewhere: os.SameFile sees the one inode, so PCR 12 is answered for
// (exit 14). A symbolic link given to --log is refused outright (the log
// is opened with no symbolic link at its last component).
func TestReview51FWLogHardLinkAnswersForHookPCR(t *testing.T) {
	c, p, code, v2 := fwSetup(t)
	failedBoot(t, p, code, v2)
	logPath := handLog(t, c, attest.Event{PCR: 14, Type: attest.EVIPL, Data: []byte("ok"),
		Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: bytes.Repeat([]byte{0x42}, 32)}}})
	link := filepath.Join(c.dir, "copy.log")
	if err := os.Link(logPath, link); err != nil {
		t.Fatal(err)
	}
	if out, stderr, got := c.run("fw", "log", "--log", link, "--replay"); got != api.ExitTampered {
		t.Errorf("hard link of measurements.log, PCR 12 left out: exit %d, want %d\n%s%s", got, api.ExitTampered, out, stderr)
	}
	sym := filepath.Join(c.dir, "sym.log")
	if err := os.Symlink(logPath, sym); err != nil {
		t.Fatal(err)
	}
	if out, stderr, got := c.run("fw", "log", "--log", sym, "--replay"); got == 0 {
		t.Errorf("symlink to measurements.log, PCR 12 left out: exit 0\n%s%s", out, stderr)
	}
}
