package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
)

// strictJSON decodes untrusted JSON: unknown fields and trailing data are errors.
func strictJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after JSON")
	}
	return nil
}
