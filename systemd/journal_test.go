package systemd

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"testing/slogtest"

	"github.com/coreos/go-systemd/v22/journal"
)

// entry is one journal entry as journal.Send would receive it.
type entry struct {
	msg    string
	pri    journal.Priority
	fields map[string]string
}

type recorder struct{ entries []entry }

func (r *recorder) send(msg string, pri journal.Priority, fields map[string]string) error {
	r.entries = append(r.entries, entry{msg, pri, fields})
	return nil
}

// secret mimics the agent's Secret: String leaks on purpose here, so the test
// proves the handler goes through LogValue and never formats the value itself.
type secret []byte

func (s secret) String() string               { return string(s) }
func (s secret) LogValue() slog.Value         { return slog.StringValue("REDACTED") }
func (s secret) MarshalText() ([]byte, error) { return s, nil }

func newTestJournal(opts *slog.HandlerOptions) (*slog.Logger, *recorder) {
	rec := &recorder{}
	return slog.New(newJournalHandler(opts, rec.send, slog.NewTextHandler(&bytes.Buffer{}, opts))), rec
}

func TestJournalFields(t *testing.T) {
	log, rec := newTestJournal(&slog.HandlerOptions{Level: slog.LevelDebug})
	log.With("caller_uid", 1000).WithGroup("req").Info("key signed",
		"operation", "sign", "key-name", "fw/signing", slog.Group("tpm", "handle", "0x80000001"))

	if len(rec.entries) != 1 {
		t.Fatalf("%d entries, want 1", len(rec.entries))
	}
	e := rec.entries[0]
	if e.msg != "key signed" || e.pri != journal.PriInfo {
		t.Errorf("MESSAGE %q PRIORITY %d, want %q %d", e.msg, e.pri, "key signed", journal.PriInfo)
	}
	want := map[string]string{
		"CALLER_UID":     "1000",
		"REQ_OPERATION":  "sign",
		"REQ_KEY_NAME":   "fw/signing",
		"REQ_TPM_HANDLE": "0x80000001",
	}
	for k, v := range want {
		if e.fields[k] != v {
			t.Errorf("%s=%q, want %q (fields %v)", k, e.fields[k], v, e.fields)
		}
	}
	if len(e.fields) != len(want) {
		t.Errorf("fields %v, want exactly %v", e.fields, want)
	}
}

func TestJournalPriority(t *testing.T) {
	tests := []struct {
		level slog.Level
		want  journal.Priority
	}{
		{slog.LevelDebug, journal.PriDebug},
		{slog.LevelInfo, journal.PriInfo},
		{slog.LevelInfo + 2, journal.PriNotice},
		{slog.LevelWarn, journal.PriWarning},
		{slog.LevelError, journal.PriErr},
		{slog.LevelError + 4, journal.PriErr},
	}
	for _, tt := range tests {
		t.Run(tt.level.String(), func(t *testing.T) {
			log, rec := newTestJournal(&slog.HandlerOptions{Level: slog.LevelDebug})
			log.Log(context.Background(), tt.level, "m")
			if len(rec.entries) != 1 || rec.entries[0].pri != tt.want {
				t.Errorf("entries %v, want one with priority %d", rec.entries, tt.want)
			}
		})
	}

	log, rec := newTestJournal(nil) // default level: info
	log.Debug("hidden")
	if len(rec.entries) != 0 {
		t.Errorf("debug logged at the default level: %v", rec.entries)
	}
}

// A LogValuer's LogValue is what gets logged, wherever the value sits.
func TestJournalRespectsLogValuer(t *testing.T) {
	log, rec := newTestJournal(nil)
	s := secret("hunter2")
	log.With("pin", s).Info("unsealed", "blob", s, slog.Group("auth", "password", s), "err", errors.New("plain"))

	e := rec.entries[0]
	for k, v := range e.fields {
		if strings.Contains(v, "hunter2") {
			t.Errorf("%s=%q leaks the secret", k, v)
		}
	}
	for _, k := range []string{"PIN", "BLOB", "AUTH_PASSWORD"} {
		if e.fields[k] != "REDACTED" {
			t.Errorf("%s=%q, want REDACTED", k, e.fields[k])
		}
	}
	if e.fields["ERR"] != "plain" {
		t.Errorf("ERR=%q, want the error text", e.fields["ERR"])
	}
}

