package agent_test

// The eighteenth review: attacks and faults on the mend of review 17
// (9f5f525: audit.Move's Archive and Fresh; the officer's reanchor
// archives under the log's lock once the mark names the archive, a move
// made again writes it if a crash came first; a stale mark cleared before
// the officer's reanchor; the dropped record kept once; the gate reused
// unpinned too).
//
// Tests marked FLAW failed on the code under review, each before the mend
// that follows it (the reanchor run again keeps a marked move's decision
// to archive; an archive at the path kept only if its SHA-256 is the
// record's, written whole by a rename; the log's file checked to be still
// at its path under the lock, ErrMoved, and zeroize's rename under it; an
// open log that another process archived or began anew opened again,
// audit.Log.Stale); tests marked Held passed.
//
// FLAW: TestReview18ReanchorRetriedBlessesTheContradictedLog (the
// officer's reanchor, a TPM fault after its mark, run again: the log its
// anchor contradicted is kept and blessed under the new anchor, and the
// record names an archive that was never written; it passed on 9f5f525's
// parent, where the log was renamed away before the mark: a regression),
// TestReview18FullDiskArchiveThenAnySealCutsTheLog (a full disk fails the
// archive's write and leaves the partial file; the next seal, any
// caller's, keeps it as the archive and cuts the live log: the lines are
// in no file), TestReview18DaemonAfterAFreshMoveByAnother (a daemon whose
// log is open, after a one-shot reanchor began the log anew: its next
// request runs, then is reported tampered; failed on 9f5f525's parent
// too, with "the anchor does not match the log").
// Held: TestReview18CompleteArchiveMadeAgain (a crash between the
// archive's fsync and the cut: the move made again keeps the archive,
// whose digest is the record's), TestReview18PlantedArchiveNeitherHangsNorFollows
// (A4: a FIFO or a link at the mark's archived_log; the seal does not hang
// and writes nothing through the link), TestReview18MarkNamesAPathOutside
// (archived_log "../x" or an absolute path: the archive stays in the state
// directory).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/test/swtpmtest"
)

// review18CutLastLine removes the log's last line (A4, or whoever can write
// audit.log): the lines still link up, and the trail's anchor contradicts
// the log (it covers a line that is gone), so the officer's reanchor
// archives it, never blesses it.
func review18CutLastLine(t *testing.T, dir string) {
	t.Helper()
	editAuditLog(t, dir, func(data []byte) []byte {
		return data[:bytes.LastIndexByte(data[:len(data)-1], '\n')+1]
	})
	if _, err := audit.VerifyLinks(filepath.Join(dir, audit.FileName)); err != nil {
		t.Fatalf("not mounted: the cut log's links: %v", err)
	}
}

// review18MarkRecord is the record of audit.gate's mark (nil for none).
func review18MarkRecord(t *testing.T, dir string) map[string]any {
	t.Helper()
	mv := review16Moving(t, dir)
	if mv == nil {
		return nil
	}
	r, _ := mv["record"].(map[string]any)
	return r
}

