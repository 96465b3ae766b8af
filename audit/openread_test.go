package audit

import (
	"errors"
	"path/filepath"
	"testing"
)

// countingAnchor counts the anchor's reads.
type countingAnchor struct {
	*MemoryAnchor
	reads int
}

func (a *countingAnchor) Read() ([]byte, error) {
	a.reads++
	return a.MemoryAnchor.Read()
}

// The first Append after Open compares with the anchor Open read (one TPM
// read per one-shot audited operation, not two); every later one reads it
// again, and so does the first after another writer's line. An anchor moved
// between Open and that first Append is not hidden by the saved read: the
// extend lands on the moved value, and the next verify finds the trail
// broken.
func TestFirstAppendUsesOpenRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	anchor := &countingAnchor{MemoryAnchor: &MemoryAnchor{}}
	l, err := Open(path, Options{Anchor: anchor})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Append(Record{Op: "one", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	if anchor.reads != 1 {
		t.Errorf("Open and the first Append read the anchor %d times, want 1", anchor.reads)
	}
	if err := l.Append(Record{Op: "two", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	if anchor.reads != 2 {
		t.Errorf("a second Append did not read the anchor (%d reads)", anchor.reads)
	}
	l.Close()

	// The open's operation ended (ForgetOpenRead): the first Append reads.
	l, err = Open(path, Options{Anchor: anchor})
	if err != nil {
		t.Fatal(err)
	}
	l.ForgetOpenRead()
	reads := anchor.reads
	if err := l.Append(Record{Op: "later", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	if anchor.reads != reads+1 {
		t.Errorf("an Append after ForgetOpenRead did not read the anchor")
	}
	l.Close()

	// Another writer's line between Open and Append: read again.
	l, err = Open(path, Options{Anchor: anchor})
	if err != nil {
		t.Fatal(err)
	}
	other, err := Open(path, Options{Anchor: anchor})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Append(Record{Op: "other", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	other.Close()
	reads = anchor.reads
	if err := l.Append(Record{Op: "three", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	if anchor.reads != reads+1 {
		t.Errorf("the Append after another writer's line did not read the anchor")
	}
	l.Close()

	// The anchor moved between Open and the first Append.
	l, err = Open(path, Options{Anchor: anchor})
	if err != nil {
		t.Fatal(err)
	}
	if err := anchor.Extend([]byte("forged")); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(Record{Op: "four", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := Verify(path, anchor); !errors.Is(err, ErrTampered) {
		t.Fatalf("verify after the anchor moved under an open log: %v, want ErrTampered", err)
	}
}
