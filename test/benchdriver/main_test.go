package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestScenarios runs every scenario once, for both tools, on plain
// swtpm, and the daemon's measurement with a few requests: the scripts the
// benchmark times keep working, and each tool's commands are counted.
func TestScenarios(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "provd")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/provd").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for i, sc := range scenarios(bin) {
		dir := filepath.Join(t.TempDir(), "s")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		r, err := runScenario(context.Background(), dir, sc, nil, 1)
		if err != nil {
			t.Fatalf("scenario %d (%s): %v", i, sc.name, err)
		}
		if r.provdCmds == 0 || (r.toolsCmds == 0) != sc.toolsNoTPM || r.provdMS <= 0 || r.toolsMS <= 0 {
			t.Fatalf("%s: %+v", sc.name, r)
		}
	}
	d, err := runDaemon(context.Background(), filepath.Join(t.TempDir(), "d"), bin, 200, 4, 2)
	if err != nil {
		t.Fatal(err)
	}
	if d.readyMS <= 0 || d.signsPerSec <= 0 || d.rssIdleKB <= 0 || d.rssAfterKB <= 0 || d.cmdsPerRequest < 1 {
		t.Fatalf("daemon: %+v", d)
	}
}
