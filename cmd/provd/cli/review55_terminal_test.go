package cli_test

import (
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// review55Lines returns out's lines that start with prefix.
func review55Lines(out, prefix string) []string {
	var ls []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			ls = append(ls, l)
		}
	}
	return ls
}

// FLAW (failed before the mend): `provd status` prints a recorded verdict's endpoint and reasons
// with their own newlines, and a caller's text draws whole lines of
// status's form. terminalSafe (review 53's mend) keeps every newline and
// tab, and the threat model's rule for a field that may hold a newline of
// its own ("quoted where it is printed (printable), as audit show does")
// is not applied to the verdict's fields. An officer-role caller of the
// daemon (POST /v1/attest/record takes any verdict, bounded only in size),
// or a compromised or confused fleet endpoint through `attest now` (its
// reasons are recorded as sent), records a failed verdict whose endpoint
// holds "\nattestation: pass at <later> (...". status, which any caller
// runs, shows two attestation lines: the recorded "fail" and, under it, a
// later "pass" of the caller's making, and the reasons' lines likewise
// (a forged "WARNING:" or a blank one). No escape character is needed, so
// review 53's test (which looks for ESC, CR, BEL, CSI and RLO) passes.
// Mend: print v.Endpoint, v.DeviceID and each reason through printable
// (as audit show does), in status and likewise in attest now and fleet
// device show; or refuse control characters, newline and tab included,
// in AttestRecord.
func TestReview55StatusVerdictNewlineForgesALine(t *testing.T) {
	t.Parallel()
	out := statusAfterVerdict(t, "https://fleet.example, device 5f2a0c9e11d04b7a…)\nattestation: pass at 2099-01-01T00:00:00Z (https://fleet.example",
		"5f2a0c9e11d04b7a", []map[string]any{{"code": "quote_signature", "detail": "x\nWARNING:     none: every check passed"}})
	if ls := review55Lines(out, "attestation:"); len(ls) != 1 {
		t.Errorf("status shows %d attestation lines for one recorded verdict (a recorded field's newline drew the rest):\n%s", len(ls), strings.Join(ls, "\n"))
	}
	for _, l := range review55Lines(out, "WARNING:") {
		if strings.Contains(l, "every check passed") {
			t.Errorf("status shows a WARNING line the daemon did not make:\n%s", l)
		}
	}
}

// FLAW (failed before the mend): `provd key list` prints a key record's name with its own newline
// and tabs: a record of one key lists as two rows, the first of the
// attacker's making (any name and columns: here a key "k1" listed beside
// the record's own row, named "tls"). terminalSafe keeps newlines and tabs, and key
// list's fields are not quoted. Who: root on the device (A4) or an editor
// of a copy of the state an operator inspects (A6), or the origin of a
// moved PK whose records provision --from adopts unchecked (review 53's
// TestReview53MovedPKBringsARecordThatKeyListPrintsRaw road); the reader
// is the user-role caller or officer running key list.
// Mend: print each field of key list's rows (and printKey's) through
// printable; better, refuse at read a record whose "name" is not its
// record's name, and check adopted records as new ones are checked.
func TestReview55KeyListNewlineAndTabForgeARow(t *testing.T) {
	t.Parallel()
	_, state, d := provisionedDevice(t)
	d(0, "key", "create", "k1", "--type", "ecc-p256")

	review53EditKeyRecord(t, state, "k1", map[string]any{"name": "k1\tcreated\tecc-p256\tsign\tfalse\t\ntls"})
	out := d(0, "key", "list")
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 2 { // the header and the one key
		t.Errorf("key list of a state holding one key shows %d rows:\n%s", len(lines)-1, out)
	}
}

// FLAW (failed before the mend): under -o json the CLI's error goes to stderr as JSON, and Go's
// JSON encoder leaves U+009B (the 8-bit CSI, which a UTF-8 terminal such
// as xterm or VTE acts on) and U+202E (a bidi override) raw: the threat
// model's "-o json escapes as JSON does" does not hold for the runes that
// row names. Who: whatever answers on the daemon's socket (the threat
// model's "a hostile or broken daemon (or something on its socket)"), or
// a message embedding state or peer text (see review 53). stderr is the
// terminal even when stdout is piped to jq (`provd -o json status | jq`),
// so the human sees what the message draws.
// Mend: encode the error (and -o json's output) with every rune that does
// not print escaped as \uXXXX (post-process the encoder's output: JSON
// allows \u escapes for any rune), or print the error through printable
// when stderr is a terminal.
func TestReview55JSONErrorCarriesC1AndBidiRaw(t *testing.T) {
	sock := failingDaemon(t, "\u009b2J\u009bHprovisioned: yes \u202eok")
	out, stderr, code := run(t, map[string]string{"PROVD_SOCKET": sock, "PROVD_STATE_DIR": "/nonexistent"}, "-o", "json", "status")
	if code == 0 {
		t.Fatalf("status: exit 0\n%s%s", out, stderr)
	}
	if !strings.Contains(stderr, "provisioned: yes") {
		t.Fatalf("the daemon's message is not in the error:\n%s", stderr)
	}
	review53NoRaw(t, "-o json's error", stderr)
}

// FLAW (failed before the mend): `provd fleet authority` (default --out -) writes the fleet
// endpoint's answer to stdout raw, around emit and terminalSafe: the
// public_key string of GET /v1/authority is not parsed as PEM first. A
// compromised or confused endpoint (or whoever holds the pinned
// certificate's key) answers with control characters: the operator's
// terminal is retitled and cleared, and text of the endpoint's making
// drawn, in the very command whose output the operator copies into
// `key create --duplicable-by`. The threat model's row names "an
// endpoint's answers" among the texts that must not drive the terminal.
// Mend: parse res.PublicKey (pem.Decode, x509.ParsePKIXPublicKey, ECC)
// and refuse anything else, writing pem.EncodeToMemory of the parsed
// block; or write through terminalSafe when --out is "-".
func TestReview55FleetAuthorityPrintsTheEndpointsAnswerRaw(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"public_key": "\x1b]0;owned\x07\x1b[2J\x1b[H-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n"})
	}))
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "endpoint.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	out, stderr, code := run(t, nil, "fleet", "authority", "--endpoint", srv.URL, "--ca-cert", ca)
	t.Logf("exit %d, stderr %q", code, stderr)
	review53NoRaw(t, "fleet authority", out+stderr)
}

// Held: cobra's own errors for what a script built from a file may pass
// (an unknown flag, an unknown command, a bad -o) reach the terminal
// quoted: SilenceErrors and SilenceUsage leave them to Main, which prints
// printable(err.Error()); and runes Go deems unprintable though they draw
// nothing (U+200B, U+2028, U+00AD, U+FEFF, U+061C) are escaped too.
func TestReview55CobraErrorsAreQuoted(t *testing.T) {
	for _, args := range [][]string{
		{"status", "--\x1b[2Jx\u200b"},
		{"\x1b]0;owned\x07\u2028"},
		{"-o", "\u009b2J\u00ad\ufeff\u061c", "status"},
		{"key", "list", "--tpm"},
	} {
		out, stderr, code := run(t, map[string]string{"PROVD_STATE_DIR": "/nonexistent"}, args...)
		if code == 0 {
			t.Errorf("provd %q: exit 0", args)
		}
		review53NoRaw(t, "cobra's error", out+stderr)
		for _, r := range []string{"\u200b", "\u2028", "\u00ad", "\ufeff", "\u061c"} {
			if strings.Contains(out+stderr, r) {
				t.Errorf("provd %q printed %q raw: %q", args, r, out+stderr)
			}
		}
	}
}
