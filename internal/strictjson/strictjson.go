// Package strictjson decodes untrusted JSON the one way provd accepts it:
// unknown fields, duplicate keys (compared as encoding/json matches them,
// case-insensitively) and trailing data are errors.
package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode"
)

// Decode decodes one JSON value into v, refusing unknown fields,
// duplicate object keys, nesting deeper than MaxDepth and trailing data. On
// an error v may hold part of the input: a caller that decodes secrets
// clears v either way. Policy files decide what a TPM will
// accept, so two parsers must never read the same bytes differently (Go's
// decoder otherwise lets the last duplicate key win silently).
func Decode(data []byte, v any) error {
	// The token walk that finds duplicate keys and deep nesting first, so
	// that such a document never reaches v (found by review 61: with a
	// secret's key twice, the standard decoder put the first value in a
	// slice it then replaced with the second, out of reach of the caller's
	// clear of v; and it nested to 10,000 levels before the walk's bound).
	// Then the standard decoder: wrong types, unknown fields.
	if err := checkDuplicateKeys(data); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("trailing data after JSON value")
	}
	return checkDuplicateKeys(data)
}

// MaxDepth bounds how deeply arrays and objects may nest. provd's documents
// nest four levels at most; the bound keeps a hostile body of nested
// brackets from costing memory in proportion to its depth (encoding/json
// alone stops only at 10,000).
const MaxDepth = 64

// checkDuplicateKeys walks the token stream and fails on a repeated key in
// any object, or on nesting deeper than MaxDepth. An object's key set is made
// only at its second key, so a body of many small objects costs little.
func checkDuplicateKeys(data []byte) error {
	type frame struct {
		obj       bool
		expectKey bool
		first     string          // the object's first key
		keys      map[string]bool // its keys, from the second on
		n         int             // keys seen
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var stack []frame
	// valueDone marks that the enclosing object's current value was consumed.
	valueDone := func() {
		if n := len(stack); n > 0 && stack[n-1].obj {
			stack[n-1].expectKey = true
		}
	}
	topLevel := 0
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if len(stack) == 0 {
			topLevel++
			if topLevel > 1 {
				return fmt.Errorf("trailing data after JSON value")
			}
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{', '[':
				if len(stack) == MaxDepth {
					return fmt.Errorf("JSON nested deeper than %d levels", MaxDepth)
				}
				valueDone()
				stack = append(stack, frame{obj: t == '{', expectKey: t == '{'})
			default:
				stack = stack[:len(stack)-1]
			}
		case string:
			if n := len(stack); n > 0 && stack[n-1].obj && stack[n-1].expectKey {
				f := &stack[n-1]
				k := fold(t)
				switch {
				case f.n == 0:
					f.first = k
				case k == f.first || f.keys[k]:
					return fmt.Errorf("duplicate JSON key %q", t)
				default:
					if f.keys == nil {
						f.keys = map[string]bool{}
					}
					f.keys[k] = true
				}
				f.n++
				f.expectKey = false
				continue
			}
			valueDone()
		default:
			valueDone()
		}
	}
}

// fold maps a key to the form encoding/json compares field names in: each
// rune to the smallest rune of its simple case-folding orbit.
func fold(s string) string {
	return strings.Map(func(r rune) rune {
		lo := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			if f < lo {
				lo = f
			}
		}
		return lo
	}, s)
}
