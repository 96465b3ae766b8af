package audit

// The eighteenth review: audit.Reanchor's Archive and Fresh (9f5f525: the
// log's bytes written to a new file after Reset, the log then begun anew;
// a file already at Archive kept, taken for the same move's, made again).
//
// Tests marked FLAW failed on the code under review, each before the mend
// that follows it (the reanchor run again keeps a marked move's decision
// to archive; an archive at the path kept only if its SHA-256 is the
// record's, written whole by a rename; the log's file checked to be still
// at its path under the lock, ErrMoved, and zeroize's rename under it; an
// open log that another process archived or began anew opened again,
// audit.Log.Stale); tests marked Held passed.
//
// FLAW: TestReview18ArchiveThereIsTakenOnTrust (a file at Archive whose
// bytes are not the log's, a torn archive of a move made again, is kept
// and the log is cut: lines in no archive; the record's archived_sha256
// names bytes no file holds), TestReview18LogRenamedBeforeTheLockIsCut (a
// log renamed away between Reanchor's open and its lock, as zeroize
// archives it without the lock: the move truncates the renamed file,
// zeroize's archive, and writes its record there; the live log is not the
// moved trail).
// Held: TestReview18ArchiveOfAFIFOOrLinkNeitherHangsNorFollows.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// FLAW (lines lost; an honest crash or a full disk, then any request that
// makes the move again). Reanchor takes any file at Archive for the
// archive "the same move made again" wrote, and cuts the log. writeNew
// creates the file (O_EXCL) before it writes it: a power cut before its
// fsync (ext4 leaves such files empty), a kill during the write, or a
// write that fails on a full disk (writeNew returns, the partial file
// stays) leaves a file there that does not hold the log. The move made
// again (finishMove: the mark's archived_log) keeps it and truncates the
// live log: the lines are in no file, and the record's archived_sha256
// (the mark's, the digest of the bytes read) is no file's digest. Mend:
// compare the file with the record's archived_sha256 (or the log's bytes)
// before cutting, write the archive under a temporary name and rename it
// (so a file at Archive is a whole one), and remove a partial file when
// writeNew fails.
func TestReview18ArchiveThereIsTakenOnTrust(t *testing.T) {
	path, _, l := newLog(t, 6)
	l.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	for _, c := range []struct {
		name  string
		there []byte
	}{
		{"empty (a power cut before writeNew's fsync)", nil},
		{"partial (a full disk in writeNew's write)", data[:len(data)/3]},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, FileName)
			if err := os.WriteFile(p, data, 0o600); err != nil {
				t.Fatal(err)
			}
			archive := filepath.Join(dir, "audit-20261207T000000.000000000Z.log")
			if err := os.WriteFile(archive, c.there, 0o600); err != nil {
				t.Fatal(err)
			}
			// The move made again: its record is the mark's, with the
			// archive's name and the digest of the log as first read.
			rec := Record{Objects: map[string]string{"archived_log": filepath.Base(archive), "archived_sha256": hex.EncodeToString(sum[:])}}
			if _, err := Reanchor(p, Options{Anchor: &MemoryAnchor{}, Now: fixedClock()}, rec, Move{
				Reset:   func(Record) (map[string]string, error) { return nil, nil },
				Archive: archive, Fresh: true,
			}); err != nil {
				t.Logf("Reanchor: %v", err)
			}
			got, _ := os.ReadFile(archive)
			live, _ := os.ReadFile(p)
			gs := sha256.Sum256(got)
			if !bytes.Contains(got, data) && !bytes.Contains(live, data) {
				t.Errorf("the log's %d bytes are in no file: the archive there (%d bytes, SHA-256 %x) was kept, the live log cut to %d bytes; "+
					"the record names archived_sha256 %x", len(data), len(got), gs[:6], len(live), sum[:6])
			}
		})
	}
}

