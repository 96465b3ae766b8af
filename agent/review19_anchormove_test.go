package agent_test

// The nineteenth review: attacks and faults on the mend of review 18
// (b1d54f9: a reanchor run again keeps a marked move's decision to
// archive; an archive kept only if its SHA-256 is the record's, written
// whole by a rename; the log checked under the lock to be still at its
// path, audit.ErrMoved, zeroize's rename under it; an open log that
// another process archived or began anew opened again, audit.Log.Stale).
//
// Tests marked FLAW failed on the code under review, each before the mend
// that follows it (a fresh log begun in a new file renamed over the old
// one, so an open Log sees another file; the officer's reanchor records
// an archive lost where the log is empty and the archive not there whole,
// Move.LostOK, any other move calls it tampered; the archive's temporary
// file made O_EXCL under a random name); tests marked Held passed.
//
// FLAW: TestReview19DaemonAfterAFreshMoveByAnotherOfALongerRecord (Stale
// judges by size only: another process's archiving reanchor whose record
// is no shorter than the log the daemon read goes unseen; the daemon's
// seal runs, then is reported tampered, exit 14; review 18's own test
// holds only for a daemon that had sealed three times; unit form:
// audit.TestReview19StaleMissesALogBegunAnewLonger),
// TestReview19FreshMarkThenLogRemovedIsADeadEnd (an interrupted archiving
// reanchor's mark, then audit.log removed: every seal and the officer's
// reanchor refused, "the log is cut already", exit 1; only an edit of
// audit.gate recovers), TestReview19PlantedTempArchiveHangsTheMove (A4:
// a FIFO at writeArchive's predictable "<archive>.<pid>.tmp" hangs the
// move made again, holding the log's flock and the agent's lock).
// Held: audit.TestReview19CrashAfterTheCutMadeAgain (a crash after the
// archive and the cut, before the record: made again, the archive kept,
// the record its first line); review 18's tests, TestReview7CommandCountsAsClaimed
// and TestKeyCosts pass on the code under review (Stale and the gate read
// cost no TPM command).

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/test/swtpmtest"
)

// review19EditFirstOp changes one byte of the log's first provision line
// in place (A4, or whoever can write audit.log): same size, the chain
// broken, so the officer's reanchor archives the log and begins it anew.
func review19EditFirstOp(t *testing.T, dir string) {
	t.Helper()
	editAuditLog(t, dir, func(data []byte) []byte {
		return bytes.Replace(data, []byte(`"op":"provision"`), []byte(`"op":"pRovision"`), 1)
	})
}

