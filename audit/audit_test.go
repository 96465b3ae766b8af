package audit

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fixedClock makes records deterministic.
func fixedClock() func() time.Time {
	t := time.Date(2025, 1, 2, 3, 4, 5, 600, time.UTC)
	var mu sync.Mutex
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		t = t.Add(time.Millisecond)
		return t
	}
}

func newLog(t testing.TB, lines int) (string, *MemoryAnchor, *Log) {
	t.Helper()
	path := filepath.Join(t.TempDir(), FileName)
	a := &MemoryAnchor{}
	l, err := Open(path, Options{Anchor: a, Now: fixedClock()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	for i := range lines {
		rec := Record{Op: "provision", UID: i % 3, Objects: map[string]string{"key": fmt.Sprintf("k%d", i)}, Result: "ok"}
		if i%5 == 4 {
			rec.Result = Result(errors.New("tpm2.Load: policy check failed"))
		}
		if err := l.Append(rec); err != nil {
			t.Fatal(err)
		}
	}
	return path, a, l
}

func TestAppendAndVerify(t *testing.T) {
	path, a, l := newLog(t, 1000)
	rep, err := Verify(path, a)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if rep.Lines != 1000 || !bytes.Equal(rep.Head, l.Head()) {
		t.Errorf("report %+v", rep)
	}
	recs, err := l.Records()
	if err != nil || len(recs) != 1000 {
		t.Fatalf("Records: %d, %v", len(recs), err)
	}
	if recs[0].Prev != strings.Repeat("0", 64) || recs[0].Seq != 1 || recs[999].Seq != 1000 {
		t.Errorf("first/last record %+v %+v", recs[0], recs[999])
	}
	if recs[4].Result != "error: tpm2.Load: policy check failed" || recs[3].Objects["key"] != "k3" {
		t.Errorf("record content %+v", recs[4])
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}

	// The file format: the first line, byte for byte.
	data, _ := os.ReadFile(path)
	first := data[:bytes.IndexByte(data, '\n')]
	want := `{"seq":1,"time":"2025-01-02T03:04:05.0010006Z","op":"provision","uid":0,"objects":{"key":"k0"},"result":"ok","prev":"` + strings.Repeat("0", 64) + `"}`
	if string(first) != want {
		t.Errorf("first line\n got %s\nwant %s", first, want)
	}
	// The anchor is the extend chain over each line's hash.
	var heads [][]byte
	for _, line := range bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")) {
		h := sha256.Sum256(line)
		heads = append(heads, h[:])
	}
	av, _ := a.Read()
	if !bytes.Equal(ExpectedAnchor(heads), av) {
		t.Error("anchor differs from ExpectedAnchor over the line hashes")
	}

	// Reopening continues the chain.
	l.Close()
	l2, err := Open(path, Options{Anchor: a})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if err := l2.Append(Record{Op: "zeroize", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	if rep, err := Verify(path, a); err != nil || rep.Lines != 1001 {
		t.Fatalf("after reopen: %+v, %v", rep, err)
	}
}

func TestMemoryAnchor(t *testing.T) {
	var a MemoryAnchor
	if _, err := a.Read(); !errors.Is(err, ErrAnchorEmpty) {
		t.Fatalf("Read before Extend = %v", err)
	}
	h1, h2 := []byte("one"), []byte("two")
	a.Extend(h1)
	a.Extend(h2)
	v0 := make([]byte, 32)
	s1 := sha256.Sum256(append(v0, h1...))
	s2 := sha256.Sum256(append(s1[:], h2...))
	got, _ := a.Read()
	if !bytes.Equal(got, s2[:]) || !bytes.Equal(ExpectedAnchor([][]byte{h1, h2}), s2[:]) {
		t.Error("extend chain differs from SHA-256(value || data)")
	}
	if !bytes.Equal(ExpectedAnchor(nil), v0) {
		t.Error("ExpectedAnchor(nil) is not 32 zero bytes")
	}
}

func lines(data []byte) [][]byte {
	return bytes.SplitAfter(data, []byte("\n"))[:bytes.Count(data, []byte("\n"))]
}

func TestTamperingDetected(t *testing.T) {
	const n = 20
	path, a, _ := newLog(t, n)
	orig, _ := os.ReadFile(path)
	ls := lines(orig)
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	forged := func(seq int, prevLine []byte) []byte {
		prev := strings.Repeat("0", 64)
		if prevLine != nil {
			h := sha256.Sum256(bytes.TrimSuffix(prevLine, []byte("\n")))
			prev = fmt.Sprintf("%x", h)
		}
		return []byte(fmt.Sprintf(`{"seq":%d,"time":"2025-01-02T03:04:05Z","op":"key-export","uid":0,"objects":{},"result":"ok","prev":"%s"}`+"\n", seq, prev))
	}
	edit := func(i int, from, to string) []byte {
		c := bytes.Clone(ls[i])
		if !bytes.Contains(c, []byte(from)) {
			t.Fatalf("line %d lacks %q", i+1, from)
		}
		parts := append(append(append([][]byte{}, ls[:i]...), bytes.Replace(c, []byte(from), []byte(to), 1)), ls[i+1:]...)
		return join(parts...)
	}
	cases := []struct {
		name string
		data []byte
		line int
		kind error
	}{
		{"edited middle line", edit(6, `"uid":0`, `"uid":1`), 8, ErrTampered},
		{"edited first line", edit(0, `"ok"`, `"OK"`), 2, ErrTampered},
		{"edited last line", edit(n-1, `"provision"`, `"provisiom"`), n, ErrTampered},
		{"edited prev", edit(9, `"prev":"`, `"prev":"0`), 10, ErrTampered},
		{"truncated by one", join(ls[:n-1]...), n - 1, ErrTampered},
		{"truncated by five", join(ls[:n-5]...), n - 5, ErrTampered},
		{"emptied", nil, 1, ErrTampered},
		{"reordered", join(append(append(append([][]byte{}, ls[:4]...), ls[5], ls[4]), ls[6:]...)...), 5, ErrTampered},
		{"deleted middle line", join(append(append([][]byte{}, ls[:9]...), ls[10:]...)...), 10, ErrTampered},
		{"deleted first line", join(ls[1:]...), 1, ErrTampered},
		{"inserted middle line", join(append(append(append([][]byte{}, ls[:3]...), forged(4, ls[2])), ls[3:]...)...), 5, ErrTampered},
		{"inserted at end", join(append(append([][]byte{}, ls...), forged(n+1, ls[n-1]))...), n + 1, ErrUnanchored},
		{"garbage line", join(append(append(append([][]byte{}, ls[:3]...), []byte("not json\n")), ls[3:]...)...), 4, ErrTampered},
		{"blank line", join(append(append(append([][]byte{}, ls[:3]...), []byte("\n")), ls[3:]...)...), 4, ErrTampered},
		{"torn tail", append(bytes.Clone(orig), `{"seq":21,"ti`...), n + 1, ErrTornTail},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), FileName)
			if err := os.WriteFile(p, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Verify(p, a)
			var ve *VerifyError
			if !errors.As(err, &ve) {
				t.Fatalf("Verify = %v, want *VerifyError", err)
			}
			if ve.Line != tc.line || !errors.Is(err, tc.kind) {
				t.Errorf("Verify = line %d kind %v (%v), want line %d kind %v", ve.Line, ve.Kind, err, tc.line, tc.kind)
			}
			if tc.kind != ErrTornTail && !errors.Is(err, ErrTampered) {
				t.Errorf("%v does not match ErrTampered", err)
			}
			// A log that does not verify is not appended to.
			if _, err := Open(p, Options{Anchor: a}); !errors.Is(err, tc.kind) {
				t.Errorf("Open of a log that does not verify = %v, want %v", err, tc.kind)
			}
		})
	}
}