// FLAW (a tampered log blessed, and a record naming an archive that does
// not exist; whoever edited the log, then one honest TPM fault, or A1
// refusing one command). The officer's reanchor of a log its own anchor
// contradicts (its last line cut: the lines link up) decides to archive
// it (Move.Archive) and writes its mark (fresh, archived_log) before the
// old index goes; a fault after the mark (NV_DefineSpace refused) fails
// it, the archive unwritten, the log as it was. The officer runs the
// reanchor again, as the error invites. Its verify now says "moving"
// (errMoveUnfinished), the old index is gone, and the log's links hold:
// it takes the log for one whose anchor merely moved, keeps its lines in
// place (lines_before) and anchors them anew. The contradicted log is
// blessed: verify passes from then on. The record copies the first
// attempt's interrupted_move.archived_log, a file nobody wrote. Had any
// seal come first, finishMove would have archived it (the mark's fresh);
// the officer's reanchor ignores the mark's fresh. Mend: an unfinished
// move's fresh (and its archived_log) decides for the reanchor too, or
// the reanchor finishes a marked move first. (The record also says
// lines_before 0 of the lines it keeps: vrep.Lines of a failed verify.)
func TestReview18ReanchorRetriedBlessesTheContradictedLog(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env, ag, dir := provisionedBehind(t, b)
	for range 3 {
		mustSeal(t, ag)
	}
	review18CutLastLine(t, dir)
	cut, _ := os.ReadFile(filepath.Join(dir, audit.FileName))
	if _, err := newAgent(t, env, dir).AuditVerify(ctx); err == nil {
		t.Fatal("not mounted: the cut log verifies")
	}
	sent := 0
	b.Set(swtpmtest.AnsweredOnce(tpm2.TPMCCNVDefineSpace, tpm2.TPMRCNVSpace, &sent))
	_, err := newAgent(t, env, dir).AuditReanchor(ctx)
	b.Set(nil)
	mark := review18MarkRecord(t, dir)
	if err == nil || sent != 1 || mark == nil || mark["archived_log"] == nil {
		t.Fatalf("not mounted: reanchor %v (%d defines refused), mark %v", err, sent, mark)
	}
	archive := filepath.Join(dir, mark["archived_log"].(string))
	t.Logf("the first reanchor: %v; its mark names %s", err, filepath.Base(archive))
	res, err := newAgent(t, env, dir).AuditReanchor(ctx)
	if err != nil {
		t.Fatalf("the officer's reanchor again: %v", err)
	}
	t.Logf("the second reanchor: archived %q; its record: %v", res.ArchivedLog, res.Record.Objects)
	live, _ := os.ReadFile(filepath.Join(dir, audit.FileName))
	blessed := bytes.HasPrefix(live, cut)
	if _, verr := newAgent(t, env, dir).AuditVerify(ctx); blessed && verr == nil {
		t.Errorf("the log its own anchor contradicted (its last line cut) was kept and is anchored anew: verify passes on it (lines_before %q)", res.Record.Objects["lines_before"])
	}
	for k, v := range res.Record.Objects {
		if strings.HasSuffix(k, "archived_log") {
			if _, err := os.Lstat(filepath.Join(dir, v)); err != nil {
				t.Errorf("the record's %s names %s, which does not exist: %v", k, v, err)
			}
		}
	}
}

// review18Mount mounts a tmpfs of size at dir (the test runs as root, as
// make test does), unmounted at cleanup.
func review18Mount(t *testing.T, dir, size string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs for the state (the test needs root, as make test runs): %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
}

// review18Fill fills the file system of dir, then frees free bytes.
func review18Fill(t *testing.T, dir string, free int64) string {
	t.Helper()
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4096)
	var n int64
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
		n += int64(len(chunk))
	}
	if err := f.Truncate(n - free); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return filler
}

// FLAW (lines in no file; a full disk, then any caller's request). The
// state directory's file system has room for audit.gate's writes but not
// for a copy of the log (the archive doubles it). The officer's reanchor
// of a tampered log writes its mark (fresh, archived_log), moves the
// anchor, and fails in the archive's write with ENOSPC: writeNew returns
// and leaves the partial file. The disk gets room again, and the next
// seal, any caller's, makes the move again (finishMove: the mark's
// archived_log): a file is there, taken for the archive the move made, and
// the live log is cut. The log's lines are in no file; the record's
// archived_sha256 is no file's digest. The same without a full disk: a
// power cut after writeNew's create and before its fsync (an empty file).
func TestReview18FullDiskArchiveThenAnySealCutsTheLog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env := swtpmtest.Start(t)
	dir := filepath.Join(t.TempDir(), "state")
	review18Mount(t, dir, "1m")
	ag := newAgent(t, env, dir)
	provision(t, ag, 7)
	for range 40 {
		mustSeal(t, ag)
	}
	review17EditLine(t, dir)
	before, _ := os.ReadFile(filepath.Join(dir, audit.FileName))
	filler := review18Fill(t, dir, 2*4096)
	res, err := newAgent(t, env, dir).AuditReanchor(ctx)
	mark := review18MarkRecord(t, dir)
	t.Logf("the log: %d bytes; the reanchor on a full disk: %v (%+v); the mark's record: %v", len(before), err, res, mark)
	if err == nil || !errors.Is(err, syscall.ENOSPC) || mark == nil || mark["archived_log"] == nil {
		t.Fatalf("not mounted: the reanchor did not fail on the archive's write after its mark")
	}
	archive := filepath.Join(dir, mark["archived_log"].(string))
	partial, _ := os.ReadFile(archive)
	t.Logf("the archive left: %d bytes", len(partial))
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	_, serr := newAgent(t, env, dir).Seal(ctx, api.SealRequest{Data: []byte("any caller")})
	got, _ := os.ReadFile(archive)
	live, _ := os.ReadFile(filepath.Join(dir, audit.FileName))
	recs, _ := audit.ReadRecords(filepath.Join(dir, audit.FileName))
	var named string
	for _, r := range recs {
		if r.Op == audit.OpAnchor {
			named = r.Objects["archived_sha256"]
		}
	}
	sum := sha256.Sum256(got)
	t.Logf("the next seal: %v; the archive: %d bytes; the live log: %d bytes; the record's archived_sha256 %.12s, the archive's %x", serr, len(got), len(live), named, sum[:6])
	if !bytes.Equal(got, before) && !bytes.Contains(live, before) {
		t.Errorf("the tampered log's %d bytes are in no file: the archive has %d, the live log was cut", len(before), len(got))
	}
	if named != "" && named != hex.EncodeToString(sum[:]) {
		t.Errorf("the record's archived_sha256 %.12s is not the archive's digest %x", named, sum[:6])
	}
}

