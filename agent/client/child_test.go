package client

import (
	"bufio"
	"os"
	"os/exec"
	"testing"
	"time"
)

// testChild starts this test binary as the child test run, with env,
// and returns its output lines and a stop function (which ends the child
// by closing its stdin, then kills it); the child's first line must be
// first.
func testChild(t *testing.T, first, run string, env ...string) (<-chan string, func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+run+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stop := func() { in.Close(); cmd.Process.Kill(); cmd.Wait() }
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	select {
	case l, ok := <-lines:
		if !ok || l != first {
			stop()
			t.Fatalf("child %s: %q", run, l)
		}
	case <-time.After(30 * time.Second):
		stop()
		t.Fatalf("child %s did not start within 30s", run)
	}
	return lines, stop
}
