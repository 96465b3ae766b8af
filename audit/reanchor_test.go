package audit

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// Reanchor moves a trail to a new anchor with a record that names the old
// one; the new anchor still pins every line before it (through the record's
// prev), appends go on, a forged anchor record is refused by Append, and a
// trail whose links are broken is not reanchored.
func TestReanchor(t *testing.T) {
	path, old, l := newLog(t, 5)
	l.Close()
	// Another process extends the old anchor: the trail no longer verifies.
	old.Extend([]byte("stray"))
	if _, err := Verify(path, old); !errors.Is(err, ErrTampered) {
		t.Fatalf("stray extend: %v", err)
	}
	fresh := &MemoryAnchor{}
	reset := func(Record) (map[string]string, error) { return map[string]string{"why": "test"}, nil }
	rep, err := Reanchor(path, Options{Anchor: fresh, Now: fixedClock()}, Record{UID: 7}, Move{Reset: reset})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Lines != 6 {
		t.Fatalf("report %+v", rep)
	}
	if _, err := Verify(path, fresh); err != nil {
		t.Fatalf("after reanchor: %v", err)
	}
	l2, err := Open(path, Options{Anchor: fresh, Now: fixedClock()})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if err := l2.Append(Record{Op: "seal", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	if err := l2.Append(Record{Op: OpAnchor, Result: "ok"}); !errors.Is(err, ErrInvalidRecord) {
		t.Fatalf("Append of an anchor record: %v", err)
	}
	if _, err := Verify(path, fresh); err != nil {
		t.Fatalf("after an append: %v", err)
	}
	recs, _ := ReadRecords(path)
	if r := recs[5]; r.Op != OpAnchor || r.UID != 7 || r.Objects["why"] != "test" {
		t.Fatalf("anchor record %+v", r)
	}

	// A line before the anchor record is rewritten: the chain breaks, and
	// Reanchor refuses to bless it.
	b, _ := os.ReadFile(path)
	os.WriteFile(path, []byte(strings.Replace(string(b), `"uid":1`, `"uid":0`, 1)), 0o600)
	if _, err := Verify(path, fresh); !errors.Is(err, ErrTampered) {
		t.Fatalf("edited line before the anchor record: %v", err)
	}
	if _, err := VerifyLinks(path); !errors.Is(err, ErrTampered) {
		t.Fatalf("VerifyLinks: %v", err)
	}
	called := false
	if _, err := Reanchor(path, Options{Anchor: &MemoryAnchor{}}, Record{}, Move{Reset: func(Record) (map[string]string, error) { called = true; return nil, nil }}); !errors.Is(err, ErrTampered) || called {
		t.Fatalf("Reanchor of a broken chain: %v (reset called: %v)", err, called)
	}
}

// A crash between a new anchor's definition and its first extend leaves one
// line uncovered: the anchor record, which repair --anchor-last accepts.
func TestReanchorCrashBeforeExtend(t *testing.T) {
	path, _, l := newLog(t, 3)
	l.Close()
	fresh := &MemoryAnchor{}
	if _, err := Reanchor(path, Options{Anchor: failingAnchor{fresh}}, Record{}, Move{Reset: func(Record) (map[string]string, error) { return nil, nil }}); err == nil {
		t.Fatal("Reanchor with a failing extend succeeded")
	}
	var ve *VerifyError
	if _, err := Verify(path, fresh); !errors.As(err, &ve) || ve.Kind != ErrUnanchored || ve.Line != 4 {
		t.Fatalf("verify after the crash: %v", err)
	}
	if _, err := Repair(path, fresh, RepairOptions{AnchorLast: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(path, fresh); err != nil {
		t.Fatal(err)
	}
}

type failingAnchor struct{ *MemoryAnchor }

func (failingAnchor) Extend([]byte) error { return errors.New("power cut") }

// A crash while the new anchor's record was written leaves it torn: the
// next Reanchor (a move made again) cuts the torn bytes away, as Repair
// would, names them in its record, and the trail verifies with every
// complete line; a log that is only a torn line becomes a new trail.
func TestReanchorCutsATornTail(t *testing.T) {
	for _, lines := range []int{3, 0} {
		path, _, l := newLog(t, lines)
		l.Close()
		before, _ := os.ReadFile(path)
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(`{"seq":99,"op":"audit-anc`)
		f.Close()
		fresh := &MemoryAnchor{}
		rep, err := Reanchor(path, Options{Anchor: fresh, Now: fixedClock()}, Record{}, Move{Reset: func(Record) (map[string]string, error) { return nil, nil }})
		if err != nil {
			t.Fatalf("%d lines and a torn one: %v", lines, err)
		}
		if rep.Lines != lines+1 || rep.TornBytes != 0 {
			t.Errorf("%d lines and a torn one: report %+v", lines, rep)
		}
		if _, err := Verify(path, fresh); err != nil {
			t.Fatalf("%d lines and a torn one, after reanchor: %v", lines, err)
		}
		after, _ := os.ReadFile(path)
		if !strings.HasPrefix(string(after), string(before)) {
			t.Errorf("%d lines and a torn one: the complete lines changed", lines)
		}
		recs, _ := ReadRecords(path)
		if r := recs[len(recs)-1]; r.Op != OpAnchor || r.Objects["discarded_bytes"] != "25" {
			t.Errorf("%d lines and a torn one: the record is %+v", lines, r)
		}
	}
}

// A Log opened before another process's move began the log anew (a new
// file at the path) takes no line: Append refuses with ErrMoved, writing
// nothing to the file that is no longer the trail, and Stale says so; the
// trail at the path keeps only the move's record. Failed before the
// check under Append's lock: the line went to the replaced file.
func TestAppendAfterTheLogWasBegunAnew(t *testing.T) {
	path, anchor, l := newLog(t, 3)
	defer l.Close()
	fresh := &MemoryAnchor{}
	archive := path + ".archive"
	if _, err := Reanchor(path, Options{Anchor: fresh, Now: fixedClock()}, Record{}, Move{
		Reset: func(Record) (map[string]string, error) { return nil, nil }, Archive: archive,
	}); err != nil {
		t.Fatal(err)
	}
	_ = anchor
	if !l.Stale() {
		t.Errorf("Stale: false for a log begun anew in another file")
	}
	if err := l.Append(Record{Op: "seal", Result: "ok"}); !errors.Is(err, ErrMoved) || !errors.Is(err, ErrNotWritten) {
		t.Errorf("Append to a log begun anew: %v, want ErrMoved and ErrNotWritten", err)
	}
	recs, _ := ReadRecords(path)
	if len(recs) != 1 || recs[0].Op != OpAnchor {
		t.Errorf("the trail at the path: %d records, want the move's one", len(recs))
	}
	if a, _ := ReadRecords(archive); len(a) != 3 {
		t.Errorf("the archive: %d records, want 3", len(a))
	}
}
