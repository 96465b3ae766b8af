package cli_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provd/provd/api"
	"github.com/provd/provd/cmd/provd/cli"
	"github.com/provd/provd/test/swtpmtest"
)

// openPTY and lockedBuffer are the package's (pty_internal_test.go).
func openPTY(t *testing.T) (master, slave *os.File) { return cli.OpenPTY(t) }

type lockedBuffer = cli.LockedBuffer

// TestCustodiansAtTheTerminal: on a terminal, each custodian's component is
// read with echo off (the terminal never shows it), its KCV checked at once,
// and the combined KCV shown for confirmation; answering anything but y
// imports nothing (exit 16), y imports the KEK.
func TestCustodiansAtTheTerminal(t *testing.T) {
	env := swtpmtest.Start(t)
	env.CloseTPM()
	state := filepath.Join(t.TempDir(), "state")
	if _, stderr, code := run(t, nil, "--tpm", env.Spec, "--state-dir", state, "provision", "--pcrs", "7", "--trust-on-first-use"); code != 0 {
		t.Fatal(stderr)
	}
	c := newCustodians(t, 2, 16)
	for _, answer := range []string{"n", "y"} {
		master, slave := openPTY(t)
		shown := cli.Showing(master)
		var stderr lockedBuffer
		var stdout bytes.Buffer
		done := make(chan int)
		go func() {
			done <- cli.Main(context.Background(), []string{"--tpm", env.Spec, "--state-dir", state, "kek", "import", "tty-kek", "--components", "2"},
				cli.Deps{Stdin: slave, Stdout: &stdout, Stderr: &stderr, Getenv: func(string) string { return "" }})
		}()
		// Type each line once the prompt for it is on stderr.
		typeAfter := func(prompt, line string) {
			t.Helper()
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(stderr.String(), prompt) {
				if time.Now().After(deadline) {
					t.Fatalf("no prompt %q; stderr:\n%s", prompt, stderr.String())
				}
				time.Sleep(5 * time.Millisecond)
			}
			if _, err := master.Write([]byte(line + "\n")); err != nil {
				t.Fatal(err)
			}
		}
		for i, part := range c.parts {
			typeAfter(fmt.Sprintf("custodian %d of 2: component", i+1), fmt.Sprintf("%x", part))
			typeAfter(fmt.Sprintf("custodian %d of 2: the component's KCV", i+1), c.kcvs[i])
		}
		typeAfter("does it match the key's record? [y/N]", answer)
		code := <-done
		want := map[string]int{"n": api.ExitKCV, "y": 0}[answer]
		if code != want {
			t.Fatalf("answer %q: exit %d, want %d\n%s", answer, code, want, stderr.String())
		}
		time.Sleep(50 * time.Millisecond) // the last echo
		for i, part := range c.parts {
			if strings.Contains(strings.ToLower(shown.String()), fmt.Sprintf("%x", part)[:8]) {
				t.Fatalf("the terminal showed component %d:\n%q", i+1, shown.String())
			}
			// The KCV is typed without echo too (review 47: a component
			// typed there was shown) and shown once it checks.
			if strings.Contains(shown.String(), c.kcvs[i]) {
				t.Errorf("the terminal echoed KCV %d as it was typed: %q", i+1, shown.String())
			}
			if want := fmt.Sprintf("component %d of 2: KCV %s matches", i+1, c.kcvs[i]); !strings.Contains(stderr.String(), want) {
				t.Errorf("stderr does not say %q: %s", want, stderr.String())
			}
		}
		if !strings.Contains(stderr.String(), "combined key KCV: "+c.kcv) {
			t.Errorf("the combined KCV was not shown: %s", stderr.String())
		}
	}
}
