package systemd

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/coreos/go-systemd/v22/journal"
)

// Held: a caller's text in a logged attribute forges no journal entry and
// no field. The daemon logs a request's key name as sent (key_name, from
// any caller that holds the route's role) and a failed request's error
// text. On the journal each attribute is one field of the native
// protocol: a value with a newline stays one field (go-systemd writes it
// in the protocol's length-prefixed form), MESSAGE is the code's constant
// and PRIORITY the record's level, whatever the value holds; off the
// journal (and when journald cannot be reached, the fallback) the text
// handler quotes the value, one line per record.
func TestReview53JournalFieldsHoldACallersText(t *testing.T) {
	forged := "k\nPRIORITY=0\nMESSAGE=zeroize ok\n\x1b[2K\r"
	log, rec := newTestJournal(&slog.HandlerOptions{Level: slog.LevelDebug})
	log.LogAttrs(t.Context(), slog.LevelInfo, "request failed",
		slog.String("operation", "key-delete"), slog.String("key_name", forged), slog.String("error", "bad_input: key name "+forged))
	if len(rec.entries) != 1 {
		t.Fatalf("%d entries, want 1", len(rec.entries))
	}
	e := rec.entries[0]
	if e.msg != "request failed" || e.pri != journal.PriInfo {
		t.Errorf("MESSAGE %q PRIORITY %d", e.msg, e.pri)
	}
	if e.fields["KEY_NAME"] != forged || len(e.fields) != 3 {
		t.Errorf("fields %q", e.fields)
	}

	var text bytes.Buffer
	h := newJournalHandler(&slog.HandlerOptions{}, func(string, journal.Priority, map[string]string) error {
		return errors.New("journald unreachable")
	}, slog.NewTextHandler(&text, nil))
	slog.New(h).Info("request failed", "key_name", forged)
	if out := strings.TrimSuffix(text.String(), "\n"); strings.ContainsAny(out, "\n\r\x1b") {
		t.Errorf("the fallback wrote %q", text.String())
	}
}
