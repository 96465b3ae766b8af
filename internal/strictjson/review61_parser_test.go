package strictjson

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// review61Plain is encoding/json as provd would use it without this
// package: unknown fields refused, the last duplicate winning.
func review61Plain(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// Held: every case-folding pair encoding/json matches to one struct field
// is a duplicate to Decode. Attacker: whoever writes a document provd
// decodes strictly (a daemon caller A3, a peer/approval file's author, an
// enrolled device A9 to the fleet endpoint, A6 editing the state) hiding a
// second value for a field behind a key another parser or a reviewer
// reads as a different name: the Kelvin sign K (U+212A) for k, the long
// s (U+017F) for s, Greek final sigma, and every other simple-fold orbit in
// Unicode. For each rune with a fold orbit that can name a field (a
// letter or digit, as encoding/json's tag rules require), a struct with
// the field "x"+r is built and {"x"+r:1,"x"+f:2} decoded for each f in r's
// orbit; encoding/json is first shown to match "x"+f to the field (so the
// second key really overrides), then Decode must refuse the pair. Both
// fold to the smallest rune of the orbit (Go 1.26's foldRune), so none is
// missed; runes without an orbit (dotted I U+0130, dotless i U+0131) match
// only themselves in both.
func TestReview61EveryFoldPairIsADuplicate(t *testing.T) {
	var pairs, matched int
	var sawKelvin, sawLongS bool
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if !utf8.ValidRune(r) || unicode.SimpleFold(r) == r || !(unicode.IsLetter(r) || unicode.IsDigit(r)) {
			continue
		}
		name := "x" + string(r)
		st := reflect.StructOf([]reflect.StructField{{Name: "F", Type: reflect.TypeOf(0), Tag: reflect.StructTag(`json:` + strconv.Quote(name))}})
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			pairs++
			k1, _ := json.Marshal(name)
			k2, _ := json.Marshal("x" + string(f))
			one := reflect.New(st)
			if review61Plain([]byte(`{`+string(k2)+`:2}`), one.Interface()) != nil || one.Elem().Field(0).Int() != 2 {
				continue // encoding/json does not match f to r's field
			}
			matched++
			sawKelvin = sawKelvin || f == '\u212a' || r == '\u212a'
			sawLongS = sawLongS || f == '\u017f' || r == '\u017f'
			in := []byte(`{` + string(k1) + `:1,` + string(k2) + `:2}`)
			if err := Decode(in, reflect.New(st).Interface()); err == nil {
				t.Errorf("field %q: %s decoded with no duplicate found (U+%04X and U+%04X)", name, in, r, f)
			}
		}
	}
	if matched == 0 || !sawKelvin || !sawLongS {
		t.Fatalf("%d fold pairs, %d matched by encoding/json; Kelvin %v, long s %v", pairs, matched, sawKelvin, sawLongS)
	}
	t.Logf("%d fold pairs, %d matched by encoding/json, each refused as a duplicate", pairs, matched)

	// No orbit, no match: dotted I and dotless i name no field "xi".
	type ti struct {
		F int `json:"xi"`
	}
	for _, k := range []string{"x\u0130", "x\u0131"} {
		in, _ := json.Marshal(map[string]int{k: 2})
		if err := review61Plain(in, new(ti)); err == nil {
			t.Errorf("encoding/json matched %q to field xi; Decode's fold does not", k)
		}
	}
}

type Review61Inner struct {
	B int `json:"b"`
}

type review61Embedded struct {
	Review61Inner
	C int `json:"c"`
}

type review61EmbeddedPtr struct {
	*Review61Inner
	C int `json:"c"`
}

type review61Doc struct {
	Name   string            `json:"name"`
	Kid    string            `json:"kid"`
	Sig    string            `json:"sig"`
	Obj    Review61Inner     `json:"obj"`
	List   []Review61Inner   `json:"list"`
	Raw    json.RawMessage   `json:"raw"`
	Map    map[string]int    `json:"map"`
	Any    any               `json:"any"`
	Nested map[string][]any  `json:"nested"`
	Strs   []string          `json:"strs"`
	Sub    *review61Embedded `json:"sub"`
}

