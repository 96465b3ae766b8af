package cli

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/provd/provd/keywrap"
)

// review45FD is a descriptor of its own that reads content (readComponentFD
// takes and closes it).
func review45FD(t *testing.T, content string) int {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "custodian")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(f.Name(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// FLAW (failed before the mend): a custodian's --component-fd entry whose AES-256 component sheet
// prints the component on two lines of 32 hex digits, and who forgot the
// KCV line, is read as an AES-128 component (the first line) and a "KCV"
// (the second line: the other half of the component); the refusal quotes
// that line verbatim (agent/kek.go parseKCV, called through
// agent.CheckComponent from readComponents), so half of the component is
// printed to stderr and lands in the shell's scrollback or a CI log. The
// refusal must name the mistake, not repeat the secret.
func TestReview45ComponentEntryNeverEchoesTheComponent(t *testing.T) {
	comp := make([]byte, 32)
	rand.Read(comp)
	other := make([]byte, 32)
	rand.Read(other)
	k, _ := keywrap.KCV(other)
	h := hex.EncodeToString(comp)
	var stderr bytes.Buffer
	a := &app{deps: Deps{Stdin: strings.NewReader(""), Stdout: new(bytes.Buffer), Stderr: &stderr}}
	fds := []int{review45FD(t, hex.EncodeToString(other)+"\n"+hex.EncodeToString(k[:])+"\n"), review45FD(t, h[:32]+"\n"+h[32:]+"\n")}
	c, err := a.readComponents(componentSource{n: 2, fds: fds})
	if err == nil {
		c.wipe()
		t.Fatal("a component without its KCV line was taken")
	}
	for _, out := range []string{err.Error(), stderr.String()} {
		if strings.Contains(strings.ToLower(out), h[32:]) {
			t.Errorf("the refusal repeats the second half of the component: %q", out)
		}
	}
}
