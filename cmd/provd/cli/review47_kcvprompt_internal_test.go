package cli

// Review 47: the terminal's KCV prompt, attacked with the slip review 45's
// mend was for: a custodian who saw nothing at the component's prompt (no
// echo) types the component again where its KCV goes.

import (
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func review47Wait(t *testing.T, b *lockedBuffer, s string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(b.String(), s); {
		if time.Now().After(deadline) {
			t.Fatalf("waited for %q; stderr: %q", s, b.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// review47KCVSlip runs readComponents on a terminal where custodian 1
// types their AES-256 component at its prompt, then again, grouped by
// fours as the sheet prints it, at the KCV prompt. It returns what the
// terminal showed, what stayed unread in the terminal's input queue (what
// the shell reads once provd exits) and the component.
func review47KCVSlip(t *testing.T) (screen, left, component string) {
	master, slave := openPTY(t)
	shown := showing(master)
	comp := make([]byte, 32)
	rand.Read(comp)
	h := hex.EncodeToString(comp)
	var groups []string
	for i := 0; i < len(h); i += 4 {
		groups = append(groups, h[i:i+4])
	}
	stderr := &lockedBuffer{}
	a := &app{deps: Deps{Stdin: slave, Stdout: &lockedBuffer{}, Stderr: stderr}}
	done := make(chan error, 1)
	go func() {
		c, err := a.readComponents(componentSource{n: 2})
		if c != nil {
			c.wipe()
		}
		done <- err
	}()
	review47Wait(t, stderr, "custodian 1 of 2: component")
	master.WriteString(h + "\n")
	review47Wait(t, stderr, "the component's KCV")
	master.WriteString(strings.Join(groups, " ") + "\n")
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a component in the KCV field was taken")
		}
		if strings.Contains(strings.ToLower(err.Error()+stderr.String()), h[40:52]) {
			t.Errorf("the error or stderr repeats the component: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("readComponents did not return")
	}
	time.Sleep(200 * time.Millisecond) // the screen's last echo
	n, err := unix.IoctlGetInt(int(slave.Fd()), unix.TIOCINQ)
	if err != nil {
		t.Fatal(err)
	}
	if n > 0 {
		buf := make([]byte, n)
		m, _ := slave.Read(buf)
		left = string(buf[:m])
	}
	return shown.String(), left, h
}

// FLAW (failed before the mend): a component typed at the terminal's KCV prompt outlives provd in
// the terminal. promptComponent reads the KCV through
// io.LimitReader(tty, 64): an AES-256 component grouped by fours, as
// sheets print it and parseComponent accepts (79 characters), is read only
// to its 64th character; provd refuses the KCV and exits, and the rest of
// the line, the component's last 12 or so hex digits, stays in the
// terminal's input queue, where the custodian's shell reads it as a
// command: "command not found" with the digits, and a line of the shell's
// history file on disk. (A 64-digit component leaves only its newline; a
// longer slip more.) Mend (components.go:166, promptComponent): read the
// KCV line to its newline whatever its length, discarding past a bound
// (or unix.IoctlSetInt(fd, unix.TCFLSH, unix.TCIFLUSH) before returning an
// error), so that nothing typed at provd's prompts is left for the next
// program.
func TestReview47KCVPromptLeavesTheComponentForTheShell(t *testing.T) {
	_, left, h := review47KCVSlip(t)
	if compact := strings.ReplaceAll(left, " ", ""); len(compact) > 1 {
		t.Errorf("after provd refused the KCV, %q stays in the terminal's input queue for the shell (the component ends %s)", left, h[52:])
	}
}

// FLAW (failed before the mend): the KCV prompt echoes, so a component typed there (the slip above:
// the component's own prompt showed nothing, so the custodian types it
// again at the next one) is on the screen in full, for the room, a
// screen recording or the terminal's scrollback, although provd's refusal
// no longer repeats it (review 45's mend covers the error, not the echo).
// Mend (components.go:165-166): read the KCV with echo off too (readNoEcho)
// and show it back only once it parses as 6 hex digits, as readComponents
// already does after a match ("component 1 of 2: KCV ... matches").
func TestReview47KCVPromptEchoesAComponentTypedThere(t *testing.T) {
	screen, _, h := review47KCVSlip(t)
	low := strings.ToLower(screen)
	if strings.Contains(low, h[:16]) {
		t.Fatalf("the component's own prompt echoed it: %q", low)
	}
	if typed := h[:4] + " " + h[4:8] + " " + h[8:12] + " " + h[12:16]; strings.Contains(low, typed) {
		i := strings.Index(low, typed)
		t.Errorf("the terminal shows the component typed at the KCV prompt: %q", low[i:min(len(low), i+60)]+"...")
	}
}
