package audit

// The fifteenth review: audit.Reanchor's cut of a torn tail (6463338).

import (
	"bytes"
	"errors"
	"os"
	"testing"
)

// FLAW (evidence; failed before the mend). Reanchor cut the torn tail (truncate, fsync) before it
// calls reset, and names the cut only in the record it writes after reset.
// When reset fails (the move's NV_DefineSpace refused, a power cut in the
// TPM: the agent's finishMove then makes the move again), the bytes are
// gone and nothing says so: the next Reanchor finds no torn tail, and its
// record has no discarded_bytes. Repair records its cut in the same call.
func TestReview15ReanchorCutBeforeAFailedResetIsNotRecorded(t *testing.T) {
	path, _, l := newLog(t, 3)
	l.Close()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"seq":4,"op":"audit-anc`)
	f.Close()
	fresh := &MemoryAnchor{}
	_, err = Reanchor(path, Options{Anchor: fresh, Now: fixedClock()}, Record{}, Move{Reset: func(Record) (map[string]string, error) {
		return nil, errors.New("TPM2_NV_DefineSpace: TPM_RC_NV_SPACE")
	}})
	if err == nil {
		t.Fatal("not mounted: reset failed, Reanchor did not")
	}
	if _, err := Reanchor(path, Options{Anchor: fresh, Now: fixedClock()}, Record{}, Move{Reset: func(Record) (map[string]string, error) { return nil, nil }}); err != nil {
		t.Fatal(err)
	}
	recs, _ := ReadRecords(path)
	if r := recs[len(recs)-1]; r.Objects["discarded_bytes"] == "" {
		t.Errorf("24 torn bytes were cut by a Reanchor whose reset failed, and no record names them: the next record is %v", r.Objects)
	}
}

// Held. A torn tail after a broken chain is not cut: Reanchor returns the
// chain's error and leaves the file as it was (the cut is only for a log
// whose complete lines link up).
func TestReview15ReanchorLeavesABrokenLogUntouched(t *testing.T) {
	path, _, l := newLog(t, 3)
	l.Close()
	data, _ := os.ReadFile(path)
	data = bytes.Replace(data, []byte(`"seq":2`), []byte(`"seq":7`), 1)
	data = append(data, []byte(`{"seq":4,"op":"x`)...)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	called := false
	_, err := Reanchor(path, Options{Anchor: &MemoryAnchor{}, Now: fixedClock()}, Record{}, Move{Reset: func(Record) (map[string]string, error) { called = true; return nil, nil }})
	if !errors.Is(err, ErrTampered) || called {
		t.Errorf("a broken chain with a torn tail: %v (reset called: %v)", err, called)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, data) {
		t.Errorf("the broken log was changed")
	}
}