// Held. A crash after the archive was written whole and before the cut
// (stood in for: the mark of a reanchor whose NV_DefineSpace was refused,
// and the archive as writeNew leaves it): the next seal makes the move
// again, keeps the archive, cuts the live log; the record names the
// archive and its digest, which is the archive's.
func TestReview18CompleteArchiveMadeAgain(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env, ag, dir := provisionedBehind(t, b)
	mustSeal(t, ag)
	review17EditLine(t, dir)
	before, _ := os.ReadFile(filepath.Join(dir, audit.FileName))
	sent := 0
	b.Set(swtpmtest.AnsweredOnce(tpm2.TPMCCNVDefineSpace, tpm2.TPMRCNVSpace, &sent))
	_, err := newAgent(t, env, dir).AuditReanchor(ctx)
	b.Set(nil)
	mark := review18MarkRecord(t, dir)
	if err == nil || mark == nil || mark["archived_log"] == nil {
		t.Fatalf("not mounted: %v, mark %v", err, mark)
	}
	archive := filepath.Join(dir, mark["archived_log"].(string))
	if err := os.WriteFile(archive, before, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := newAgent(t, env, dir).Seal(ctx, api.SealRequest{Data: []byte("x")}); err != nil {
		t.Fatalf("the seal after: %v", err)
	}
	recs, _ := audit.ReadRecords(filepath.Join(dir, audit.FileName))
	if len(recs) == 0 || recs[0].Op != audit.OpAnchor {
		t.Fatalf("the trail was not begun anew: %d records", len(recs))
	}
	sum := sha256.Sum256(before)
	if recs[0].Objects["archived_log"] != filepath.Base(archive) || recs[0].Objects["archived_sha256"] != hex.EncodeToString(sum[:]) {
		t.Errorf("the record: %v", recs[0].Objects)
	}
	if got, _ := os.ReadFile(archive); !bytes.Equal(got, before) {
		t.Errorf("the archive changed")
	}
	if _, err := newAgent(t, env, dir).AuditVerify(ctx); err != nil {
		t.Errorf("verify: %v", err)
	}
}

// review18Marked is a provisioned state whose officer's reanchor of a
// tampered log was interrupted after its mark (NV_DefineSpace refused),
// with the mark's archived_log set to name (as A4 may edit it).
func review18Marked(t *testing.T, name string) (*swtpmtest.Env, string, []byte) {
	t.Helper()
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env, ag, dir := provisionedBehind(t, b)
	mustSeal(t, ag)
	review17EditLine(t, dir)
	before, _ := os.ReadFile(filepath.Join(dir, audit.FileName))
	sent := 0
	b.Set(swtpmtest.AnsweredOnce(tpm2.TPMCCNVDefineSpace, tpm2.TPMRCNVSpace, &sent))
	_, err := newAgent(t, env, dir).AuditReanchor(ctx)
	b.Set(nil)
	if err == nil || review18MarkRecord(t, dir) == nil {
		t.Fatalf("not mounted: %v", err)
	}
	if name != "" {
		editGate(t, dir, func(g map[string]any) {
			g["moving"].(map[string]any)["record"].(map[string]any)["archived_log"] = name
		})
	}
	return env, dir, before
}

// Held (A4, out of scope: provd must not hang or follow a link). A FIFO or
// a symbolic link planted at the mark's archived_log: the next seal
// neither hangs nor writes through the link. (It keeps the planted file
// as the archive and cuts the log: TestReview18FullDiskArchiveThenAnySealCutsTheLog's flaw.)
func TestReview18PlantedArchiveNeitherHangsNorFollows(t *testing.T) {
	for _, kind := range []string{"fifo", "symlink"} {
		t.Run(kind, func(t *testing.T) {
			env, dir, _ := review18Marked(t, "")
			archive := filepath.Join(dir, review18MarkRecord(t, dir)["archived_log"].(string))
			target := filepath.Join(t.TempDir(), "target")
			if kind == "fifo" {
				if err := syscall.Mkfifo(archive, 0o600); err != nil {
					t.Fatal(err)
				}
			} else {
				if err := os.WriteFile(target, []byte("untouched"), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(target, archive); err != nil {
					t.Fatal(err)
				}
			}
			done := make(chan error, 1)
			go func() {
				_, err := newAgent(t, env, dir).Seal(context.Background(), api.SealRequest{Data: []byte("x")})
				done <- err
			}()
			select {
			case err := <-done:
				t.Logf("the seal: %v", err)
			case <-time.After(60 * time.Second):
				t.Fatal("the seal hangs on the planted archive")
			}
			if b, _ := os.ReadFile(target); kind == "symlink" && string(b) != "untouched" {
				t.Errorf("written through the link: %q", b)
			}
		})
	}
}

// Held (A4 editing the mark, out of scope). archived_log naming a path
// outside the state directory ("../x", an absolute path): finishMove
// takes its base name only, so the archive is written in the state
// directory and nothing outside it.
func TestReview18MarkNamesAPathOutside(t *testing.T) {
	for _, name := range []string{"../outside.log", "/tmp/review18-outside.log"} {
		t.Run(filepath.Base(name), func(t *testing.T) {
			env, dir, before := review18Marked(t, name)
			outside := filepath.Join(dir, name)
			if filepath.IsAbs(name) {
				outside = name
				os.Remove(outside)
			}
			if _, err := newAgent(t, env, dir).Seal(context.Background(), api.SealRequest{Data: []byte("x")}); err != nil {
				t.Logf("the seal: %v", err)
			}
			if _, err := os.Lstat(outside); err == nil {
				t.Errorf("an archive was written outside the state directory: %s", outside)
			}
			inside, _ := os.ReadFile(filepath.Join(dir, filepath.Base(name)))
			if !bytes.Equal(inside, before) {
				t.Errorf("the archive in the state directory: %d bytes, want the log's %d", len(inside), len(before))
			}
		})
	}
}

// FLAW (an operation run and reported failed as tampered; the officer's
// one-shot reanchor while the daemon serves). The daemon keeps its log
// open (its chain and the size it read). Another process's reanchor of
// a tampered log now archives it and begins the log anew under the lock:
// the file at the same path is cut to the one audit-anchor record. The
// daemon's next request finds no mark (the move finished), so openAudit
// keeps the open log; the operation runs, and its append finds the log
// shorter than it read ("the log shrank while open", or, the new log
// longer, a line that does not chain): the request is reported as
// tampered (exit 14) after the seal was made, its record pending. A move
// that appends its record (no Fresh) is caught up with by the daemon's
// append (catchUp reads the record and follows the new anchor). Mend:
// openAudit reopens an open log whose file changed under it (a size below
// the chain's, or audit.gate's gate not the one it opened with).
func TestReview18DaemonAfterAFreshMoveByAnother(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env, daemon, dir := provisionedBehind(t, b)
	for range 3 {
		mustSeal(t, daemon)
	}
	review17EditLine(t, dir)
	res, err := newAgent(t, env, dir).AuditReanchor(ctx)
	if err != nil || res.ArchivedLog == "" {
		t.Fatalf("not mounted: the one-shot reanchor: %v, archived %q", err, res.ArchivedLog)
	}
	_, serr := daemon.Seal(ctx, api.SealRequest{Data: []byte("next")})
	if serr != nil {
		t.Errorf("the daemon's next seal after another process's reanchor began the log anew: %v (exit %d)", serr, api.ExitCode(serr))
	}
	if _, err := newAgent(t, env, dir).AuditVerify(ctx); err != nil {
		t.Errorf("verify: %v", err)
	}
}
