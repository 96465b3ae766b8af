// Package audit keeps provd's tamper-evident audit trail: one JSON record per
// line in <state-dir>/audit.log, each line carrying the SHA-256 of the line
// before it, and the hash of every new line extended into an Anchor (a TPM NV
// extend index in production) that the log's writer cannot rewind.
//
// What this detects: any edit, deletion, insertion or reordering of lines
// (the chain breaks at the first line whose "prev" no longer matches), lines
// removed from the end or a tail rewritten consistently (the replayed anchor
// differs from the anchor), and lines appended without the anchor. What it does
// not: an attacker who can extend the anchor (provd gates its anchor so that
// only the holder of its state directory can), and one who can replace both
// the log and what pins the anchor (provd's state directory): against them
// only a witness off the device helps. Replacing the anchor itself shows:
// the agent checks the index's name (see OpAnchor for moving a trail to a
// new anchor).
//
// Records never carry secrets: Record has no field for key material, PINs,
// passwords or seeds, only operation names, object names, a uid and a result.
// Callers must keep secrets out of Objects and out of error texts passed as
// results, as everywhere in provd.
//
// Crash behaviour. Append writes the line, fsyncs, then extends the anchor.
//   - A crash during the write leaves a torn last line (no trailing newline):
//     Verify reports ErrTornTail, Open refuses the log, and Repair truncates
//     the torn bytes (they were never acknowledged nor anchored) and records
//     the repair.
//   - A crash between fsync and extend leaves one complete line the anchor
//     does not cover. That is indistinguishable from a line appended by
//     someone without the anchor, so Verify reports ErrUnanchored (which also
//     matches ErrTampered) and only Repair with AnchorLast, an explicit
//     operator decision, extends the anchor over it.
package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/provd/provd/internal/safefile"
)

// FileName is the audit log's name inside the state directory.
const FileName = "audit.log"

// Record is one audit line. Seq, Prev and (if zero) Time are filled in by
// Append. There is deliberately no field that could hold secret material.
type Record struct {
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"` // RFC 3339 with nanoseconds, UTC
	Op   string    `json:"op"`   // e.g. "provision", "zeroize", "key-export"
	UID  int       `json:"uid"`  // the requesting user (peer credentials)
	// Objects names the objects the operation touched, by role:
	// {"key": "op-signing", "parent": "pk"}. Names only, never contents.
	Objects map[string]string `json:"objects"`
	Result  string            `json:"result"` // "ok" or "error: <message>"
	Prev    string            `json:"prev"`   // hex SHA-256 of the previous line, without its newline
}

// Result formats an operation's outcome for Record.Result.
func Result(err error) string {
	if err == nil {
		return "ok"
	}
	return "error: " + err.Error()
}

// Sentinel errors; test with errors.Is. Verification failures are *VerifyError.
var (
	// ErrTampered means the log and its chain or anchor disagree.
	ErrTampered = errors.New("audit: log has been tampered with")
	// ErrUnanchored means complete lines at the end are not covered by the
	// anchor: a crash between write and extend, or lines appended by someone
	// without the anchor. It also matches ErrTampered.
	ErrUnanchored = errors.New("audit: lines at the end of the log are not anchored")
	// ErrTornTail means the last line has no newline: an append was
	// interrupted. The complete lines before it verified.
	ErrTornTail = errors.New("audit: last line is incomplete (interrupted append)")
	// ErrInvalidRecord means Append was given a record it will not write.
	ErrInvalidRecord = errors.New("audit: invalid record")
	// ErrNotWritten marks an Append that failed before its line reached
	// the log (or took back what it wrote): the record may be kept and
	// appended later without appearing twice.
	ErrNotWritten = errors.New("audit: record not written")
	// ErrLocked means another process kept the log locked past the timeout.
	ErrLocked = errors.New("audit: another provd process holds the audit log lock")
)

// VerifyError says where the chain breaks. Line is 1-based; for a torn tail it
// is the number the incomplete line would have had.
type VerifyError struct {
	Line   int
	Kind   error // ErrTampered, ErrUnanchored or ErrTornTail
	Reason string
}

func (e *VerifyError) Error() string {
	return fmt.Sprintf("%v: line %d: %s", e.Kind, e.Line, e.Reason)
}

