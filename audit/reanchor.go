package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// OpAnchor is the op of a record that starts a new anchor: the anchor an
// Anchor holds from then on is the extend chain of the heads from this line
// on, starting at 32 zero bytes. The line's prev ties it to every line
// before, so the new anchor still pins the whole log: changing an earlier
// line changes this line's prev, hence its head, hence the anchor. Only
// Reanchor writes it (Append refuses it), after the caller replaced the
// anchor (a new TPM index) in its reset function.
const OpAnchor = "audit-anchor"

// VerifyLinks replays the hash chain of the log at path without an anchor:
// the lines link up (no line edited, removed, inserted or reordered, except
// at the end) and none is torn. It says nothing about the tail: only an
// anchor does.
func VerifyLinks(path string) (Report, error) {
	data, err := readLog(path)
	if err != nil && !os.IsNotExist(err) {
		return Report{}, err
	}
	rep, _, err := verify(data, nil)
	if errors.Is(err, ErrUnanchored) {
		err = nil
	}
	if err == nil && rep.TornBytes > 0 {
		err = &VerifyError{Line: rep.Lines + 1, Kind: ErrTornTail, Reason: fmt.Sprintf("%d bytes without a newline", rep.TornBytes)}
	}
	return rep, err
}

// Move is what Reanchor does beside the log, under its lock (no other
// Reanchor, Append or Repair of the log runs meanwhile).
type Move struct {
	// Reset replaces the anchor before the record is written. rec is the
	// record as it will be written (the caller's, with discarded_bytes
	// when a torn tail is to be cut), so that Reset can keep it; the
	// objects it returns are added to it. An error stops the move with
	// nothing of the log changed.
	Reset func(rec Record) (map[string]string, error)
	// Done, if set, runs once the record is written and the anchor
	// extended with it, still under the lock; its error is Reanchor's.
	Done func() error
	// Archive, if set, is a path where the log's bytes, as read under
	// the lock, are kept (a new file, fsynced) once Reset has succeeded,
	// before the log starts anew (Fresh): the record, Reset's too, names
	// it (archived_log, its base name) and their SHA-256
	// (archived_sha256). A file there already (the same move made again
	// after a crash) is kept, and the record's archived_* are rec's.
	Archive string
	// Fresh starts the log anew once Reset has succeeded: a new file,
	// locked, renamed over the log (its lines archived by Archive, or by
	// an earlier move this one is made again for), with the record its
	// first line. Its lines are then not verified. Another process's open
	// Log sees another file at the path (Stale), and one waiting for the
	// old file's lock finds it moved (ErrMoved).
	Fresh bool
	// LostOK lets a move whose log is empty and whose recorded archive is
	// not there whole go on (the officer's word), its record naming the
	// archive lost (archive_lost); without it that is tampering: the
	// lines are in no file.
	LostOK bool
}

