package systemd

import (
	"context"
	"encoding"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
)

// NewLogHandler returns the daemon's slog.Handler: journal-native when stderr
// is the journal (journal.Enabled and JOURNAL_STREAM matches stderr, which is
// how systemd tells a service its output is already going to journald), and
// a text handler on stderr otherwise. The check is the one systemd documents
// for upgrading from the stream to the native protocol, so running
// `provd serve` by hand on a systemd machine still logs to the terminal.
func NewLogHandler(opts *slog.HandlerOptions) slog.Handler {
	text := slog.NewTextHandler(os.Stderr, opts)
	if onJournal, _ := journal.StderrIsJournalStream(); onJournal && journal.Enabled() {
		return newJournalHandler(opts, journal.Send, text)
	}
	return text
}

// NewJournalHandler returns a handler that sends every record to journald as
// a native entry: PRIORITY from the level, MESSAGE, and each attribute as a
// field of its own (operation -> OPERATION, key_name -> KEY_NAME, a group
// "req" with uid -> REQ_UID), so `journalctl -u provd OPERATION=sign` and
// `-o verbose` work without parsing text.
//
// Values are resolved with slog.Value.Resolve at every level, so a type whose
// LogValue redacts (agent's Secret) is logged as its LogValue and never by its
// bytes. If journald cannot be reached the record is written as text to
// stderr instead, so it is not lost.
//
// opts.ReplaceAttr is applied to attributes, not to the MESSAGE and PRIORITY
// fields; the journal stamps its own time, so the record's time is not sent.
func NewJournalHandler(opts *slog.HandlerOptions) slog.Handler {
	return newJournalHandler(opts, journal.Send, slog.NewTextHandler(os.Stderr, opts))
}

type sendFunc func(message string, priority journal.Priority, fields map[string]string) error

type journalHandler struct {
	opts     slog.HandlerOptions
	send     sendFunc
	fallback slog.Handler
	// fields holds attributes from WithAttrs, already resolved and named.
	fields []field
	// prefix is the field-name prefix of the open groups ("REQ_").
	prefix string
	// groups are the open group names, as ReplaceAttr wants them.
	groups []string
}

type field struct{ name, value string }

func newJournalHandler(opts *slog.HandlerOptions, send sendFunc, fallback slog.Handler) *journalHandler {
	h := &journalHandler{send: send, fallback: fallback}
	if opts != nil {
		h.opts = *opts
	}
	return h
}

func (h *journalHandler) Enabled(_ context.Context, l slog.Level) bool {
	minLevel := slog.LevelInfo
	if h.opts.Level != nil {
		minLevel = h.opts.Level.Level()
	}
	return l >= minLevel
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	fields := make(map[string]string, len(h.fields)+r.NumAttrs()+3)
	for _, f := range h.fields {
		fields[f.name] = f.value
	}
	var fs []field
	r.Attrs(func(a slog.Attr) bool {
		fs = h.appendAttr(fs, h.prefix, h.groups, a)
		return true
	})
	for _, f := range fs {
		fields[f.name] = f.value
	}
	if h.opts.AddSource && r.PC != 0 {
		fr, _ := runtime.CallersFrames([]uintptr{r.PC}).Next()
		fields["CODE_FILE"] = fr.File
		fields["CODE_LINE"] = strconv.Itoa(fr.Line)
		fields["CODE_FUNC"] = fr.Function
	}
	if err := h.send(r.Message, priority(r.Level), fields); err != nil {
		return h.fallback.Handle(ctx, r)
	}
	return nil
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	if len(as) == 0 {
		return h
	}
	h2 := *h
	h2.fields = append([]field(nil), h.fields...)
	for _, a := range as {
		h2.fields = h.appendAttr(h2.fields, h.prefix, h.groups, a)
	}
	h2.fallback = h.fallback.WithAttrs(as)
	return &h2
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.prefix = h.prefix + fieldName(name) + "_"
	h2.groups = append(h.groups[:len(h.groups):len(h.groups)], name)
	h2.fallback = h.fallback.WithGroup(name)
	return &h2
}

// appendAttr resolves a (LogValuer first, so redaction applies) and appends
// it, flattening groups into prefixed field names.
func (h *journalHandler) appendAttr(fs []field, prefix string, groups []string, a slog.Attr) []field {
	a.Value = a.Value.Resolve()
	if a.Value.Kind() != slog.KindGroup && h.opts.ReplaceAttr != nil {
		a = h.opts.ReplaceAttr(groups, a)
		a.Value = a.Value.Resolve()
	}
	if a.Equal(slog.Attr{}) {
		return fs
	}
	if a.Value.Kind() == slog.KindGroup {
		members := a.Value.Group()
		if len(members) == 0 {
			return fs
		}
		if a.Key != "" {
			prefix += fieldName(a.Key) + "_"
			groups = append(groups[:len(groups):len(groups)], a.Key)
		}
		for _, m := range members {
			fs = h.appendAttr(fs, prefix, groups, m)
		}
		return fs
	}
	name := prefix + fieldName(a.Key)
	if reserved[name] {
		// An attribute must not overwrite what journald and its readers
		// rely on (a "priority" attribute turning an error into debug).
		name = "ATTR_" + name
	}
	return append(fs, field{name, valueString(a.Value)})
}

// reserved are the fields this handler or journald's conventions own.
var reserved = map[string]bool{
	"MESSAGE": true, "PRIORITY": true, "MESSAGE_ID": true,
	"CODE_FILE": true, "CODE_LINE": true, "CODE_FUNC": true,
	"SYSLOG_IDENTIFIER": true, "SYSLOG_FACILITY": true, "SYSLOG_PID": true,
	"SYSLOG_TIMESTAMP": true, "ERRNO": true,
}

// fieldName turns an attribute key into a journal field name: upper case
// letters, digits and underscores, not starting with an underscore (those are
// trusted fields journald sets itself) or a digit, at most 64 characters.
func fieldName(key string) string {
	var b strings.Builder
	for _, r := range strings.ToUpper(key) {
		switch {
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	n := b.String()
	if n == "" || n[0] == '_' || (n[0] >= '0' && n[0] <= '9') {
		n = "F" + n
	}
	if len(n) > 64 {
		n = n[:64]
	}
	return n
}

// valueString formats a resolved value the way the text handler would, so a
// field reads the same in the journal and on a terminal.
func valueString(v slog.Value) string {
	switch v.Kind() {
	case slog.KindString:
		return v.String()
	case slog.KindTime:
		return v.Time().Format(time.RFC3339Nano)
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			return x.Error()
		case encoding.TextMarshaler:
			b, err := x.MarshalText()
			if err != nil {
				return "!ERROR:" + err.Error()
			}
			return string(b)
		case []byte:
			return fmt.Sprintf("%q", x)
		}
	}
	return v.String()
}

// priority maps slog levels onto syslog priorities. Levels between Info and
// Warn (custom "notice" levels) become notice.
func priority(l slog.Level) journal.Priority {
	switch {
	case l < slog.LevelInfo:
		return journal.PriDebug
	case l == slog.LevelInfo:
		return journal.PriInfo
	case l < slog.LevelWarn:
		return journal.PriNotice
	case l < slog.LevelError:
		return journal.PriWarning
	default:
		return journal.PriErr
	}
}