// Unwrap exposes Kind, and ErrTampered for unanchored lines, since an
// unanchored tail must not pass a check for tampering.
func (e *VerifyError) Unwrap() []error {
	if e.Kind == ErrUnanchored {
		return []error{e.Kind, ErrTampered}
	}
	return []error{e.Kind}
}

// Report describes a verified log.
type Report struct {
	Lines  int    // complete lines that verified
	Head   []byte // SHA-256 of the last complete line; nil for an empty log
	Anchor []byte // the anchor value read (nil if never extended)
	// TornBytes is the length of an incomplete last line, if any.
	TornBytes int
}

// reportJSON is Report's JSON form (audit verify -o json, the daemon's
// answer): snake_case names, hashes in hex, as everywhere in provd.
type reportJSON struct {
	Lines     int    `json:"lines"`
	Head      string `json:"head"`
	Anchor    string `json:"anchor"`
	TornBytes int    `json:"torn_bytes,omitempty"`
}

// MarshalJSON writes the form UnmarshalJSON reads.
func (r Report) MarshalJSON() ([]byte, error) {
	return json.Marshal(reportJSON{Lines: r.Lines, Head: hex.EncodeToString(r.Head), Anchor: hex.EncodeToString(r.Anchor), TornBytes: r.TornBytes})
}

// UnmarshalJSON reads MarshalJSON's form.
func (r *Report) UnmarshalJSON(b []byte) error {
	var w reportJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	head, err := hex.DecodeString(w.Head)
	if err != nil {
		return fmt.Errorf("audit report: head: %w", err)
	}
	anchor, err := hex.DecodeString(w.Anchor)
	if err != nil {
		return fmt.Errorf("audit report: anchor: %w", err)
	}
	*r = Report{Lines: w.Lines, Head: nilIfEmpty(head), Anchor: nilIfEmpty(anchor), TornBytes: w.TornBytes}
	return nil
}

func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

var zeroHead = strings.Repeat("0", 64)

// chain is the running state of a replay: last line's hash and sequence number,
// and the anchor value the replayed heads produce.
type chain struct {
	seq   uint64
	head  []byte // nil before the first line
	acc   []byte
	reset uint64 // seq of the last OpAnchor line, 0 if none
}

func newChain() chain { return chain{acc: make([]byte, sha256.Size)} }

func (c *chain) prevHex() string {
	if c.head == nil {
		return zeroHead
	}
	return hex.EncodeToString(c.head)
}

// next checks that line continues the chain and advances it. line excludes
// the newline. The returned reason is empty on success.
func (c *chain) next(line []byte) (Record, string) {
	rec, err := parseLine(line)
	if err != nil {
		return rec, "malformed record: " + err.Error()
	}
	if rec.Prev != c.prevHex() {
		if c.head == nil {
			return rec, "first line's prev is not zero"
		}
		return rec, "prev does not match the previous line (a line before it was edited, removed, inserted or reordered)"
	}
	if rec.Seq != c.seq+1 {
		return rec, fmt.Sprintf("seq %d, want %d", rec.Seq, c.seq+1)
	}
	h := sha256.Sum256(line)
	if rec.Op == OpAnchor {
		// A new anchor starts from 32 zero bytes at this line; the line's
		// prev ties it to every line before.
		c.acc = make([]byte, sha256.Size)
		c.reset = rec.Seq
	}
	c.seq, c.head, c.acc = rec.Seq, h[:], extend(c.acc, h[:])
	return rec, ""
}

func parseLine(line []byte) (Record, error) {
	var rec Record
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rec); err != nil {
		return rec, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return rec, errors.New("trailing data")
	}
	return rec, nil
}

// readAnchor returns the anchor value, nil if it was never extended.
func readAnchor(a Anchor) ([]byte, error) {
	v, err := a.Read()
	if errors.Is(err, ErrAnchorEmpty) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit: read anchor: %w", err)
	}
	return v, nil
}

// Verify replays the hash chain of the log at path and compares the replayed
// anchor value with anchor.Read(). A missing file is an empty log. On failure
// the error is a *VerifyError (errors.Is ErrTampered, ErrUnanchored or
// ErrTornTail) and the Report covers the lines before the break.
func Verify(path string, anchor Anchor) (Report, error) {
	data, err := readLog(path)
	if err != nil && !os.IsNotExist(err) {
		return Report{}, err
	}
	av, err := readAnchor(anchor)
	if err != nil {
		return Report{}, err
	}
	rep, _, verr := verify(data, av)
	return rep, verr
}

