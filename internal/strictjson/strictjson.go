// Package strictjson decodes untrusted JSON the one way provd accepts it:
// unknown fields, a field named in another case than its own, duplicate
// keys (compared as encoding/json matches them, case-insensitively) and
// trailing data are errors.
package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
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
	if err := checkDuplicateKeys(data, reflect.TypeOf(v)); err != nil {
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

// MaxDepth bounds how deeply arrays and objects may nest. provd's documents
// nest four levels at most; the bound keeps a hostile body of nested
// brackets from costing memory in proportion to its depth (encoding/json
// alone stops only at 10,000).
const MaxDepth = 64

// checkDuplicateKeys walks the token stream and fails on a repeated key in
// any object, on nesting deeper than MaxDepth, and, where the walk knows
// the Go type a value decodes into (root, v's type), on a key that names a
// struct field in another case than the field's own: encoding/json matches
// names case-insensitively, so {"VERSION":5} or "\u017fignature" (long s)
// filled a field that jq, Python or a reviewer reads as absent (review 71).
// An object's key set is made only at its second key, so a body of many
// small objects costs little.
func checkDuplicateKeys(data []byte, root reflect.Type) error {
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
				typ := root
				if n := len(stack); n > 0 {
					typ = stack[n-1].childType()
				}
				valueDone()
				stack = append(stack, frame{obj: t == '{', expectKey: t == '{', typ: container(typ, t == '{')})
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
				f.next = nil
				switch {
				case f.typ == nil:
				case f.typ.Kind() == reflect.Map:
					f.next = f.typ.Elem()
				default: // a struct
					ft, ok := fieldsOf(f.typ)[t]
					if !ok {
						return fmt.Errorf("json: unknown field %q (field names are matched exactly, case included)", t)
					}
					f.next = ft
				}
				continue
			}
			valueDone()
		default:
			valueDone()
		}
	}
}

// frame is an open object or array of checkDuplicateKeys's walk.
type frame struct {
	obj       bool
	expectKey bool
	first     string          // the object's first key
	keys      map[string]bool // its keys, from the second on
	n         int             // keys seen
	typ       reflect.Type    // what the container decodes into (nil: not known)
	next      reflect.Type    // in an object: the current key's value type
}

// childType is the Go type of the value that begins now in f: its current
// key's in an object, its element's in an array.
func (f *frame) childType() reflect.Type {
	if f.obj {
		return f.next
	}
	if f.typ == nil {
		return nil
	}
	return f.typ.Elem()
}

var unmarshaler = reflect.TypeFor[json.Unmarshaler]()

// container is t as the walk checks an object (a struct or a map) or an
// array (a slice or an array) decoded into it, or nil where it does not
// know: an interface, a type that decodes itself (json.Unmarshaler: provd's
// own decode their wire form with Decode, which checks it), a kind that
// does not match (the decoder's type error, then).
func container(t reflect.Type, obj bool) reflect.Type {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Implements(unmarshaler) || reflect.PointerTo(t).Implements(unmarshaler) {
		return nil
	}
	switch k := t.Kind(); {
	case obj && (k == reflect.Struct || k == reflect.Map):
		return t
	case !obj && (k == reflect.Slice || k == reflect.Array):
		return t
	}
	return nil
}

// fieldCache holds fieldsOf's answers by struct type.
var fieldCache sync.Map

// fieldsOf maps the JSON names of struct t's fields, as encoding/json
// names them (the tag's name, else the Go name; "-" left out; an embedded
// struct's fields promoted), to their types.
func fieldsOf(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := map[string]reflect.Type{}
	addFields(m, t, 0)
	fieldCache.Store(t, m)
	return m
}

func addFields(m map[string]reflect.Type, t reflect.Type, depth int) {
	if depth > 8 {
		return
	}
	for i := range t.NumField() {
		sf := t.Field(i)
		tag := sf.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if sf.Anonymous && name == "" {
			et := sf.Type
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				addFields(m, et, depth+1)
				continue
			}
		}
		if !sf.IsExported() {
			continue
		}
		if name == "" {
			name = sf.Name
		}
		if _, ok := m[name]; !ok {
			m[name] = sf.Type
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
