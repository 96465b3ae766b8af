package audit

import (
	"bufio"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// memAnchor is an anchor in memory: the value a TPM index would hold.
type memAnchor struct{ v []byte }

func (a *memAnchor) Extend(head []byte) error {
	if a.v == nil { // a fresh index: all zeros
		a.v = make([]byte, sha256.Size)
	}
	a.v = extend(a.v, head)
	return nil
}
func (a *memAnchor) Read() ([]byte, error) {
	if a.v == nil {
		return nil, ErrAnchorEmpty
	}
	return a.v, nil
}

// FLAW (failed before the mend: one bound for the writer and its readers):
// review 67 bounded a log read whole at MaxLogSize (1 GiB) and called a
// larger one tampered, but nothing kept a trail under it: Open read any
// size (readAll, unbounded) and Append wrote on past the bound, with no
// rotation. A trail grown past it in honest use (about three million
// records; anyone who may make audited requests speeds it up) was then,
// for good, "tampered" to Verify, ReadRecords and VerifyLinks (audit
// verify and status reported tampering on an intact trail, the zeroize
// path's check took it as tampered, srkEvictionOwed read no record),
// while the daemon appended on. The reviewer's test built an honest
// 1.07 GiB trail by hand and had Open and Append take it, then Verify
// refuse it. Mend: the writer keeps the readers' bound: a record that
// would take the log past it is refused, nothing written (the trail is
// full: an officer archives it, provd audit reanchor), so the writer never
// makes a log its readers refuse; a larger log is no trail provd wrote,
// and Open refuses it as every reader does, before it is allocated.
// (Streaming verification, which needs no bound, is left for its own
// issue.) Here with the bound lowered to 64 KiB: records up to the bound
// are taken, the next is refused unwritten, the trail verifies; a log
// planted past the bound is refused alike by Open, Verify and ReadRecords.
func TestReview68HonestLogOverMaxLogSizeIsTampered(t *testing.T) {
	defer func(m int64) { maxLogSize = m }(maxLogSize)
	maxLogSize = 64 << 10
	path := filepath.Join(t.TempDir(), "audit.log")
	an := &memAnchor{}
	l, err := Open(path, Options{Anchor: an})
	if err != nil {
		t.Fatal(err)
	}
	name := strings.Repeat("k", 1<<10)
	n := 0
	for ; n < 1000; n++ {
		err = l.Append(Record{Op: "seal", Objects: map[string]string{"key": name}, Result: "ok"})
		if err != nil {
			break
		}
	}
	l.Close()
	if err == nil || !errors.Is(err, ErrNotWritten) || !strings.Contains(err.Error(), "full") {
		t.Fatalf("after %d records the append past the bound: %v, want the trail full, nothing written", n, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() > maxLogSize {
		t.Fatalf("the writer took the log past its bound: %v, %d bytes", err, fi.Size())
	}
	if rep, err := Verify(path, an); err != nil || rep.Lines != n {
		t.Errorf("the full trail: Verify %d lines, %v; want %d, nil", rep.Lines, err, n)
	}
	if recs, err := ReadRecords(path); err != nil || len(recs) != n {
		t.Errorf("the full trail: ReadRecords %d, %v", len(recs), err)
	}

	// A log past the bound is no trail provd wrote: every reader says so
	// alike, before it allocates it.
	big := filepath.Join(t.TempDir(), "audit.log")
	f, err := os.OpenFile(big, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	c := newChain()
	t0 := time.Unix(1_800_000_000, 0).UTC()
	for size := int64(0); size <= maxLogSize; {
		rec := Record{Seq: c.seq + 1, Time: t0, Op: "seal", Objects: map[string]string{"key": name}, Result: "ok", Prev: c.prevHex()}
		line, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(line)
		c.seq, c.head, c.acc = rec.Seq, h[:], extend(c.acc, h[:])
		w.Write(line)
		w.WriteByte('\n')
		size += int64(len(line)) + 1
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	ban := &memAnchor{v: c.acc}
	if _, err := Open(big, Options{Anchor: ban}); !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "not a trail provd wrote") {
		t.Errorf("Open of a log past the bound: %v", err)
	}
	if _, err := Verify(big, ban); !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "not a trail provd wrote") {
		t.Errorf("Verify of a log past the bound: %v", err)
	}
	if _, err := ReadRecords(big); !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "not a trail provd wrote") {
		t.Errorf("ReadRecords of a log past the bound: %v", err)
	}
}