// verify is Verify on bytes, with the anchor value already read (nil: never
// extended). It also returns the chain state after the complete lines.
func verify(data, anchor []byte) (Report, chain, error) {
	rep := Report{Anchor: anchor}
	c := newChain()
	complete := data
	if i := bytes.LastIndexByte(data, '\n'); i+1 < len(data) {
		complete = data[:i+1]
		rep.TornBytes = len(data) - (i + 1)
	}
	// matched is the number of lines after which the replay equals the
	// anchor; an anchor never extended covers zero lines.
	matched := -1
	n := 0
	for len(complete) > 0 {
		i := bytes.IndexByte(complete, '\n')
		line := complete[:i]
		complete = complete[i+1:]
		n++
		if _, reason := c.next(line); reason != "" {
			return rep, c, &VerifyError{Line: n, Kind: ErrTampered, Reason: reason}
		}
		rep.Lines, rep.Head = n, c.head
		if anchor != nil && bytes.Equal(c.acc, anchor) {
			matched = n
		}
	}
	if anchor == nil {
		// Never extended: no line is covered, except that the lines before
		// the last OpAnchor line are tied to it by its prev (a crash between
		// a new anchor's definition and its first extend leaves only that
		// line uncovered).
		matched = 0
		if c.reset > 0 {
			matched = int(c.reset) - 1
		}
	}
	if covered := (anchor == nil && n == 0) || (anchor != nil && bytes.Equal(c.acc, anchor)); !covered {
		switch {
		case matched >= 0:
			return rep, c, &VerifyError{Line: matched + 1, Kind: ErrUnanchored,
				Reason: fmt.Sprintf("lines %d-%d are not covered by the anchor", matched+1, n)}
		case n == 0:
			return rep, c, &VerifyError{Line: 1, Kind: ErrTampered,
				Reason: "the log is empty but the anchor has been extended: its lines were removed"}
		default:
			return rep, c, &VerifyError{Line: n, Kind: ErrTampered,
				Reason: fmt.Sprintf("replaying lines 1-%d does not give the anchor: lines were removed from the end, or the log was rewritten from some line on", n)}
		}
	}
	if rep.TornBytes > 0 {
		return rep, c, &VerifyError{Line: n + 1, Kind: ErrTornTail,
			Reason: fmt.Sprintf("%d bytes without a newline; run audit repair", rep.TornBytes)}
	}
	return rep, c, nil
}

// Options configure a Log. Anchor is required; the rest have safe defaults.
type Options struct {
	Anchor      Anchor
	Now         func() time.Time // default time.Now
	LockTimeout time.Duration    // default 5s
}

// Log is an open audit trail. It is safe for concurrent use, and several
// processes may append to the same file: each Append takes an exclusive flock
// on the file and first replays whatever other processes appended.
type Log struct {
	mu   sync.Mutex
	f    *os.File
	path string
	opts Options
	size int64 // bytes of the file this Log has verified
	c    chain
	// err, once set, makes every later Append fail: the log's state on disk is
	// no longer known to be consistent with the anchor.
	err error
	// opened: the anchor was read when the log was opened (and found to
	// hold the chain's value), and nothing was written or caught up since:
	// the first Append compares with that read instead of reading the
	// anchor again (issue 14: a one-shot audited operation opens the log
	// and appends its record milliseconds apart; the read cost it 4 TPM
	// commands). Any line written or caught up clears it.
	opened bool
}