func TestAnchorMismatch(t *testing.T) {
	path, a, _ := newLog(t, 3)
	// A fresh (reset) anchor with an existing log.
	if _, err := Verify(path, &MemoryAnchor{}); !errors.Is(err, ErrTampered) {
		t.Errorf("Verify with empty anchor = %v", err)
	}
	// An anchor extended past the log: lines removed at the end.
	a.Extend(make([]byte, 32))
	var ve *VerifyError
	if _, err := Verify(path, a); !errors.As(err, &ve) || ve.Kind != ErrTampered || ve.Line != 3 {
		t.Errorf("Verify with anchor ahead = %v", err)
	}
}

func TestAppendRefusesWhenAnchorMoved(t *testing.T) {
	_, a, l := newLog(t, 2)
	a.Extend([]byte("someone else"))
	if err := l.Append(Record{Op: "x", Result: "ok"}); !errors.Is(err, ErrTampered) {
		t.Fatalf("Append with moved anchor = %v", err)
	}
	// And it stays refused.
	if err := l.Append(Record{Op: "x", Result: "ok"}); !errors.Is(err, ErrTampered) {
		t.Fatalf("second Append = %v, want ErrTampered", err)
	}
}

func TestAppendValidates(t *testing.T) {
	_, _, l := newLog(t, 0)
	for _, rec := range []Record{{Result: "ok"}, {Op: "x"}, {Op: "x", Result: "fine"}} {
		if err := l.Append(rec); !errors.Is(err, ErrInvalidRecord) {
			t.Errorf("Append(%+v) = %v", rec, err)
		}
	}
}

