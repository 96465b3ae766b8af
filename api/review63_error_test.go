package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"
)

// FLAW (failed before the mend): api.DecodeError (review 62) Go-quotes a daemon's message that
// holds a newline, and the daemon sends such messages itself: errors.Join
// puts one between its parts ("audit trail (see provd audit verify): " +
// errors.Join(ErrTampered, err), agent.go; every `errors.Join(err,
// Flush/Close)`). The CLI already quotes what does not print when it
// prints text (printable), so text output is the same both ways; but
// under `-o json` (docs/api.md: the error "in the daemon's form") the
// message a script reads through the daemon is the Go-quoted string,
// surrounding quotes and backslash escapes included, while in-process it
// is the message itself: the same failure, two texts, and a consumer that
// matches a message's start ("audit trail") no longer matches through the
// daemon. Attacker: none (a legitimate message mangled). Suggested fix:
// keep DecodeError's message unquoted but bounded, and leave the quoting
// to where text is shown (the CLI's printable and terminalSafe, slog's
// quoting); or flatten "\n" to "; " in the daemon's messages before they
// leave, so no message needs quoting; in either case the daemon's and
// in-process forms agree.
func TestReview63DaemonMultiLineMessageKeepsItsForm(t *testing.T) {
	inProcess := fmt.Errorf("audit trail (see provd audit verify): %w",
		errors.Join(ErrTampered, errors.New("audit: record 17: hash chain broken")))
	body, err := json.Marshal(NewErrorBody(inProcess, nil))
	if err != nil {
		t.Fatal(err)
	}
	viaDaemon := DecodeError(http.StatusInternalServerError, body)
	if !errors.Is(viaDaemon, ErrTampered) {
		t.Errorf("the kinds were lost: %v", viaDaemon)
	}
	// What `provd -o json` writes for each (cli.Main: NewErrorBody).
	want := NewErrorBody(inProcess, nil).Error.Message
	got := NewErrorBody(viaDaemon, nil).Error.Message
	if got != want {
		t.Errorf("-o json's message through the daemon:\n  %q\nin-process:\n  %q", got, want)
	}
}