// withDefaults checks opts and fills in Now and LockTimeout.
func (opts Options) withDefaults() (Options, error) {
	if opts.Anchor == nil {
		return opts, errors.New("audit: Options.Anchor is required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = 5 * time.Second
	}
	return opts, nil
}

// Open opens (creating, mode 0600) the log at path and verifies it against
// opts.Anchor. A log that does not verify, torn tail included, is refused
// with the *VerifyError: appending to it would bury the evidence (see Repair).
func Open(path string, opts Options) (*Log, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	f, err := openFile(path)
	if err != nil {
		return nil, err
	}
	l := &Log{f: f, path: path, opts: opts, c: newChain()}
	if _, err := l.openVerified(); err != nil {
		f.Close()
		return nil, err
	}
	return l, nil
}

// MaxLogSize bounds a log: about three million records. The writer
// refuses a record that would take the log past it (the trail is full: an
// officer archives it, provd audit reanchor), and every reader (Open,
// Verify, ReadRecords, VerifyLinks) refuses a larger log as no trail provd
// wrote, before it is read (review 67: a sparse 64 GiB log, from a
// restored copy, ran the reader out of memory at every start; review 68:
// one bound for the writer and the readers).
const MaxLogSize = 1 << 30

// maxLogSize is MaxLogSize, lowered by tests.
var maxLogSize int64 = MaxLogSize

// readLog reads the log at path: a regular file, never through a link at
// its name, never blocking in open(2) (a FIFO planted there blocked every
// reader for good: review 66); one that is not is tampered.
func readLog(path string) ([]byte, error) {
	data, err := safefile.ReadFile(path, maxLogSize)
	if errors.Is(err, safefile.ErrUnsafe) {
		if fi, serr := os.Lstat(path); serr == nil && fi.Mode().IsRegular() && fi.Size() > maxLogSize {
			return nil, fmt.Errorf("%w: %s", ErrTampered, logTooLarge(fi.Size()))
		}
		return nil, fmt.Errorf("%w: %w", ErrTampered, err)
	}
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return data, err
}

// logTooLarge says why a log over MaxLogSize is refused: provd reads a
// log whole to verify it, and one this large is either planted (a sparse
// file) or a trail that needs a streaming verification provd does not
// have yet (review 68: an honest trail over the bound read as "not a
// regular file").
func logTooLarge(size int64) string {
	return fmt.Sprintf("the log is %d bytes, over the %d provd writes and reads whole: not a trail provd wrote", size, int64(maxLogSize))
}

func openFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: open log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("audit: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o077 != 0 {
		f.Close()
		return nil, fmt.Errorf("audit: %s must be a regular file with mode 0600, is %v", path, fi.Mode())
	}
	return f, nil
}

func readAll(f *os.File) ([]byte, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	if fi.Size() > maxLogSize {
		// Refused before it is allocated (review 68: a sparse 64 GiB log
		// ran Open out of memory at every start).
		return nil, fmt.Errorf("%w: %s", ErrTampered, logTooLarge(fi.Size()))
	}
	buf := make([]byte, fi.Size())
	if _, err := f.ReadAt(buf, 0); err != nil && err != io.EOF {
		return nil, fmt.Errorf("audit: read log: %w", err)
	}
	return buf, nil
}