// Reanchor appends an OpAnchor record to the log at path (created if
// missing) and extends opts.Anchor with it, after m.Reset has replaced the
// anchor. The log's lines must link up (VerifyLinks): a log whose chain is
// broken is returned as the *VerifyError, untouched, and Reset is not
// called. A torn last line (never acknowledged) is cut away once Reset has
// succeeded, as Repair cuts it, and the record names the bytes discarded.
// The anchor is not compared with the log: that is the point (a new trail, a
// trail moved to a new anchor, an anchor that another process replaced). The
// record should say why and what the old anchor held. Options.LockTimeout
// and Now apply. The report gives the lines and the head; not the anchor's
// value, which the caller's Open reads as it verifies the trail.
func Reanchor(path string, opts Options, rec Record, m Move) (Report, error) {
	l, err := lockedLog(path, opts)
	if err != nil {
		return Report{}, err
	}
	defer l.Close()
	defer l.unlock()
	f := l.f
	data, err := readAll(f)
	if err != nil {
		return Report{}, err
	}
	objects := map[string]string{}
	for k, v := range rec.Objects {
		objects[k] = v
	}
	rec.Objects, rec.Op, rec.Result = objects, OpAnchor, "ok"
	fresh := m.Fresh || m.Archive != ""
	var rep Report
	c := newChain()
	if !fresh {
		var verr error
		rep, c, verr = verify(data, nil)
		if ve := (*VerifyError)(nil); errors.As(verr, &ve) && (ve.Kind == ErrUnanchored || ve.Kind == ErrTornTail) {
			verr = nil // nothing is anchored here; the torn tail is cut below
		}
		if verr != nil {
			return rep, verr
		}
	}
	archive := m.Archive != ""
	if archive {
		if filepath.Clean(m.Archive) == filepath.Clean(path) || filepath.Base(m.Archive) == FileName {
			return rep, fmt.Errorf("audit: archive: %s is the log itself", m.Archive)
		}
		// A file there already is kept only if it is the archive the
		// record names (a move made again after a crash that came once
		// it was written): a partial one (a full disk, a power cut before
		// its fsync) or another file is written anew from the log, and
		// with the log already cut nothing is (found by review: a
		// partial archive was kept and the log cut).
		//
		// A kept archive must hold every byte of the log about to be cut:
		// a log that went on after it (a line appended between the
		// archive and the cut by a process whose log was open before
		// the move) is archived anew, whole (found by review: the
		// archive kept for its digest, the line was in no file and the
		// trail verified); a log that is neither the archive nor its
		// continuation is not cut.
		want := rec.Objects["archived_sha256"]
		size, keep, err := archived(m.Archive, want)
		neither := &VerifyError{Kind: ErrTampered, Reason: fmt.Sprintf("the log holds lines that are not in %s and do not follow them: it is not cut; "+
			"keep it aside as evidence (move it out of the state directory), then provd audit reanchor (crypto officer) begins anew", filepath.Base(m.Archive))}
		lines := bytes.Contains(data, []byte{'\n'})
		switch {
		case err != nil:
			return rep, err
		case keep && (len(data) == 0 || sha256Hex(data) == want):
			archive = false
		case keep && !lines:
			// No complete line: the move's own first record, torn by a
			// crash once the log was begun anew (appends under its mark
			// write nothing). The archive is kept; the bytes, never
			// acknowledged, are cut with the log and named, as a torn
			// tail everywhere (found by review 22: refused as
			// tampering, to the officer too, a dead end).
			archive = false
			rec.Objects["discarded_bytes"] = strconv.Itoa(len(data))
		case keep && (int64(len(data)) < size || sha256Hex(data[:size]) != want):
			return rep, neither
		case want != "" && !lines && sha256Hex(data) != want:
			// The log holds no complete line (begun anew, or removed;
			// at most the move's own first record, torn) and the archive
			// the record names is not there whole: its lines are in no
			// file (found by review: refused for good, even to the
			// officer; by review 23: torn bytes there were archived as
			// the old trail, and the trail went on).
			lost := fmt.Sprintf("%s is not there whole (SHA-256 %s recorded) and the log holds no line of it: its lines are in no file", filepath.Base(m.Archive), want)
			if !m.LostOK {
				return rep, &VerifyError{Kind: ErrTampered, Reason: lost + "; provd audit reanchor (crypto officer) records it and begins anew"}
			}
			rec.Objects["archive_lost"] = lost
			if len(data) > 0 {
				rec.Objects["discarded_bytes"] = strconv.Itoa(len(data))
			}
			archive = false
		case keep, want == "" || holdsRecorded(data, want):
			// The log goes on after the kept archive; or no archive is
			// there whole yet (a crash before it was written, a partial
			// one) and the log is the recorded one, or goes on after it:
			// archived anew, whole.
			rec.Objects["archived_log"] = filepath.Base(m.Archive)
			rec.Objects["archived_sha256"] = sha256Hex(data)
		default:
			// Complete lines that are not the recorded log, beside no
			// archive of it (found by review 24: one line written there
			// was archived as the old trail, and the trail went on).
			return rep, neither
		}
	}
	torn := rep.TornBytes
	if torn > 0 {
		rec.Objects["discarded_bytes"] = strconv.Itoa(torn)
	}
	objs, err := m.Reset(rec)
	if err != nil {
		return rep, fmt.Errorf("audit: new anchor: %w", err)
	}
	if archive {
		if err := writeArchive(m.Archive, data); err != nil {
			return rep, err
		}
	}
	if fresh {
		// The lines are archived: the log starts anew, under the lock,
		// once the new anchor stands and the archive is written (found
		// by review: a log renamed away before the move's mark, then a
		// fault, left no record of the archive), in a new file (found
		// by review: cut in place, a longer first record left another
		// process's open Log reading on at its old offset).
		if err := l.beginAnew(); err != nil {
			return rep, err
		}
		data, torn, rep = nil, 0, Report{}
	}
	if torn > 0 {
		// A torn last line was never acknowledged (a crash while it was
		// written): cut away now that the move goes on, as Repair cuts
		// it; the record says so (found by review: cut before a Reset
		// that failed, the bytes were gone and no record named them).
		good := len(data) - torn
		if err := f.Truncate(int64(good)); err != nil {
			return rep, fmt.Errorf("audit: %w", err)
		}
		if err := f.Sync(); err != nil {
			return rep, fmt.Errorf("audit: %w", err)
		}
		data, rep.TornBytes = data[:good], 0
	}
	l.c, l.size = c, int64(len(data))
	for k, v := range objs {
		rec.Objects[k] = v
	}
	if err := l.write(rec, nil); err != nil {
		return rep, err
	}
	if m.Done != nil {
		if err := m.Done(); err != nil {
			return rep, err
		}
	}
	// rep.Anchor stays nil: the Open that follows reads the anchor and
	// verifies the trail against it (issue 14: one read, not two).
	rep.Lines, rep.Head = int(l.c.seq), l.c.head
	return rep, nil
}

