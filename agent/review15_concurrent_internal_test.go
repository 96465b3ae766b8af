package agent

// The fifteenth review (see review15_anchormove_test.go): two provd
// processes on one state directory, one in the middle of a move.

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/test/swtpmtest"
)

// FLAW (failed before the mend). The officer's one-shot `provd audit reanchor` is in the middle of
// its move (audit.gate written with the mark, the old index removed, its
// NV_DefineSpace on the way: held here a moment, as a loaded TPM or
// scheduler holds it), when the daemon takes a request whose record
// opens the trail. The daemon's finishMove sees the mark and the move's
// record not yet in, and the handle holding nothing: it decides the move
// was interrupted, waits for the log's lock (the reanchor holds it), and
// once the reanchor is done makes a second move nobody interrupted,
// recorded as "a move ... that a crash or a fault interrupted, made
// again", over the index the reanchor has just made. The decision is
// taken outside the log's lock and not taken again under it. (With the
// hold past the lock's 5 s the daemon's request fails instead; and the
// reanchor's endMove can clear the daemon's mark: endMove does not check
// that audit.gate is still its own move's.) Held when one move is made.
func TestReview15ConcurrentProcessMakesTheMoveAgain(t *testing.T) {
	w := &review8Wire{}
	bz := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(w.wrap), swtpmtest.WithBus(bz), swtpmtest.WithResourceManager())
	ctx := context.Background()
	dir := t.TempDir() + "/state"
	cli := review8Agent(t, env.TPM, dir) // the officer's one-shot reanchor
	if _, err := cli.Provision(ctx, review8Req()); err != nil {
		t.Fatal(err)
	}
	rtp, _ := review8Client(t, w)
	daemon := review8Agent(t, rtp, dir)
	a3 := api.WithCaller(ctx, api.Caller{UID: 4242})
	before, err := audit.ReadRecords(filepath.Join(dir, audit.FileName))
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	fired := false
	done := make(chan error, 1)
	bz.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		if fired || swtpmtest.CommandCode(cmd) != tpm2.TPMCCNVDefineSpace {
			mu.Unlock()
			return nil, nil, false
		}
		fired = true
		mu.Unlock()
		go func() { done <- daemon.RecordRefusal(a3, "key-delete", "review15-during") }()
		time.Sleep(700 * time.Millisecond) // the daemon reads audit.gate, the log and the handle meanwhile
		return nil, nil, false
	})
	_, rerr := cli.AuditReanchor(ctx)
	bz.Set(nil)
	derr := <-done
	if !fired {
		t.Fatal("not mounted")
	}
	t.Logf("the reanchor: %v; the daemon's record meanwhile: %v", rerr, derr)
	if rerr != nil {
		t.Fatalf("the reanchor: %v", rerr)
	}
	after, err := audit.ReadRecords(filepath.Join(dir, audit.FileName))
	if err != nil {
		t.Fatal(err)
	}
	var moves []audit.Record
	for _, r := range after[len(before):] {
		if r.Op == audit.OpAnchor {
			moves = append(moves, r)
		}
	}
	for _, m := range moves {
		t.Logf("move: uid %d reason %q replaced %s", m.UID, m.Objects["reason"], m.Objects["replaced_nv_name"])
	}
	if _, err := review8Agent(t, env.TPM, dir).AuditVerify(ctx); err != nil {
		t.Errorf("verify after both: %v", err)
	}
	if len(moves) != 1 {
		t.Errorf("one reanchor, no crash: %d moves recorded", len(moves))
	}
	for _, m := range moves {
		if strings.Contains(m.Objects["reason"], "interrupted") {
			t.Errorf("a move recorded as interrupted by a crash or a fault where none was: %v", m.Objects)
		}
	}
}