// Attributes cannot overwrite the fields the journal and its readers rely
// on, and odd keys still become valid field names.
func TestJournalFieldNames(t *testing.T) {
	log, rec := newTestJournal(nil)
	log.Error("boom", "priority", "7", "message", "fake", "_PID", "1", "2fa", "x", "", "empty-key")
	e := rec.entries[0]
	if e.pri != journal.PriErr || e.msg != "boom" {
		t.Errorf("PRIORITY %d MESSAGE %q overwritten", e.pri, e.msg)
	}
	want := map[string]string{"ATTR_PRIORITY": "7", "ATTR_MESSAGE": "fake", "F_PID": "1", "F2FA": "x", "F": "empty-key"}
	for k, v := range want {
		if e.fields[k] != v {
			t.Errorf("%s=%q, want %q (fields %v)", k, e.fields[k], v, e.fields)
		}
	}
}

// When journald cannot take the entry, it goes to stderr instead of being lost.
func TestJournalFallback(t *testing.T) {
	var buf bytes.Buffer
	h := newJournalHandler(nil, func(string, journal.Priority, map[string]string) error {
		return errors.New("journald restarting")
	}, slog.NewTextHandler(&buf, nil))
	slog.New(h).Info("still here", "operation", "seal")
	if !strings.Contains(buf.String(), "still here") || !strings.Contains(buf.String(), "operation=seal") {
		t.Errorf("fallback output %q", buf.String())
	}
}

// slogtest checks the handler against the slog.Handler contract (groups,
// WithAttrs, empty attributes, LogValuer resolution).
func TestJournalHandlerContract(t *testing.T) {
	var rec recorder
	newHandler := func(t *testing.T) slog.Handler {
		rec = recorder{}
		return newJournalHandler(nil, rec.send, slog.NewTextHandler(&bytes.Buffer{}, nil))
	}
	result := func(t *testing.T) map[string]any {
		if len(rec.entries) != 1 {
			t.Fatalf("%d entries", len(rec.entries))
		}
		e := rec.entries[0]
		m := map[string]any{slog.MessageKey: e.msg, slog.LevelKey: e.pri}
		// The journal stamps entries itself and the handler sends no
		// time; stand in for it except where slogtest wants none.
		if !strings.HasSuffix(t.Name(), "/zero-time") {
			m[slog.TimeKey] = "journal"
		}
		for k, v := range e.fields {
			insert(m, strings.Split(slogtestKey(k), "_"), v)
		}
		return m
	}
	slogtest.Run(t, newHandler, result)
}

// slogtestKey undoes the upper-casing of field names for slogtest's keys,
// which are lower case except for its groups G and H.
func slogtestKey(field string) string {
	parts := strings.Split(strings.ToLower(field), "_")
	for i, p := range parts {
		if p == "g" || p == "h" {
			parts[i] = strings.ToUpper(p)
		}
	}
	return strings.Join(parts, "_")
}

// insert nests flattened field names back into groups for slogtest.
func insert(m map[string]any, path []string, v string) {
	if len(path) == 1 {
		m[path[0]] = v
		return
	}
	sub, ok := m[path[0]].(map[string]any)
	if !ok {
		sub = map[string]any{}
		m[path[0]] = sub
	}
	insert(sub, path[1:], v)
}

// Outside journald's stream (a shell, a container) the daemon logs text on
// stderr, even on a machine where journald runs.
func TestNewLogHandlerOutsideJournal(t *testing.T) {
	t.Setenv("JOURNAL_STREAM", "")
	if _, ok := NewLogHandler(nil).(*slog.TextHandler); !ok {
		t.Errorf("NewLogHandler without JOURNAL_STREAM is %T, want *slog.TextHandler", NewLogHandler(nil))
	}
	t.Setenv("JOURNAL_STREAM", "1:1") // someone else's stream, not our stderr
	if _, ok := NewLogHandler(nil).(*slog.TextHandler); !ok {
		t.Errorf("NewLogHandler with a foreign JOURNAL_STREAM is %T, want *slog.TextHandler", NewLogHandler(nil))
	}
}
