package agent

import "github.com/provd/provd/internal/strictjson"

// strictJSON decodes untrusted JSON (internal/strictjson).
func strictJSON(data []byte, v any) error { return strictjson.Decode(data, v) }