// Held: a duplicate key is found wherever it hides, and only keys count.
// Attacker: as above, a second value for a field that encoding/json would
// take silently (last wins) in a nested object, an element of an array of
// structs, an embedded (promoted) field, a json.RawMessage field decoded
// later by a strict or a plain decoder, a map (exact keys), an any value,
// behind a JSON escape (\u006eame), behind invalid UTF-8 (two different
// bad bytes both read as U+FFFD), or as a third key repeating the second
// (the key set is made only at the second key). Each is refused, and
// shown to be accepted by encoding/json alone (so the check matters);
// keys of sibling and nested objects and string values equal to keys are
// not duplicates.
func TestReview61DuplicatesWhereverTheyHide(t *testing.T) {
	refused := map[string]struct {
		in string
		v  func() any
	}{
		"nested object":         {`{"obj":{"b":1,"B":2}}`, func() any { return new(review61Doc) }},
		"array of structs":      {`{"list":[{"b":1},{"b":1,"b":2}]}`, func() any { return new(review61Doc) }},
		"embedded promoted":     {`{"b":1,"c":1,"B":2}`, func() any { return new(review61Embedded) }},
		"embedded pointer":      {`{"c":1,"b":1,"b":2}`, func() any { return new(review61EmbeddedPtr) }},
		"embedded in a pointer": {`{"sub":{"b":1,"c":2,"b":3}}`, func() any { return new(review61Doc) }},
		"raw message":           {`{"raw":{"x":1,"x":2}}`, func() any { return new(review61Doc) }},
		"raw message, deep":     {`{"raw":[[{"a":{"x":1,"\u0078":2}}]]}`, func() any { return new(review61Doc) }},
		"map exact":             {`{"map":{"k":1,"k":2}}`, func() any { return new(review61Doc) }},
		"map escaped":           {`{"map":{"k":1,"\u006b":2}}`, func() any { return new(review61Doc) }},
		"any value":             {`{"any":[{"a":1,"a":2}]}`, func() any { return new(review61Doc) }},
		"map of arrays of any":  {`{"nested":{"q":[{"z":{"y":1,"y":2}}]}}`, func() any { return new(review61Doc) }},
		"escaped key":           {`{"\u006eame":"a","name":"b"}`, func() any { return new(review61Doc) }},
		"escaped surrogate":     {`{"map":{"\ud83d\ude00":1,"😀":2}}`, func() any { return new(review61Doc) }},
		"Kelvin":                {`{"kid":"a","\u212aid":"b"}`, func() any { return new(review61Doc) }},
		"Kelvin raw UTF-8":      {"{\"kid\":\"a\",\"\u212aID\":\"b\"}", func() any { return new(review61Doc) }},
		"long s":                {`{"sig":"a","\u017fig":"b"}`, func() any { return new(review61Doc) }},
		"invalid UTF-8 keys":    {"{\"map\":{\"\xff\":1,\"\xfe\":2}}", func() any { return new(review61Doc) }},
		"third repeats second":  {`{"name":"a","kid":"b","KID":"c"}`, func() any { return new(review61Doc) }},
		"after a closed object": {`{"obj":{"b":1},"name":"a","obj":{"b":2}}`, func() any { return new(review61Doc) }},
		"after an array":        {`{"list":[{"b":1}],"strs":["list"],"list":[]}`, func() any { return new(review61Doc) }},
		"top-level map":         {`{"a":1,"b":2,"c":3,"a":4}`, func() any { return new(map[string]int) }},
	}
	for what, c := range refused {
		if err := review61Plain([]byte(c.in), c.v()); err != nil {
			t.Errorf("%s: encoding/json alone refuses %s (%v): the case shows nothing", what, c.in, err)
		}
		if err := Decode([]byte(c.in), c.v()); err == nil {
			t.Errorf("%s: %s decoded; the duplicate was missed", what, c.in)
		}
	}
	for _, in := range []string{
		`{"obj":{"b":1},"list":[{"b":1},{"b":2}],"raw":{"b":1,"obj":{"b":1}},"map":{"b":1,"name":2}}`,
		`{"strs":["name","name","kid"],"name":"name","any":{"name":["name",{"name":1}]}}`,
		`{"nested":{"a":[{"a":{"a":1}},{"a":2}]}}`,
	} {
		if err := Decode([]byte(in), new(review61Doc)); err != nil {
			t.Errorf("%s: %v (no duplicate in it)", in, err)
		}
	}
}

// Held: depth, size and trailing data. Attacker: a daemon caller (A3) or
// the fleet endpoint's client (A9/A8) sending a body of nested brackets,
// huge numbers or a second value. The standard decoder runs first and
// takes nesting to 10,000 levels where a field holds any JSON (a
// json.RawMessage or an any); the token walk then refuses anything over
// MaxDepth, and encoding/json refuses 10,001 levels itself. Numbers too
// large for their field are refused; held as raw text they are kept as
// text (no float rounding that a second reader could disagree with).
// Trailing values, garbage and NULs are refused; trailing whitespace is
// not.
func TestReview61DepthNumbersTrailing(t *testing.T) {
	nest := func(n int) string { return `{"raw":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}` }
	if err := Decode([]byte(nest(MaxDepth-1)), new(review61Doc)); err != nil {
		t.Errorf("depth %d (with the outer object): %v", MaxDepth, err)
	}
	for _, n := range []int{MaxDepth, 9_998, 9_999, 10_000, 100_000} {
		for _, v := range []any{new(review61Doc), new(any)} {
			in := nest(n)
			if _, ok := v.(*any); ok { // the same depth with no outer object
				in = strings.Repeat("[", n+1) + strings.Repeat("]", n+1)
			}
			if err := Decode([]byte(in), v); err == nil {
				t.Errorf("%d levels into %T decoded", n, v)
			}
		}
	}
	type nums struct {
		I   int64       `json:"i"`
		F   float64     `json:"f"`
		N   json.Number `json:"n"`
		Raw json.RawMessage
	}
	for _, in := range []string{`{"i":9223372036854775808}`, `{"f":1e309}`, `{"i":1e3}`, `{"i":1.0}`, `{"n":01}`, `{"n":"1x"}`} {
		if err := Decode([]byte(in), new(nums)); err == nil {
			t.Errorf("%s decoded", in)
		}
	}
	big := "1" + strings.Repeat("0", 1<<20)
	var n nums
	if err := Decode([]byte(`{"n":`+big+`,"Raw":-`+big+`e-99999999}`), &n); err != nil || n.N.String() != big {
		t.Errorf("a long number held as text: %v", err)
	}
	for _, in := range []string{`{} {}`, `{}x`, `{}]`, "{}\x00", `{}"`, `{}{`, `{}1`, "{}\n{}", `{"name":"a"}null`} {
		if err := Decode([]byte(in), new(review61Doc)); err == nil {
			t.Errorf("%q decoded with trailing data", in)
		}
	}
	if err := Decode([]byte("\n\t {} \r\n "), new(review61Doc)); err != nil {
		t.Errorf("whitespace around the value: %v", err)
	}
}
