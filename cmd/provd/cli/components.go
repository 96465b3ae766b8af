package cli

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/keywrap"
)

// Key components as custodians enter them (provd kek import, provd key
// recover): from the terminal without echo, each custodian in turn, or one
// per --component-fd; never from flags or the environment, which other
// processes and shell histories can read. Each component is checked against
// its KCV as it is entered, so a mistyped one is caught at its custodian.

// maxComponentInput bounds what one component's entry may be.
const maxComponentInput = 1024

// componentSource says where components come from.
type componentSource struct {
	n   int
	fds []int
}

// components are the entered components with their KCVs; the caller wipes.
type components struct {
	parts [][]byte
	kcvs  []string
}

func (c *components) wipe() {
	for _, p := range c.parts {
		clear(p)
	}
}

// parseComponent reads a component as HSM sheets print it: hex, in groups
// separated by spaces or dashes if so printed.
func parseComponent(s []byte) ([]byte, error) {
	clean := make([]byte, 0, len(s))
	defer clear(clean)
	for _, c := range s {
		switch c {
		case ' ', '-', '\t', '\r', '\n':
		default:
			clean = append(clean, c)
		}
	}
	out := make([]byte, hex.DecodedLen(len(clean)))
	if _, err := hex.Decode(out, clean); err != nil || (len(out) != 16 && len(out) != 32) {
		clear(out)
		return nil, fmt.Errorf("%w: a component is 32 or 64 hex digits (AES-128 or AES-256)", api.ErrBadInput)
	}
	return out, nil
}

// readComponents enters the components: from the fds, or from the
// terminal, each checked against its KCV as it comes.
func (a *app) readComponents(src componentSource) (*components, error) {
	if src.n < 2 || src.n > agent.MaxComponents {
		return nil, usageError(fmt.Errorf("--components is 2 to %d (split knowledge: no custodian alone knows the key)", agent.MaxComponents))
	}
	if len(src.fds) != 0 && len(src.fds) != src.n {
		return nil, usageError(fmt.Errorf("%d --component-fd for --components %d", len(src.fds), src.n))
	}
	tty, isTTY := a.terminal()
	if len(src.fds) == 0 && !isTTY {
		return nil, usageError(errors.New("components are entered on a terminal (without echo) or through --component-fd, never from flags, files named on the command line or the environment"))
	}
	c := &components{}
	for i := range src.n {
		var part []byte
		var kcv string
		var err error
		if len(src.fds) > 0 {
			part, kcv, err = readComponentFD(src.fds[i])
		} else {
			part, kcv, err = a.promptComponent(tty, i, src.n)
		}
		if err != nil {
			err = fmt.Errorf("component %d: %w", i+1, err)
		} else {
			err = agent.CheckComponent(i, part, kcv) // names the component
		}
		if err != nil {
			clear(part)
			c.wipe()
			return nil, err
		}
		c.parts = append(c.parts, part)
		c.kcvs = append(c.kcvs, strings.ToLower(kcv))
		if len(src.fds) == 0 {
			fmt.Fprintf(a.deps.Stderr, "component %d of %d: KCV %s matches\n", i+1, src.n, strings.ToLower(kcv))
		}
	}
	return c, nil
}

// terminal is stdin when it is a terminal.
func (a *app) terminal() (*os.File, bool) {
	tty, ok := a.deps.Stdin.(*os.File)
	if !ok {
		return nil, false
	}
	_, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	return tty, err == nil
}

// readComponentFD reads one custodian's entry from file descriptor fd:
// the component on the first line, its KCV on the second.
func readComponentFD(fd int) ([]byte, string, error) {
	if fd < 3 {
		return nil, "", usageError(fmt.Errorf("--component-fd %d: use a descriptor of its own (3 or above), not stdin, stdout or stderr", fd))
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("fd %d", fd))
	if f == nil {
		return nil, "", usageError(fmt.Errorf("--component-fd %d is not open", fd))
	}
	defer f.Close()
	buf := make([]byte, maxComponentInput+1)
	defer clear(buf)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, "", fmt.Errorf("--component-fd %d: %w", fd, err)
	}
	if n > maxComponentInput {
		return nil, "", fmt.Errorf("%w: --component-fd %d carries more than %d bytes", api.ErrBadInput, fd, maxComponentInput)
	}
	lines := bytes.Split(bytes.TrimSpace(buf[:n]), []byte("\n"))
	if len(lines) != 2 {
		return nil, "", fmt.Errorf("%w: --component-fd %d: want two lines, the component (hex) and its KCV", api.ErrBadInput, fd)
	}
	part, err := parseComponent(lines[0])
	if err != nil {
		return nil, "", err
	}
	return part, string(bytes.TrimSpace(lines[1])), nil
}