// FLAW (an audited operation acts, then fails its record; honest: the
// officer's one-shot reanchor beside a running daemon). audit.Log.Stale,
// review 18's mend, tells a log begun anew in place by another process
// only by its size: "shorter than what was read". audit.Reanchor's Fresh
// move truncates the same file and writes the move's record as its first
// line; when that line is at least as long as the log the daemon had
// read (a daemon that has served little since it opened the trail, or a
// record that carries an interrupted move's findings, interrupted_move.*,
// or a long verify error), the file is the same inode and no shorter:
// Stale says no, the daemon's next seal runs, and its Append catches up
// from its old offset into the middle of the new record ("tampered"), so
// the seal is reported failed after it ran (exit 14) and its record goes
// to the pending file. Review 18's TestReview18DaemonAfterAFreshMoveByAnother
// holds only because its daemon had sealed three times. Mend: Stale
// compares what the daemon read (its head line at l.size, or the file's
// first bytes/line's hash) rather than the size alone, or the Fresh move
// marks the log (a new inode: write the record to a new file and rename
// it over the log, under the lock).
func TestReview19DaemonAfterAFreshMoveByAnotherOfALongerRecord(t *testing.T) {
	for _, tc := range []struct {
		name string
		// mount readies the state: the daemon's log open, then the
		// one-shot reanchor of another process begins it anew.
		mount func(t *testing.T, env *swtpmtest.Env, b *swtpmtest.Bus, daemon interface {
			Seal(context.Context, api.SealRequest) ([]byte, error)
		}, dir string)
	}{
		{"a daemon that has only provisioned", func(t *testing.T, env *swtpmtest.Env, b *swtpmtest.Bus, _ interface {
			Seal(context.Context, api.SealRequest) ([]byte, error)
		}, dir string) {
			review19EditFirstOp(t, dir)
			res, err := newAgent(t, env, dir).AuditReanchor(context.Background())
			if err != nil || res.ArchivedLog == "" {
				t.Fatalf("not mounted: the one-shot reanchor: %v, archived %q", err, res.ArchivedLog)
			}
		}},
		{"an interrupted reanchor run again (its record carries the mark's)", func(t *testing.T, env *swtpmtest.Env, b *swtpmtest.Bus, daemon interface {
			Seal(context.Context, api.SealRequest) ([]byte, error)
		}, dir string) {
			for range 2 {
				if _, err := daemon.Seal(context.Background(), api.SealRequest{Data: []byte("s")}); err != nil {
					t.Fatal(err)
				}
			}
			review19EditFirstOp(t, dir)
			sent := 0
			b.Set(swtpmtest.AnsweredOnce(tpm2.TPMCCNVDefineSpace, tpm2.TPMRCNVSpace, &sent))
			_, err := newAgent(t, env, dir).AuditReanchor(context.Background())
			b.Set(nil)
			if err == nil || sent != 1 {
				t.Fatalf("not mounted: the first reanchor %v (%d defines refused)", err, sent)
			}
			res, err := newAgent(t, env, dir).AuditReanchor(context.Background())
			if err != nil || res.ArchivedLog == "" {
				t.Fatalf("not mounted: the one-shot reanchor run again: %v, archived %q", err, res.ArchivedLog)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			b := &swtpmtest.Bus{}
			env, daemon, dir := provisionedBehind(t, b)
			p := filepath.Join(dir, audit.FileName)
			before, _ := os.Stat(p)
			tc.mount(t, env, b, daemon, dir)
			after, _ := os.Stat(p)
			t.Logf("the log: %d bytes at provision, %d after the other process's move", before.Size(), after.Size())
			_, serr := daemon.Seal(ctx, api.SealRequest{Data: []byte("next")})
			if serr != nil {
				t.Errorf("the daemon's next seal after another process's reanchor began the log anew: ran, then %v (exit %d)", serr, api.ExitCode(serr))
			}
			if _, err := newAgent(t, env, dir).AuditVerify(ctx); err != nil {
				t.Errorf("verify: %v", err)
			}
		})
	}
}

// FLAW (A4, out of scope, but review 18 held that a planted FIFO does not
// hang provd). writeArchive, review 18's mend, writes the archive to
// "<archive>.<pid>.tmp" first, opened O_WRONLY|O_CREATE|O_TRUNC|O_NOFOLLOW
// without O_NONBLOCK. The name is known in advance: the mark's
// archived_log (audit.gate) and provd's pid. A FIFO planted there makes
// the open block until a reader comes: the move made again by the next
// seal hangs for good, holding the log's flock and the agent's lock (the
// daemon serves nothing, status included). Mend: open the temporary file
// O_EXCL (a name of its own, os.CreateTemp), or O_NONBLOCK and check it is
// a regular file.
func TestReview19PlantedTempArchiveHangsTheMove(t *testing.T) {
	env, dir, _ := review18Marked(t, "")
	archive := filepath.Join(dir, review18MarkRecord(t, dir)["archived_log"].(string))
	fifo := fmt.Sprintf("%s.%d.tmp", archive, os.Getpid())
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := newAgent(t, env, dir).Seal(context.Background(), api.SealRequest{Data: []byte("x")})
		done <- err
	}()
	select {
	case err := <-done:
		t.Logf("the seal: %v", err)
	case <-time.After(20 * time.Second):
		t.Errorf("the seal hangs on a FIFO planted at the archive's temporary name %s", filepath.Base(fifo))
		// Let the blocked open go on (a reader that closes at once: the
		// write then fails, EPIPE), so the test's TPM can be closed.
		if r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
			time.Sleep(100 * time.Millisecond)
			r.Close()
		}
		select {
		case err := <-done:
			t.Logf("the seal, once a reader came: %v", err)
		case <-time.After(20 * time.Second):
		}
	}
}

// FLAW (a state only a manual edit of audit.gate recovers; honest: an
// operator removes audit.log, which "a provisioned one whose trail files
// are gone reanchors" covers). The officer's reanchor of a contradicted
// log faults after its mark (NV_DefineSpace refused: the mark is fresh,
// names an archive not yet written and the log's SHA-256). audit.log is
// then removed. Every seal's finishMove and the officer's reanchor, which
// keeps the mark's decision to archive (review 18's mend), reach
// audit.Reanchor with an empty log, no file at the archive and the
// mark's archived_sha256: "is not the archive the move's record names
// ..., and the log is cut already", refused for good. Nothing but an edit
// of audit.gate's mark takes the state out (the officer's reanchor is the
// way out the threat model names for a removed log: log_missing). Mend:
// with the log missing (not cut: no such file when the reanchor looked),
// the reanchor records log_missing and the mark's archive as never
// written, instead of requiring it.
func TestReview19FreshMarkThenLogRemovedIsADeadEnd(t *testing.T) {
	ctx := context.Background()
	env, dir, _ := review18Marked(t, "")
	if err := os.Remove(filepath.Join(dir, audit.FileName)); err != nil {
		t.Fatal(err)
	}
	_, serr := newAgent(t, env, dir).Seal(ctx, api.SealRequest{Data: []byte("x")})
	t.Logf("a seal: %v (exit %d)", serr, api.ExitCode(serr))
	res, err := newAgent(t, env, dir).AuditReanchor(ctx)
	if err != nil {
		t.Errorf("the officer's reanchor of a provisioned state whose log is gone, under an interrupted archiving move's mark: %v (exit %d)", err, api.ExitCode(err))
	} else {
		t.Logf("reanchored: %v", res.Record.Objects)
	}
	if _, err := newAgent(t, env, dir).Seal(ctx, api.SealRequest{Data: []byte("y")}); err != nil {
		t.Errorf("a seal after: %v", err)
	}
}