// FLAW (evidence, and a stuck trail; two officer operations in two
// processes: a one-shot reanchor while the daemon zeroizes). zeroize
// renames the live log to its archive with no lock of the log's, right
// after its last record. Reanchor opens the log by its path, then waits
// for the lock (the zeroize record's append holds it), then reads, moves
// and, Fresh, truncates and writes its record: on the file it opened,
// which is zeroize's archive by then. The archive zeroize reported holds
// only the reanchor's record; the path holds no trail (the next open
// makes an empty log, which the new anchor contradicts). Without Fresh,
// the record is appended to zeroize's archive, as before the mend.
// Stood in for by the rename made while a Locked call holds the lock.
// Mend: once locked, check that the file is still the one at path
// (os.SameFile), and open again if not; or have zeroize rename under
// the lock.
func TestReview18LogRenamedBeforeTheLockIsCut(t *testing.T) {
	path, _, l := newLog(t, 4)
	l.Close()
	data, _ := os.ReadFile(path)
	zeroized := filepath.Join(filepath.Dir(path), "audit-20261207T000000.000000000Z.log")
	archive := filepath.Join(filepath.Dir(path), "audit-20261207T000001.000000000Z.log")
	held, release, done := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		done <- Locked(path, Options{Anchor: &MemoryAnchor{}}, func() error {
			close(held)
			<-release
			// zeroize, after its last record: the log renamed away.
			return os.Rename(path, zeroized)
		})
	}()
	select {
	case <-held:
	case err := <-done:
		t.Fatalf("not mounted: %v", err)
	}
	moved := make(chan error, 1)
	go func() {
		_, err := Reanchor(path, Options{Anchor: &MemoryAnchor{}, Now: fixedClock()}, Record{}, Move{
			Reset:   func(Record) (map[string]string, error) { return nil, nil },
			Archive: archive,
		})
		moved <- err
	}()
	time.Sleep(300 * time.Millisecond) // Reanchor has opened the log and waits for its lock
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	merr := <-moved
	if merr != nil {
		t.Logf("Reanchor: %v", merr)
	}
	z, _ := os.ReadFile(zeroized)
	live, lerr := os.ReadFile(path)
	recs, _ := ReadRecords(path)
	t.Logf("zeroize's archive: %d bytes (had %d); the live log: %d bytes (%v), %d records", len(z), len(data), len(live), lerr, len(recs))
	if !bytes.Equal(z, data) {
		t.Errorf("zeroize's archive was changed by the reanchor that opened the log before its rename: %d bytes, was %d", len(z), len(data))
	}
	// Held after the mend either way: the move refused, the log having
	// moved (ErrMoved: the caller tries again on the trail at the path),
	// or its record in the live log.
	if !errors.Is(merr, ErrMoved) && (len(recs) == 0 || recs[len(recs)-1].Op != OpAnchor) {
		t.Errorf("the move's audit-anchor record is not in the live log at %s (%v)", path, merr)
	}
}

// Held. A FIFO or a symbolic link at Archive (A4, out of scope) is not
// opened: Reanchor neither hangs on the FIFO nor writes through the link
// (Lstat; writeNew's O_EXCL|O_NOFOLLOW). What it does then is the flaw
// above: it is kept as the archive.
func TestReview18ArchiveOfAFIFOOrLinkNeitherHangsNorFollows(t *testing.T) {
	for _, kind := range []string{"fifo", "symlink"} {
		t.Run(kind, func(t *testing.T) {
			path, _, l := newLog(t, 3)
			l.Close()
			dir := filepath.Dir(path)
			archive := filepath.Join(dir, "audit-x.log")
			target := filepath.Join(t.TempDir(), "target")
			switch kind {
			case "fifo":
				if err := syscall.Mkfifo(archive, 0o600); err != nil {
					t.Fatal(err)
				}
			case "symlink":
				if err := os.WriteFile(target, []byte("untouched"), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(target, archive); err != nil {
					t.Fatal(err)
				}
			}
			done := make(chan error, 1)
			go func() {
				_, err := Reanchor(path, Options{Anchor: &MemoryAnchor{}, Now: fixedClock()}, Record{}, Move{
					Reset:   func(Record) (map[string]string, error) { return nil, nil },
					Archive: archive,
				})
				done <- err
			}()
			select {
			case err := <-done:
				t.Logf("Reanchor: %v", err)
			case <-time.After(10 * time.Second):
				t.Fatal("Reanchor hangs on the file at Archive")
			}
			if kind == "symlink" {
				if b, _ := os.ReadFile(target); string(b) != "untouched" {
					t.Errorf("written through the link: %q", b)
				}
			}
		})
	}
}
