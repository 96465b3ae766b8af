package cli_test

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/attest"
	"github.com/provd/provd/fwhook"
)

// review69HideFailedThenVerify is A4 after a failed boot: the hook's
// failed event in measurements.log is kept, digests and all, but made
// into an event that is not provd's by retype (another event type, or
// another taggedEventID), then a "verified" event for the genuine officer,
// class and manifest is appended and extended into PCR 12 by hand. The
// log then accounts for PCR 12 exactly (the TPM holds failed, then the
// hand extend), its only provd verdict reads "verified", and the failed
// measurement sits under an event the checks skip.
func review69HideFailedThenVerify(t *testing.T, c *cliEnv, p func(string) string, code func(int, ...string) string, v2 string, retype func(e *attest.Event)) {
	t.Helper()
	failedBoot(t, p, code, v2)
	on, s := genuineVerdict(t, p, v2)
	logPath := filepath.Join(c.dir, fwhook.LogName)
	l, err := fwhook.ReadLogFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Events) != 1 || !strings.HasPrefix(attest.ProvdEventText(l.Events[0]), attest.FailedText) {
		t.Fatalf("the failed boot's log: %+v", l.Events)
	}
	retype(&l.Events[0])
	if attest.ProvdEventText(l.Events[0]) != "" {
		t.Fatal("the retyped event still reads as provd's")
	}
	v := attest.Event{PCR: 12, Type: attest.EVEventTag, Data: attest.TaggedEvent(attest.VerifiedEventText(on, "gateway", s.Digest()))}
	for _, b := range l.Banks() {
		h, err := b.Hash()
		if err != nil {
			t.Fatal(err)
		}
		v.Digests = append(v.Digests, tpm2.TPMTHA{HashAlg: b, Digest: attest.VerifiedMeasurement(h, on, "gateway", s.DigestFor(h))})
	}
	// Rebuilt from the events (the parsed log keeps its own bytes).
	nl, err := attest.NewEventLog(l.Banks()...)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range append(l.Events, v) {
		if err := nl.AppendEvent(e); err != nil {
			t.Fatal(err)
		}
	}
	c.swtpm.Reopen()
	err = c.swtpm.TPM.PCRExtendAll(12, v.Digests)
	c.swtpm.CloseTPM()
	if err != nil {
		t.Fatal(err)
	}
	b, err := nl.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(logPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestReview69FWLogFailedEventDisguisedHidesTheFailure: FLAW: fw log
// checks provd's events by their text (attest.CheckProvdEvent: events
// that are not provd's pass) and takes any event in provd's own log.
// FLAW (failed before the mend: fw log holds provd's log to the hook's
// verdicts only): after a failed boot A4 retypes the hook's failed event as EV_IPL, or
// only changes its taggedEventID from "PVDF" (its digests kept: the PCR
// chain is intact), and extends a "verified" event for the genuine
// officer, class and manifest by hand: `fw log --replay` exits 0,
// "replayed: the log accounts for every PCR it extends", and the only
// verdict it prints is "provd firmware verified" (the failed one is a
// line of hex). The fleet endpoint refuses the same log (checkLogs: "the
// measurement log holds provd's verdicts in PCR 12 only"); the device's
// own check does not. Earlier reviews fixed a failed event rewritten to
// read "verified" and one moved to another PCR: this one is hidden by its
// type or tag. Secure: provd's measurement log holds the hook's events
// only (EV_EVENT_TAG with provd's tag), or at least an event carrying the
// failed measurement is a failure whatever its type: exit 14.
func TestReview69FWLogFailedEventDisguisedHidesTheFailure(t *testing.T) {
	for _, tc := range []struct {
		name   string
		retype func(e *attest.Event)
	}{
		{"EV_IPL", func(e *attest.Event) { e.Type = attest.EVIPL }},
		{"another tag", func(e *attest.Event) { binary.LittleEndian.PutUint32(e.Data, attest.EventTagID+1) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, p, code, v2 := fwSetup(t)
			review69HideFailedThenVerify(t, c, p, code, v2, tc.retype)
			out, stderr, got := c.run("fw", "log", "--replay")
			if got != api.ExitTampered {
				t.Fatalf("a failed boot's log, its failed event disguised (%s), a hand-extended verdict: fw log --replay exit %d, want %d\n%s%s", tc.name, got, api.ExitTampered, out, stderr)
			}
		})
	}
}

// TestReview69FWCommitWithAStaleAuthorizationIsNotOK: Held: A6 puts back
// an old copy of the state directory, whose fw-commit.auth is 32 bytes
// that are not the counter's authValue (here: another value of the right
// size). `fw verify --commit` of a newer release verifies and measures
// (the firmware is authentic) but the commit fails: the exit is not 0,
// `-o json` says committed false, and the lowest accepted version has not
// moved; a rolled-back release is still refused afterwards by the floor
// committed before.
func TestReview69FWCommitWithAStaleAuthorizationIsNotOK(t *testing.T) {
	c, p, code, v2 := fwSetup(t)
	code(0, "fw", "verify", "--manifest", v2, "--root", p("images"), "--commit")
	code(0, "fw", "sign", "--key", p("signer.pem"), "--images", p("images"), "--version", "4", "--class", "gateway", "--out", p("v4.manifest"))
	code(0, "fw", "sign", "--key", p("signer.pem"), "--images", p("images"), "--version", "1", "--class", "gateway", "--out", p("v1.manifest"))
	auth := filepath.Join(c.dir, fwhook.CommitAuthName)
	stale := make([]byte, 32)
	for i := range stale {
		stale[i] = byte(i + 1)
	}
	if err := os.WriteFile(auth, stale, 0o600); err != nil {
		t.Fatal(err)
	}
	c.swtpm.Restart(false)
	c.swtpm.CloseTPM()
	out, stderr, got := c.run("fw", "verify", "--manifest", p("v4.manifest"), "--root", p("images"), "--commit", "-o", "json")
	if got == 0 || strings.Contains(out, `"committed":true`) || strings.Contains(out, `"committed": true`) {
		t.Fatalf("a commit with a stale authorization: exit %d\n%s%s", got, out, stderr)
	}
	t.Logf("exit %d: %s", got, strings.TrimSpace(stderr))
	var a struct {
		Lowest uint64 `json:"lowest_version"`
	}
	if err := json.Unmarshal([]byte(code(0, "fw", "anchor", "show", "-o", "json")), &a); err != nil || a.Lowest != 2 {
		t.Fatalf("the floor after a failed commit: %+v %v, want 2", a, err)
	}
	c.swtpm.Restart(false)
	c.swtpm.CloseTPM()
	code(api.ExitFWRollback, "fw", "verify", "--manifest", p("v1.manifest"), "--root", p("images"))
}
