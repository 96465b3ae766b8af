package policy

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// decodeStrict decodes one JSON value into v, refusing unknown fields,
// duplicate object keys and trailing data. Policy files decide what a TPM will
// accept, so two parsers must never read the same bytes differently (Go's
// decoder otherwise lets the last duplicate key win silently).
func decodeStrict(data []byte, v any) error {
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
				if f.keys[t] {
					return fmt.Errorf("duplicate JSON key %q", t)
				}
				f.keys[t] = true
				f.expectKey = false
				continue
			}
			valueDone()
		default:
			valueDone()
		}
	}
}

// decodeHex decodes a non-empty hex string. Upper and lower case are both
// accepted; output is always lower case.
func decodeHex(s string) ([]byte, error) {
	if s == "" {
		return nil, fmt.Errorf("empty hex value")
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("bad hex: %w", err)
	}
	return b, nil
}