// lock takes the exclusive flock with a bounded wait.
func (l *Log) lock() error {
	deadline := time.Now().Add(l.opts.LockTimeout)
	for {
		err := syscall.Flock(int(l.f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if err != syscall.EWOULDBLOCK && err != syscall.EINTR {
			return fmt.Errorf("audit: flock: %w", err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %s (waited %s)", ErrLocked, l.path, l.opts.LockTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (l *Log) unlock() { syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN) }

// Append writes rec as the next line, fsyncs it, and extends the anchor with
// the line's hash. It refuses when the anchor is not where this log's chain
// says it should be, and after any failure that could leave the file and the
// anchor out of step (see Repair).
func (l *Log) Append(rec Record) (err error) {
	// Whether rec's line reached the file decides what the caller may do
	// after a failure: nothing written (ErrNotWritten), it may keep the
	// record and try again later; written, the line is in the log (its
	// anchor unknown) and must not be written twice.
	wrote := false
	defer func() {
		if err != nil && !wrote {
			err = fmt.Errorf("%w: %w", ErrNotWritten, err)
		}
	}()
	if rec.Op == "" {
		return fmt.Errorf("%w: empty op", ErrInvalidRecord)
	}
	if rec.Result != "ok" && !strings.HasPrefix(rec.Result, "error: ") {
		return fmt.Errorf("%w: result must be \"ok\" or \"error: ...\"", ErrInvalidRecord)
	}
	if rec.Op == OpAnchor {
		return fmt.Errorf("%w: %s records are written by Reanchor", ErrInvalidRecord, OpAnchor)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return errors.New("audit: log is closed")
	}
	if l.err != nil {
		return l.err
	}
	if err := l.lock(); err != nil {
		return err
	}
	defer l.unlock()
	// Another process's move may have archived the log or begun it anew
	// (a new file at the path) since it was opened: a line written here
	// would go to a file that is no longer the trail (found by review).
	if err := l.stillAtPath(); err != nil {
		return err
	}

	size := l.size
	if err := l.catchUp(); err != nil {
		l.err = err
		return err
	}
	if l.opened && l.size == size {
		// The anchor was read at open, and matched this chain (write
		// ends that: opened is cleared).
		return l.write(rec, &wrote)
	}
	l.opened = false
	if rp, ok := l.opts.Anchor.(ReadPreparer); ok {
		line, next, err := l.line(rec)
		if err != nil {
			return err
		}
		av, ext, release, err := rp.ReadPrepare(next.head)
		if err != nil {
			return fmt.Errorf("audit: read anchor: %w", err)
		}
		if err := l.matches(av); err != nil {
			return errors.Join(err, release())
		}
		return l.commit(line, next, &wrote, ext, release)
	}
	av, err := readAnchor(l.opts.Anchor)
	if err != nil {
		return err
	}
	if err := l.matches(av); err != nil {
		return err
	}
	return l.write(rec, &wrote)
}

// matches checks the anchor's value av (nil: never extended) against l's
// chain; a mismatch stops the log's appends.
func (l *Log) matches(av []byte) error {
	if (l.c.head == nil && av != nil) || (l.c.head != nil && !bytes.Equal(av, l.c.acc)) {
		l.err = &VerifyError{Line: int(l.c.seq), Kind: ErrTampered,
			Reason: "the anchor does not match the log; run audit verify"}
		return l.err
	}
	return nil
}

// write appends rec as the next line of l's chain and extends the anchor,
// with the lock held and the chain caught up.
func (l *Log) write(rec Record, wrote *bool) error {
	line, next, err := l.line(rec)
	if err != nil {
		return err
	}
	extend, release := func() error { return l.opts.Anchor.Extend(next.head) }, func() error { return nil }
	if p, ok := l.opts.Anchor.(Preparer); ok {
		// Prepared for this line's head: a TPM anchor's proof extends
		// nothing else, whoever holds its session.
		ext, rel, err := p.Prepare(next.head)
		if err != nil {
			l.opened = false
			return fmt.Errorf("audit: anchor: %w", err)
		}
		extend, release = ext, rel
	}
	return l.commit(line, next, wrote, extend, release)
}

// line is rec as the next line of l's chain, and the chain after it.
func (l *Log) line(rec Record) ([]byte, chain, error) {
	rec.Seq = l.c.seq + 1
	rec.Prev = l.c.prevHex()
	if rec.Time.IsZero() {
		rec.Time = l.opts.Now()
	}
	rec.Time = rec.Time.UTC()
	if rec.Objects == nil {
		rec.Objects = map[string]string{}
	}
	line, err := json.Marshal(rec)
	if err != nil {
		return nil, chain{}, fmt.Errorf("audit: encode record: %w", err)
	}
	if l.size+int64(len(line))+1 > maxLogSize {
		// The writer keeps the bound its readers read under (review 68:
		// a trail grown past it read as tampered to every reader while
		// the daemon appended on): full, nothing written.
		return nil, chain{}, fmt.Errorf("audit: the trail is full (%d bytes at most, which provd reads whole to verify): an officer archives it and anchors anew (provd audit reanchor)", int64(maxLogSize))
	}
	next := l.c
	if _, reason := next.next(line); reason != "" {
		// Cannot happen: the line is built from this chain.
		l.err = fmt.Errorf("audit: internal: own line does not chain: %s", reason)
		return nil, chain{}, l.err
	}
	return line, next, nil
}

// commit writes line, which takes l's chain to next, and extends the anchor
// with extend (prepared for next's head); release, called on every path,
// frees what the extend's preparation took.
func (l *Log) commit(line []byte, next chain, wrote *bool, extend func() error, release func() error) (err error) {
	released := false
	defer func() {
		if released {
			return
		}
		if rerr := release(); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	l.opened = false
	if wrote == nil {
		wrote = new(bool)
	}
	// One write call for line and newline, so concurrent readers never see a
	// complete-looking line without its end.
	buf := append(line, '\n')
	if _, err := l.f.Write(buf); err != nil {
		return l.undo(fmt.Errorf("audit: write: %w", err), wrote)
	}
	if err := l.f.Sync(); err != nil {
		return l.undo(fmt.Errorf("audit: fsync: %w", err), wrote)
	}
	*wrote = true
	if err = extend(); err != nil {
		// Released first: the extend prepared for this line must be
		// dead before another is made (Preparer).
		released = true
		rerr := release()
		err = l.extendAgain(next, err, rerr)
	}
	if err != nil {
		l.err = fmt.Errorf("audit: line %d written but not anchored (run audit repair): %w", next.seq, err)
		l.c, l.size = next, l.size+int64(len(buf))
		return l.err
	}
	l.c, l.size = next, l.size+int64(len(buf))
	return nil
}

// extendAgain follows an extend that failed with err, its preparation
// released (rerr: the release's error). The anchor is read, and its value
// tells what happened. At next's value the extend was made all the same
// (its answer lost, or forged after the extend was passed on; or a TPM
// session taken on the bus and used for this very extend, the only one
// its proof allows: found by review), and nothing more is extended. At
// its value before the line it has not moved, and it is extended once
// more, prepared afresh, but only when the release says the first extend
// can no longer be made (found by review: an extend held on the bus and
// sent after the retry extended the anchor twice) and the anchor held
// something before (a new anchor's "nothing" is told by an answer the bus
// can forge: found by review). Anything else, or a read that fails, leaves
// the line unanchored. The line is never taken back: a line taken back
// would hide an operation that ran.
func (l *Log) extendAgain(next chain, err, rerr error) error {
	av, aerr := readAnchor(l.opts.Anchor)
	if aerr != nil {
		return errors.Join(err, rerr, aerr)
	}
	var before []byte // what the anchor holds before next's line: nothing for a new anchor
	if l.c.head != nil && next.reset != next.seq {
		before = l.c.acc
	}
	switch {
	case bytes.Equal(av, next.acc):
		return nil
	case before != nil && bytes.Equal(av, before) && rerr == nil:
		return l.opts.Anchor.Extend(next.head)
	case before == nil || bytes.Equal(av, before):
		return errors.Join(err, rerr)
	default:
		return errors.Join(err, rerr, fmt.Errorf("%w: the anchor holds neither the value before line %d nor the value after it", ErrTampered, next.seq))
	}
}

// undo cuts a failed write back to the last good line, so that the failure does
// not leave a torn line; if even that fails the log stops accepting appends.
func (l *Log) undo(err error, wrote *bool) error {
	if terr := l.f.Truncate(l.size); terr != nil {
		l.err = fmt.Errorf("%w; truncating the partial line also failed: %v", err, terr)
		*wrote = true // part of it may stay
		return l.err
	}
	if serr := l.f.Sync(); serr != nil {
		l.err = fmt.Errorf("%w; fsync after truncation failed: %v", err, serr)
		*wrote = true // part of it may stay
		return l.err
	}
	return err
}

// catchUp replays lines other processes appended since this Log last looked.
func (l *Log) catchUp() error {
	fi, err := l.f.Stat()
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	switch {
	case fi.Size() == l.size:
		return nil
	case fi.Size() < l.size:
		return &VerifyError{Line: int(l.c.seq), Kind: ErrTampered, Reason: "the log shrank while open"}
	}
	buf := make([]byte, fi.Size()-l.size)
	if _, err := l.f.ReadAt(buf, l.size); err != nil && err != io.EOF {
		return fmt.Errorf("audit: read log: %w", err)
	}
	for len(buf) > 0 {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			return &VerifyError{Line: int(l.c.seq) + 1, Kind: ErrTornTail, Reason: "another writer left an incomplete line"}
		}
		if _, reason := l.c.next(buf[:i]); reason != "" {
			return &VerifyError{Line: int(l.c.seq) + 1, Kind: ErrTampered, Reason: reason}
		}
		l.size += int64(i + 1)
		buf = buf[i+1:]
	}
	return nil
}

// ForgetOpenRead ends the use of the anchor read made at Open: the next
// Append reads the anchor again. The owner calls it when the operation
// that opened the log ends (found by review: a daemon that opened the log
// and wrote nothing, then appended hours later, compared with a read that
// old, and a recreated anchor went unrefused).
func (l *Log) ForgetOpenRead() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.opened = false
}

// Head returns the hash of the last line (the current chain head), or nil.
func (l *Log) Head() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.c.head...)
}

// Records returns the records of the log's complete lines, in order. It does
// not verify the chain (use Verify); a torn last line is reported with an
// error wrapping ErrTornTail after the complete records.
func (l *Log) Records() ([]Record, error) {
	return ReadRecords(l.path)
}

// ReadRecords parses the log at path without verifying it, for showing a log
// that fails verification: the records up to the first line that does not
// parse, and an error naming that line. A missing file has no records.
func ReadRecords(path string) ([]Record, error) {
	data, err := readLog(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var recs []Record
	for n := 1; len(data) > 0; n++ {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			return recs, &VerifyError{Line: n, Kind: ErrTornTail, Reason: strconv.Itoa(len(data)) + " bytes without a newline"}
		}
		rec, err := parseLine(data[:i])
		if err != nil {
			return recs, &VerifyError{Line: n, Kind: ErrTampered, Reason: "malformed record: " + err.Error()}
		}
		recs = append(recs, rec)
		data = data[i+1:]
	}
	return recs, nil
}

// Close closes the file.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// RepairOptions authorise Repair's fixes. The zero value repairs only a torn
// tail, which is always safe: those bytes were never acknowledged or anchored.
type RepairOptions struct {
	// AnchorLast extends the anchor over a single complete but unanchored
	// last line. Only an operator who has inspected that line should set it:
	// it accepts the line as genuine.
	AnchorLast bool
	UID        int              // recorded in the audit-repair record
	Now        func() time.Time // default time.Now
}

// Repair fixes what a crash can leave behind: a torn last line (truncated
// away) and, with AnchorLast, a last line written but not anchored. Anything
// else is tampering and is returned as Verify's error, untouched. After a
// repair it appends an "audit-repair" record saying what was done.
func Repair(path string, anchor Anchor, opts RepairOptions) (Report, error) {
	// Locked once the file is still the log at the path: another process's
	// move may have begun the log anew while this waited (found by review
	// 20: the old file's line extended into the new anchor).
	l, err := lockedLog(path, Options{Anchor: anchor, Now: opts.Now})
	if err != nil {
		return Report{}, err
	}
	defer l.Close()
	f := l.f
	data, err := readAll(f)
	if err != nil {
		l.unlock()
		return Report{}, err
	}
	av, err := readAnchor(anchor)
	if err != nil {
		l.unlock()
		return Report{}, err
	}
	rep, c, verr := verify(data, av)
	var ve *VerifyError
	objects := map[string]string{}
	switch {
	case verr == nil:
		l.unlock()
		return rep, nil
	case errors.As(verr, &ve) && ve.Kind == ErrTornTail:
		good := int64(len(data) - rep.TornBytes)
		if err := f.Truncate(good); err != nil {
			l.unlock()
			return rep, fmt.Errorf("audit: repair: %w", err)
		}
		if err := f.Sync(); err != nil {
			l.unlock()
			return rep, fmt.Errorf("audit: repair: %w", err)
		}
		objects["discarded_bytes"] = strconv.Itoa(rep.TornBytes)
		rep.TornBytes = 0
	case errors.As(verr, &ve) && ve.Kind == ErrUnanchored && opts.AnchorLast && ve.Line == rep.Lines && rep.TornBytes == 0:
		if err := anchor.Extend(c.head); err != nil {
			l.unlock()
			return rep, fmt.Errorf("audit: repair: extend anchor: %w", err)
		}
		objects["anchored_line"] = strconv.Itoa(ve.Line)
	default:
		l.unlock()
		return rep, verr
	}
	l.unlock()
	if _, err := l.openVerified(); err != nil {
		return rep, err
	}
	if err := l.Append(Record{Op: "audit-repair", UID: opts.UID, Objects: objects, Result: "ok"}); err != nil {
		return rep, err
	}
	rep.Lines, rep.Head = int(l.c.seq), l.c.head
	rep.Anchor, _ = readAnchor(anchor)
	return rep, nil
}

// openVerified re-reads and verifies the file into l's chain state.
func (l *Log) openVerified() (Report, error) {
	if err := l.lock(); err != nil {
		return Report{}, err
	}
	defer l.unlock()
	if err := l.stillAtPath(); err != nil {
		return Report{}, err // begun anew meanwhile (found by review 20: read as tampered)
	}
	data, err := readAll(l.f)
	if err != nil {
		return Report{}, err
	}
	av, err := readAnchor(l.opts.Anchor)
	if err != nil {
		return Report{}, err
	}
	rep, c, err := verify(data, av)
	if err != nil {
		return rep, err
	}
	l.c, l.size, l.opened = c, int64(len(data)), true
	return rep, nil
}
