package strictjson

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	type T struct {
		Bank string `json:"bank"`
		N    int    `json:"n"`
	}
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{`{"bank":"sha256","n":1}`, true},
		{`{"bank":"sha256","bank":"sha384"}`, false},
		{`{"bank":"sha256","BANK":"sha384"}`, false},
		{`{"bank":"sha256","Bank":"sha384"}`, false},
		{`{"bank":"sha256","other":1}`, false},
		{`{"bank":"sha256"} {}`, false},
		{`{"bank":"sha256"}x`, false},
		{`{"bank":"sha256","n":{"a":1,"a":2}}`, false},
		{`[1,2]`, false},
	} {
		var v T
		if err := Decode([]byte(tc.in), &v); (err == nil) != tc.ok {
			t.Errorf("Decode(%s) = %v, want ok %v", tc.in, err, tc.ok)
		}
	}
}

// A raw field takes any JSON, as deep as encoding/json allows (10,000
// levels); the duplicate-key walk stops at MaxDepth instead of growing with
// the body. MaxDepth itself is accepted.
func TestDecodeDepth(t *testing.T) {
	type T struct {
		Raw json.RawMessage `json:"raw"`
	}
	nest := func(n int) []byte {
		return []byte(`{"raw":` + strings.Repeat(`{"a":`, n) + `1` + strings.Repeat(`}`, n) + `}`)
	}
	var v T
	if err := Decode(nest(MaxDepth-1), &v); err != nil {
		t.Errorf("depth %d: %v", MaxDepth, err)
	}
	if err := Decode(nest(MaxDepth), &v); err == nil {
		t.Errorf("depth %d accepted", MaxDepth+1)
	}
	if err := Decode(nest(5000), &v); err == nil {
		t.Error("depth 5001 accepted")
	}
}

// BenchmarkHostileBodies: what a 4 MiB body (the daemon's limit) of nested
// or of many small objects costs to refuse. Allocations stay a few times the
// body, whatever its shape.
func BenchmarkHostileBodies(b *testing.B) {
	const size = 4 << 20
	type T struct {
		Data []byte          `json:"data"`
		Raw  json.RawMessage `json:"raw"`
	}
	wide := append([]byte(`{"raw":[`), bytes.Repeat([]byte(`{"a":1},`), size/8)...)
	wide = append(wide[:len(wide)-1], "]}"...)
	for name, body := range map[string][]byte{
		"nested-in-raw": append([]byte(`{"raw":`), bytes.Repeat([]byte(`{"a":`), size/5)...),
		"wide-in-raw":   wide,
	} {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				var v T
				_ = Decode(body, &v)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"bank":"sha256","n":1}`))
	f.Add([]byte(`{"a":{"b":[1,{"c":2}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var v map[string]any
		_ = Decode(data, &v)
	})
}

// A key that names a field in another case than its own is refused, at
// every depth the walk knows the type of (review 71: {"VERSION":5} and
// "\u017fignature" filled fields that other parsers read as absent);
// exact names, maps' own keys, and values decoded by a type's own
// UnmarshalJSON or into an interface are left to them.
func TestFieldNamesAreExact(t *testing.T) {
	type inner struct {
		B int `json:"b"`
	}
	type Embedded struct {
		E int `json:"e"`
	}
	type doc struct {
		Embedded
		Name  string           `json:"name"`
		Obj   inner            `json:"obj"`
		Ptr   *inner           `json:"ptr"`
		List  []inner          `json:"list"`
		Map   map[string]inner `json:"map"`
		Raw   json.RawMessage  `json:"raw"`
		Any   any              `json:"any"`
		NoTag int
		Skip  int `json:"-"`
	}
	for _, in := range []string{
		`{"NAME":"a"}`, `{"Name":"a"}`, `{"obj":{"B":1}}`, `{"ptr":{"B":1}}`, `{"list":[{"b":1},{"B":2}]}`,
		`{"map":{"K":{"B":1}}}`, `{"E":1}`, `{"notag":1}`, `{"\u017fkip":1}`, `{"na\u006De":"a","obj":{"\u212a":1}}`,
	} {
		if err := Decode([]byte(in), new(doc)); err == nil {
			t.Errorf("%s: decoded", in)
		}
		if err := json.Unmarshal([]byte(in), new(doc)); err != nil && !strings.Contains(in, "\u017f") && !strings.Contains(in, "\u212a") && !strings.Contains(in, `"K"`) {
			t.Logf("%s: encoding/json alone: %v", in, err)
		}
	}
	ok := `{"e":1,"name":"a","obj":{"b":1},"ptr":{"b":2},"list":[{"b":3}],"map":{"K":{"b":4}},"raw":{"ANY":1},"any":{"X":[1]},"NoTag":5}`
	var d doc
	if err := Decode([]byte(ok), &d); err != nil {
		t.Fatalf("exact names: %v", err)
	}
	if d.E != 1 || d.Map["K"].B != 4 || d.NoTag != 5 || d.Ptr.B != 2 {
		t.Errorf("decoded %+v", d)
	}
	if err := Decode([]byte(`{"Skip":1}`), new(doc)); err == nil {
		t.Error(`a field tagged "-" decoded`)
	}
}

type fuzzInner struct {
	B int               `json:"b"`
	M map[string]string `json:"m,omitempty"`
}

type FuzzEmbedded struct {
	E string `json:"e,omitempty"`
}

type fuzzDoc struct {
	FuzzEmbedded
	Name  string          `json:"name"`
	Obj   *fuzzInner      `json:"obj,omitempty"`
	List  []fuzzInner     `json:"list,omitempty"`
	Raw   json.RawMessage `json:"raw,omitempty"`
	Any   any             `json:"any,omitempty"`
	NoTag int
}

// FuzzDecodeStruct: whatever Decode takes into a struct, the document
// encoding/json writes back from it decodes too (a document provd writes
// is never refused for its field names), and nothing panics.
func FuzzDecodeStruct(f *testing.F) {
	f.Add([]byte(`{"e":"x","name":"a","obj":{"b":1,"m":{"K":"v"}},"list":[{"b":2}],"raw":{"Q":1},"any":[1,{"Z":2}],"NoTag":3}`))
	f.Add([]byte(`{"NAME":"a"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var d fuzzDoc
		if Decode(data, &d) != nil {
			return
		}
		b, err := json.Marshal(d)
		if err != nil {
			return // a RawMessage that is not JSON
		}
		if err := Decode(b, new(fuzzDoc)); err != nil {
			t.Fatalf("%s decoded, and its re-encoding %s is refused: %v", data, b, err)
		}
	})
}