// promptComponent asks custodian i for their component, without echo, and
// its KCV.
func (a *app) promptComponent(tty *os.File, i, n int) ([]byte, string, error) {
	line, err := readNoEcho(tty, func() {
		fmt.Fprintf(a.deps.Stderr, "custodian %d of %d: component (hex, not shown): ", i+1, n)
	})
	fmt.Fprintln(a.deps.Stderr)
	defer clear(line)
	if err != nil {
		return nil, "", err
	}
	part, err := parseComponent(line)
	if err != nil {
		return nil, "", err
	}
	// Without echo too (found by review 47: a custodian who saw nothing at
	// the component's prompt typed the component again here, and the
	// terminal showed it); it is shown once it checks ("KCV ... matches").
	kcv, err := readNoEcho(tty, func() {
		fmt.Fprintf(a.deps.Stderr, "custodian %d of %d: the component's KCV (6 hex digits, not shown): ", i+1, n)
	})
	fmt.Fprintln(a.deps.Stderr)
	defer clear(kcv)
	if err != nil {
		clear(part)
		return nil, "", err
	}
	return part, strings.TrimSpace(string(kcv)), nil
}

// readNoEcho reads one line from the terminal with echo off, restoring the
// terminal's settings after. The prompt is shown once echo is off: a
// component typed the moment the prompt shows (or pasted) is never echoed
// (found by make test: with the prompt first, the terminal showed a
// component typed right after it).
func readNoEcho(tty *os.File, prompt func()) ([]byte, error) {
	fd := int(tty.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	noEcho := *old
	noEcho.Lflag &^= unix.ECHO
	noEcho.Lflag |= unix.ICANON
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &noEcho); err != nil {
		return nil, err
	}
	defer unix.IoctlSetTermios(fd, unix.TCSETS, old)
	prompt()
	line := make([]byte, 0, 128)
	var b [1]byte
	for len(line) <= maxComponentInput { // the bound's bytes, then its newline (review 48)
		n, err := tty.Read(b[:])
		if n == 1 {
			if b[0] == '\n' {
				return line, nil
			}
			line = append(line, b[0])
		}
		if err != nil {
			clear(line)
			return nil, err
		}
	}
	clear(line)
	// The rest of the line is read and dropped, never left in the
	// terminal's input queue for the shell that runs next, which would run
	// it and keep it in its history (found by review 47: a component typed
	// at the KCV's prompt). A canonical terminal's line is at most 4 KiB;
	// the drain stops at a newline, an error, or 64 KiB.
	for dropped := 0; dropped < 64<<10; dropped++ {
		if n, err := tty.Read(b[:]); err != nil || (n == 1 && b[0] == '\n') {
			break
		}
	}
	clear(b[:])
	return nil, fmt.Errorf("%w: a line here is at most %d bytes", api.ErrBadInput, maxComponentInput)
}

// combinedKCV decides the combined key's KCV the custodians confirm: the
// one given with --kcv, or, on a terminal, the computed one after a yes.
func (a *app) combinedKCV(c *components, given string) (string, error) {
	if given != "" {
		return given, nil
	}
	tty, ok := a.terminal()
	if !ok {
		return "", usageError(errors.New("--kcv is required without a terminal: the combined key's KCV from its record sheet, which provd checks"))
	}
	key, err := keywrap.Combine(c.parts)
	if err != nil {
		return "", fmt.Errorf("%w: %w", api.ErrBadInput, err)
	}
	kcv, _ := keywrap.KCV(key)
	clear(key)
	fmt.Fprintf(a.deps.Stderr, "combined key KCV: %x; does it match the key's record? [y/N] ", kcv)
	answer, _ := bufio.NewReader(io.LimitReader(tty, 16)).ReadString('\n')
	if strings.TrimSpace(strings.ToLower(answer)) != "y" {
		return "", fmt.Errorf("%w: the custodians did not confirm the combined KCV %x; nothing was imported", api.ErrKCVMismatch, kcv)
	}
	return hex.EncodeToString(kcv[:]), nil
}
