package policy

import (
	"encoding/hex"
	"fmt"

	"github.com/provd/provd/internal/strictjson"
)

// decodeStrict decodes policy files strictly (internal/strictjson).
func decodeStrict(data []byte, v any) error { return strictjson.Decode(data, v) }

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