// Locked runs fn under the lock of the log at path (created if missing,
// mode 0600), the lock Append, Repair and Reanchor take: no line is
// appended and no move made meanwhile. Options.LockTimeout applies.
func Locked(path string, opts Options, fn func() error) error {
	l, err := lockedLog(path, opts)
	if err != nil {
		return err
	}
	defer l.Close()
	defer l.unlock()
	return fn()
}

// lockedLog opens the log at path (created if missing, mode 0600) and
// takes its lock, once the file is still the log at the path (stillAtPath:
// another process's move may have archived it or begun it anew while this
// waited). The caller unlocks and closes it.
func lockedLog(path string, opts Options) (*Log, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	f, err := openFile(path)
	if err != nil {
		return nil, err
	}
	l := &Log{f: f, path: path, opts: opts}
	if err := l.lock(); err != nil {
		l.Close()
		return nil, err
	}
	if err := l.stillAtPath(); err != nil {
		l.unlock()
		l.Close()
		return nil, err
	}
	return l, nil
}

// beginAnew puts a new, empty log at l's path in place of l's file: made
// beside it and locked first, renamed over it, the directory fsynced; l
// then holds the new file and its lock, and the old file's lock is let go
// (a waiter for it finds it moved: stillAtPath).
func (l *Log) beginAnew() error {
	nf, err := os.CreateTemp(filepath.Dir(l.path), "."+filepath.Base(l.path)+".*.new")
	if err != nil {
		return fmt.Errorf("audit: begin anew: %w", err)
	}
	fail := func(err error) error {
		nf.Close()
		os.Remove(nf.Name())
		return fmt.Errorf("audit: begin anew: %w", err)
	}
	if err := syscall.Flock(int(nf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fail(err)
	}
	// The new log is the old one's owner's and group's (found by
	// reread: begun anew by root, the officer, a daemon running as
	// another user could no longer append); mode 0600, as every log. A
	// log it cannot give them to is not put in place.
	var st syscall.Stat_t
	if err := syscall.Fstat(int(l.f.Fd()), &st); err != nil {
		return fail(err)
	}
	if int(st.Uid) != os.Geteuid() || int(st.Gid) != os.Getegid() {
		if err := nf.Chown(int(st.Uid), int(st.Gid)); err != nil {
			return fail(fmt.Errorf("the log belongs to uid %d, gid %d: %w", st.Uid, st.Gid, err))
		}
	}
	if err := os.Rename(nf.Name(), l.path); err != nil {
		return fail(err)
	}
	if err := syncDir(filepath.Dir(l.path)); err != nil {
		nf.Close()
		return fmt.Errorf("audit: begin anew: %w", err)
	}
	// nf is written from offset 0 on, under its lock, only by this move
	// (it is closed when Reanchor returns): no O_APPEND needed.
	old := l.f
	l.f, l.size = nf, 0
	syscall.Flock(int(old.Fd()), syscall.LOCK_UN)
	return old.Close()
}

// syncDir fsyncs the directory dir.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// archived reports whether a regular file at path holds bytes whose
// SHA-256 is want (hex), and how many; false when there is none, or want
// is empty.
func archived(path, want string) (size int64, ok bool, err error) {
	fi, err := os.Lstat(path)
	if os.IsNotExist(err) || err == nil && (want == "" || !fi.Mode().IsRegular()) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("audit: archive: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return 0, false, fmt.Errorf("audit: archive: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	size, err = io.Copy(h, f)
	if err != nil {
		return 0, false, fmt.Errorf("audit: archive: %w", err)
	}
	return size, hex.EncodeToString(h.Sum(nil)) == want, nil
}

// holdsRecorded reports whether data, or a prefix of it that ends a line
// (the empty one included), has the SHA-256 want (hex): the recorded log,
// or the recorded log and lines after it.
func holdsRecorded(data []byte, want string) bool {
	h := sha256.New()
	for {
		if hex.EncodeToString(h.Sum(nil)) == want {
			return true
		}
		if len(data) == 0 {
			return false
		}
		i := bytes.IndexByte(data, '\n') + 1
		if i == 0 {
			i = len(data)
		}
		h.Write(data[:i])
		data = data[i:]
	}
}

// sha256Hex is the SHA-256 of b, in hex.
func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// writeArchive writes data to path whole or not at all: a new file beside
// it (mode 0600), fsynced, renamed over whatever is at path (a link or a
// FIFO there is replaced, never followed), and the directory fsynced.
func writeArchive(path string, data []byte) error {
	// A new name of its own (O_EXCL): a FIFO or a link planted at a name
	// it could guess is never opened (found by review: the move hung on a
	// FIFO at <archive>.<pid>.tmp).
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("audit: archive: %w", err)
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, path)
	}
	if werr != nil {
		os.Remove(tmp)
		return fmt.Errorf("audit: archive: %w", werr)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("audit: archive: %w", err)
	}
	return nil
}

// ErrMoved: the log's file was moved away (archived by another process)
// between its open and its lock, or since it was opened.
var ErrMoved = errors.New("audit: the log was moved away (archived by another process) meanwhile; try again")

// stillAtPath checks, under the lock, that l's file is still the one at
// its path (found by review: a zeroize's archive renamed it while a
// reanchor waited for the lock, which then cut and wrote the archive).
func (l *Log) stillAtPath() error {
	_, err := l.openFileInfo()
	return err
}

// openFileInfo is the open file's FileInfo, or ErrMoved when it is no
// longer the log at l's path.
func (l *Log) openFileInfo() (os.FileInfo, error) {
	fi, err := l.f.Stat()
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	at, err := os.Stat(l.path)
	if err != nil || !os.SameFile(fi, at) {
		return nil, ErrMoved
	}
	return fi, nil
}

// Stale reports whether the open log is no longer the trail at its path:
// another file is there (moved away and begun anew), or it is shorter
// than what was read (begun anew in place by another process's move).
// Its owner opens the trail again.
func (l *Log) Stale() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return true
	}
	fi, err := l.openFileInfo()
	return err != nil || fi.Size() < l.size
}
