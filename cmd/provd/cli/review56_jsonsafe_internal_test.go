package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// review56ByteWriter passes on each Write a byte at a time, as a writer
// below terminalSafe might.
type review56ByteWriter struct{ w io.Writer }

func (b review56ByteWriter) Write(p []byte) (int, error) {
	for i := range p {
		if _, err := b.w.Write(p[i : i+1]); err != nil {
			return i, err
		}
	}
	return len(p), nil
}

// Held: terminalSafe's JSON mode keeps -o json valid JSON with the same
// values. Tried: every rune Go's encoder leaves raw and IsPrint rejects
// (C1 controls, bidi overrides and isolates, U+2028/U+2029, zero-width and
// format characters, astral format runes such as U+E0001 and U+1D173,
// written as UTF-16 surrogate pairs), invalid UTF-8 (the encoder's
// U+FFFD), in values and in map keys, indented as emit does, with the
// result cut into 1-byte writes below terminalSafe. The encoder gives
// terminalSafe one whole value per Write, and puts nothing but ASCII
// outside strings, so no escape lands outside a string and no rune is
// split across its Writes. Every line of the output is also free of raw
// unprintable runes.
func TestReview56JSONModeStaysValidJSON(t *testing.T) {
	t.Parallel()
	var runes []rune
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if r >= 0xd800 && r < 0xe000 {
			continue
		}
		// Every one of the BMP's (private use aside), a sample of the
		// rest, format runes such as U+E0001 and U+1D173 always.
		if !unicode.IsPrint(r) && (r > 0x7f || r < 0x20) && (r < 0xe000 || r > 0xf8ff) && r < 0xf0000 &&
			(r <= 0xffff || r%251 == 0 || unicode.Is(unicode.Cf, r)) {
			runes = append(runes, r)
		}
	}
	t.Logf("%d runes", len(runes))
	if len(runes) < 1000 {
		t.Fatalf("only %d runes to try", len(runes))
	}
	type doc struct {
		S []string          `json:"s"`
		M map[string]string `json:"m"`
	}
	in := doc{M: map[string]string{}}
	for i := 0; i < len(runes); i += 64 {
		chunk := string(runes[i:min(i+64, len(runes))])
		in.S = append(in.S, "a"+chunk+"b")
		in.M[chunk] = "\xff\xfe" + chunk + "\xc3"
	}
	for _, split := range []bool{false, true} {
		var buf bytes.Buffer
		var w io.Writer = &buf
		if split {
			w = review56ByteWriter{&buf}
		}
		enc := json.NewEncoder(terminalSafe{w, true})
		enc.SetIndent("", "  ")
		if err := enc.Encode(in); err != nil {
			t.Fatal(err)
		}
		out := buf.Bytes()
		if !json.Valid(out) {
			t.Fatalf("split %v: the output is not JSON", split)
		}
		if !utf8.Valid(out) {
			t.Fatalf("split %v: the output is not UTF-8", split)
		}
		if i := strings.IndexFunc(string(out), func(r rune) bool { return r != '\n' && !unicode.IsPrint(r) }); i >= 0 {
			t.Fatalf("split %v: raw unprintable %q at %d", split, []rune(string(out[i:]))[0], i)
		}
		var got doc
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatal(err)
		}
		want := doc{S: in.S, M: map[string]string{}}
		for k, v := range in.M {
			want.M[k] = string([]rune(v)) // each byte not UTF-8 becomes U+FFFD, as the encoder does
		}
		if len(got.S) != len(want.S) || len(got.M) != len(want.M) {
			t.Fatalf("split %v: %d strings and %d keys back, want %d and %d", split, len(got.S), len(got.M), len(want.S), len(want.M))
		}
		for i := range want.S {
			if got.S[i] != want.S[i] {
				t.Fatalf("split %v: string %d: %q back, want %q", split, i, got.S[i], want.S[i])
			}
		}
		for k, v := range want.M {
			if got.M[k] != v {
				t.Fatalf("split %v: key %q: %q back, want %q", split, k, got.M[k], v)
			}
		}
	}
}
