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