func TestTornTailRepair(t *testing.T) {
	path, a, l := newLog(t, 5)
	l.Close()
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"seq":6,"time":"2025`)
	f.Close()

	if _, err := Verify(path, a); !errors.Is(err, ErrTornTail) || errors.Is(err, ErrTampered) {
		t.Fatalf("Verify = %v, want ErrTornTail only", err)
	}
	if _, err := Open(path, Options{Anchor: a}); !errors.Is(err, ErrTornTail) {
		t.Fatalf("Open = %v, want ErrTornTail", err)
	}
	rep, err := Repair(path, a, RepairOptions{UID: 7})
	if err != nil {
		t.Fatalf("Repair: %v", err)
	}
	if rep.Lines != 6 {
		t.Errorf("after repair %d lines", rep.Lines)
	}
	l2, err := Open(path, Options{Anchor: a})
	if err != nil {
		t.Fatalf("Open after repair: %v", err)
	}
	defer l2.Close()
	recs, _ := l2.Records()
	last := recs[len(recs)-1]
	if last.Op != "audit-repair" || last.UID != 7 || last.Objects["discarded_bytes"] != "21" {
		t.Errorf("repair record %+v", last)
	}
}

func TestUnanchoredRepair(t *testing.T) {
	path, a, l := newLog(t, 5)
	l.Close()
	// Simulate a crash between fsync and Extend: write a valid 6th line
	// with a Log whose anchor is a throw-away copy.
	shadow := &MemoryAnchor{}
	av, _ := a.Read()
	shadow.value = av
	ls, err := Open(path, Options{Anchor: shadow})
	if err != nil {
		t.Fatal(err)
	}
	if err := ls.Append(Record{Op: "seal", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	ls.Close()

	_, err = Verify(path, a)
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.Kind != ErrUnanchored || ve.Line != 6 {
		t.Fatalf("Verify = %v, want ErrUnanchored at 6", err)
	}
	// Without the operator's say-so Repair changes nothing.
	if _, err := Repair(path, a, RepairOptions{}); !errors.Is(err, ErrUnanchored) {
		t.Fatalf("Repair without AnchorLast = %v", err)
	}
	if _, err := Repair(path, a, RepairOptions{AnchorLast: true}); err != nil {
		t.Fatalf("Repair: %v", err)
	}
	if rep, err := Verify(path, a); err != nil || rep.Lines != 7 {
		t.Fatalf("after repair: %+v %v", rep, err)
	}
	// Repair refuses real tampering.
	data, _ := os.ReadFile(path)
	os.WriteFile(path, bytes.Replace(data, []byte(`"seq":2,`), []byte(`"seq":2 ,`), 1), 0o600)
	if _, err := Repair(path, a, RepairOptions{AnchorLast: true}); !errors.Is(err, ErrTampered) {
		t.Fatalf("Repair of tampered log = %v", err)
	}
}

func TestConcurrentAppends(t *testing.T) {
	path, a, l := newLog(t, 0)
	// A second Log on the same file stands in for another process.
	l2, err := Open(path, Options{Anchor: a})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lg := l
			if w%2 == 1 {
				lg = l2
			}
			for range 25 {
				if err := lg.Append(Record{Op: "derive", Result: "ok"}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if rep, err := Verify(path, a); err != nil || rep.Lines != 200 {
		t.Fatalf("Verify: %+v %v", rep, err)
	}
}

func TestOpenRefusesLooseMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	os.WriteFile(path, nil, 0o644)
	os.Chmod(path, 0o644)
	if _, err := Open(path, Options{Anchor: &MemoryAnchor{}}); err == nil {
		t.Fatal("Open accepted a world-readable log")
	}
}

func FuzzVerify(f *testing.F) {
	path, a, _ := newLog(f, 4)
	good, _ := os.ReadFile(path)
	av, _ := a.Read()
	f.Add(good)
	f.Add(good[:len(good)-7])
	f.Add([]byte{})
	f.Add([]byte("\n\n"))
	f.Add([]byte(`{"seq":1}` + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		// Against the real anchor, and against an anchor matching whatever
		// the input's complete lines replay to, so valid chains are reached.
		_, c, err := verify(data, av)
		checkErr(t, err)
		rep, _, err := verify(data, c.acc)
		checkErr(t, err)
		if err == nil && rep.Lines != bytes.Count(data, []byte("\n")) {
			t.Fatalf("verified %d lines of %d", rep.Lines, bytes.Count(data, []byte("\n")))
		}
		_, _, err = verify(data, nil)
		checkErr(t, err)
	})
}

func checkErr(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.Line < 1 {
		t.Fatalf("error %v is not a *VerifyError with a line", err)
	}
}

func BenchmarkAppend(b *testing.B) {
	_, _, l := newLog(b, 0)
	rec := Record{Op: "derive", UID: 1000, Objects: map[string]string{"key": "op-signing", "parent": "pk"}, Result: "ok"}
	b.ResetTimer()
	for b.Loop() {
		if err := l.Append(rec); err != nil {
			b.Fatal(err)
		}
	}
}
