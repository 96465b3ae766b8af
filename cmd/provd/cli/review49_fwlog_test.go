package cli_test

import (
	"bytes"
	"crypto"
	"crypto/sha1"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/attest"
	"github.com/provd/provd/fwhook"
	"github.com/provd/provd/test/swtpmtest"
)

// review49Allocate sends TPM2_PCR_Allocate (platform authorization, empty
// on swtpm) selecting all 24 PCRs in the banks of on and none in the banks
// of off, then resets the TPM so that it takes effect.
func review49Allocate(t *testing.T, c *cliEnv, on, off []tpm2.TPMAlgID) {
	t.Helper()
	c.swtpm.Reopen()
	swtpmtest.AllocatePCRs(t, c.swtpm.TPM, on, off)
	c.swtpm.Restart(false)
	c.swtpm.CloseTPM()
}

// TestReview49FWLogExtraBankVerdict: FLAW (failed before the mend): on a TPM whose only active PCR
// bank is SHA-1 (the default of many PCs' firmware), after a failed boot
// (an image tampered with), A4 rewrites measurements.log as a log of the
// SHA-1 and SHA-256 banks whose one event, in PCR 12, reads "verified" for
// the genuine officer, class and manifest: its SHA-256 digest is the
// verified measurement its text names (so attest.CheckProvdEvent passes,
// the only bank it checks a "verified" text in), its SHA-1 digest the
// failed measurement that the TPM really holds. replayAgainstTPM compares
// only the TPM's banks, so the SHA-256 bank, the one that makes the text
// credible, is never compared with anything: exit 0 and "provd firmware
// verified" over a failed boot. (Nothing is extended; only the file is
// edited.)
func TestReview49FWLogExtraBankVerdict(t *testing.T) {
	c, p, code, v2 := fwSetup(t)
	review49Allocate(t, c, []tpm2.TPMAlgID{tpm2.TPMAlgSHA1}, []tpm2.TPMAlgID{tpm2.TPMAlgSHA256})
	c.swtpm.Reopen()
	banks, err := c.swtpm.TPM.PCRBanks()
	c.swtpm.CloseTPM()
	if err != nil || len(banks) != 1 || banks[0] != tpm2.TPMAlgSHA1 {
		t.Fatalf("banks after allocation: %v %v", banks, err)
	}

	failedBoot(t, p, code, v2)
	code(0, "fw", "log", "--replay") // the genuine failed log replays

	on, s := genuineVerdict(t, p, v2)
	l, err := attest.NewEventLog(tpm2.TPMAlgSHA1, tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	failed1 := sha1.Sum([]byte("provd firmware verification failed\x00"))
	if err := l.AppendEvent(attest.Event{PCR: 12, Type: attest.EVEventTag,
		Data: attest.TaggedEvent(attest.VerifiedEventText(on, "gateway", s.Digest())),
		Digests: []tpm2.TPMTHA{
			{HashAlg: tpm2.TPMAlgSHA1, Digest: failed1[:]},
			{HashAlg: tpm2.TPMAlgSHA256, Digest: attest.VerifiedMeasurement(crypto.SHA256, on, "gateway", s.Digest())},
		}}); err != nil {
		t.Fatal(err)
	}
	b, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.dir, fwhook.LogName), b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, stderr, got := c.run("fw", "log", "--replay")
	if got != api.ExitTampered {
		t.Fatalf("a forged \"verified\" log over a failed boot: fw log --replay exit %d, want %d\n%s%s", got, api.ExitTampered, out, stderr)
	}
}

// TestReview49FWLogExplicitPathSkipsHookPCR: FLAW (failed before the mend): provd's own log, named
// with --log (its path in the state directory, as a script or an operator
// copying the default gives it), does not answer for the hook's PCR: after
// a failed boot, A4 replaces measurements.log by one event in PCR 14 that
// it extended by hand. `fw log --replay` refuses it (exit 14: PCR 12 holds
// a failure the log does not account for), `fw log --log <the same file>
// --replay` passes it, exit 0, "the log accounts for every PCR it extends":
// the failed verification is gone from the log, as the earlier review's
// finding, by naming the file.
func TestReview49FWLogExplicitPathSkipsHookPCR(t *testing.T) {
	c, p, code, v2 := fwSetup(t)
	failedBoot(t, p, code, v2)
	data := binary.LittleEndian.AppendUint32(nil, 0x58585858) // another tag
	data = binary.LittleEndian.AppendUint32(data, 2)
	data = append(data, "ok"...)
	logPath := handLog(t, c, attest.Event{PCR: 14, Type: attest.EVEventTag, Data: data,
		Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: bytes.Repeat([]byte{0x42}, 32)}}})
	code(api.ExitTampered, "fw", "log", "--replay")
	out, stderr, got := c.run("fw", "log", "--log", logPath, "--replay")
	if got != api.ExitTampered {
		t.Fatalf("provd's log named with --log after a failed boot, PCR 12 left out: exit %d, want %d\n%s%s", got, api.ExitTampered, out, stderr)
	}
}

// TestReview49FWLogFailedTextForgesAVerifiedLine: FLAW (failed before the mend): a "failed" event's
// text is checked only for its prefix (attest.CheckProvdEvent: FailedText
// and anything after it), and fw log prints provd's texts as they are.
// After a failed boot A4 rewrites the failed event's text, keeping its
// digests, so that after "provd firmware verification failed: " it carries
// a carriage return, an erase-line escape and a newline followed by a line
// in fw log's own format reading "provd firmware verified" for the genuine
// officer, class and manifest. fw log --replay exits 0 ("the log accounts
// for every PCR it extends") and prints a line "PCR 12 EV_EVENT_TAG ...
// provd firmware verified: ..." over a failed boot (on a terminal the
// escape erases the real "failed" line).
func TestReview49FWLogFailedTextForgesAVerifiedLine(t *testing.T) {
	c, p, code, v2 := fwSetup(t)
	failedBoot(t, p, code, v2)
	on, s := genuineVerdict(t, p, v2)
	logPath := filepath.Join(c.dir, fwhook.LogName)
	l, err := fwhook.ReadLogFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	last := &l.Events[len(l.Events)-1]
	vm := attest.VerifiedMeasurement(crypto.SHA256, on, "gateway", s.Digest())
	fake := fmt.Sprintf("PCR %-2d %-34s %s  %s", 12, "EV_EVENT_TAG", fmt.Sprintf("%x…", vm[:8]), attest.VerifiedEventText(on, "gateway", s.Digest()))
	last.Data = attest.TaggedEvent(attest.FailedText + "image digest\r\x1b[2K\x1b[1A\x1b[2K\n" + fake)
	b, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(logPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, stderr, got := c.run("fw", "log", "--replay")
	forged := false
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "PCR 12") && strings.Contains(line, attest.VerifiedText) {
			forged = true
		}
	}
	if got == 0 && forged {
		t.Fatalf("a failed boot's log whose failed text was extended: fw log --replay exit 0 and prints a \"verified\" line:\n%q\n%s", out, stderr)
	}
}
