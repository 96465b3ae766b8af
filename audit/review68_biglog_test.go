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

func (a *memAnchor) Extend(head []byte) error { a.v = extend(a.v, head); return nil }
func (a *memAnchor) Read() ([]byte, error) {
	if a.v == nil {
		return nil, ErrAnchorEmpty
	}
	return a.v, nil
}

// FLAW: review 67 bounds a log read whole at MaxLogSize (1 GiB) and calls
// a larger one tampered, but nothing keeps a trail under it: Open reads
// any size (readAll, unbounded) and Append writes on past 1 GiB, there is
// no rotation, and the agent archives the log only on an officer's
// reanchor. A trail that grows past 1 GiB in honest use (about three
// million records: years of a busy daemon's seals, or a loop of failing
// requests, every one audited) is then, at once and for good, "tampered"
// to Verify, ReadRecords and VerifyLinks: provd audit verify and status
// report tampering on an intact trail, the zeroize path's trail check
// (agent/zeroize.go) takes it as tampered, srkEvictionOwed reads no
// record (ReadRecords fails, so an owed SRK eviction is forgotten), while
// the daemon, whose Open read it whole and verified it, keeps appending.
// Here a log of just over MaxLogSize, every line chained and covered by
// the anchor, opens and takes a record, then Verify calls it tampered.
// Attacker: none needed (an honest trail's growth); anyone who may make
// audited requests speeds it up. Gain: the trail's verification is
// useless from then on, and the daemon is never told. Suggested fix: one
// bound for every reader and the writer (Open and Append refuse to grow
// past it with a clear error, or the log rotates into a chained archive
// before it), or verify streaming so that no size bound is needed.
func TestReview68HonestLogOverMaxLogSizeIsTampered(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 4<<20)
	c := newChain()
	name := strings.Repeat("k", 64<<10) // few, large lines: the bound is on bytes
	var size int64
	t0 := time.Unix(1_800_000_000, 0).UTC()
	for size <= MaxLogSize+(1<<20) {
		rec := Record{Seq: c.seq + 1, Time: t0, Op: "seal", Objects: map[string]string{"key": name}, Result: "ok", Prev: c.prevHex()}
		line, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		// c.next without its parse (Open parses every line): the
		// chain's head and the anchor's value after the line.
		h := sha256.Sum256(line)
		c.seq, c.head, c.acc = rec.Seq, h[:], extend(c.acc, h[:])
		w.Write(line)
		w.WriteByte('\n')
		size += int64(len(line)) + 1
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	an := &memAnchor{v: c.acc}
	l, err := Open(path, Options{Anchor: an})
	if err != nil {
		t.Fatalf("Open of an honest %d-byte log: %v", size, err)
	}
	if err := l.Append(Record{Op: "seal", Objects: map[string]string{"key": "k"}, Result: "ok"}); err != nil {
		t.Fatalf("Append: %v", err)
	}
	l.Close()
	rep, err := Verify(path, an)
	t.Logf("log of %d bytes: Open and Append accepted it; Verify: %d lines, %v", size, rep.Lines, err)
	if errors.Is(err, ErrTampered) {
		t.Errorf("Verify calls an honest, anchored %d-byte trail, which the writer opened and appended to, tampered: %v", size, err)
	} else if err != nil {
		t.Errorf("Verify: %v", err)
	}
	if _, err := ReadRecords(path); err != nil {
		t.Errorf("ReadRecords of the honest trail: %v", err)
	}
}
