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
// duplicate object keys and trailing data. Policy files decide what a TPM will
// accept, so two parsers must never read the same bytes differently (Go's
// decoder otherwise lets the last duplicate key win silently).
func Decode(data []byte, v any) error {
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
	return nil
}

// checkDuplicateKeys walks the token stream and fails on a repeated key in
// any object.
func checkDuplicateKeys(data []byte) error {
	type frame struct {
		obj       bool
		expectKey bool
		keys      map[string]bool
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var stack []*frame
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
			case '{':
				valueDone()
				stack = append(stack, &frame{obj: true, expectKey: true, keys: map[string]bool{}})
			case '[':
				valueDone()
				stack = append(stack, &frame{})
			default:
				stack = stack[:len(stack)-1]
			}
		case string:
			if n := len(stack); n > 0 && stack[n-1].obj && stack[n-1].expectKey {
				f := stack[n-1]
				k := fold(t)
				if f.keys[k] {
					return fmt.Errorf("duplicate JSON key %q", t)
				}
				f.keys[k] = true
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
