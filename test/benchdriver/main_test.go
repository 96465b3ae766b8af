package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// TestScenarios runs every scenario once, for both tools, on plain
// swtpm, at a small size (3 signatures, 1 MiB images), and the daemon's
// measurement with a few requests: the scripts the benchmark times keep
// working, and each tool's commands are counted.
func TestScenarios(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "provd")
	// provd-fleet beside provd: the quote row's fleet serve runs it.
	for _, b := range []string{"provd", "provd-fleet"} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, b), "../../cmd/"+b).CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b, err, out)
		}
	}
	root := t.TempDir() // a subtest's would hold its name: commas (which swtpm's options split on) and length (a socket's path has 108 bytes)
	for i, sc := range scenarios(bin, size{signs: 3, imageMiB: 1}) {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel() // each scenario has its own swtpm instances and directory
			dir := filepath.Join(root, "s"+strconv.Itoa(i))
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			r, err := runScenario(context.Background(), dir, sc, nil, 1)
			if err != nil {
				t.Fatal(err)
			}
			if r.provdCmds == 0 || (r.toolsCmds == 0) != sc.toolsNoTPM || r.provdMS <= 0 || r.toolsMS <= 0 {
				t.Fatalf("%+v", r)
			}
		})
	}
	t.Run("daemon", func(t *testing.T) {
		t.Parallel()
		d, err := runDaemon(context.Background(), filepath.Join(root, "d"), bin, 200, 4, 2, nil)
		if err != nil {
			t.Fatal(err)
		}
		if d.readyMS <= 0 || d.signsPerSec <= 0 || d.rssIdleKB <= 0 || d.rssAfterKB <= 0 || d.cmdsPerRequest < 1 {
			t.Fatalf("%+v", d)
		}
	})
}
