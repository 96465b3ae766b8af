package strictjson

import (
	"bytes"
	"encoding/json"
	"testing"
)

// review61Decoded records every byte slice encoding/json makes for a
// review61Secret, as it makes one for a []byte field (base64, a fresh
// slice per occurrence of the key).
var review61Decoded [][]byte

type review61Secret []byte

func (s *review61Secret) UnmarshalJSON(b []byte) error {
	var raw []byte
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	review61Decoded = append(review61Decoded, raw)
	*s = raw
	return nil
}

// FLAW (failed before the mend): (low) Decode runs the standard decoder into v before the token walk
// that finds duplicate keys, and its doc tells callers that clearing v on
// an error is enough ("a caller that decodes secrets clears v either
// way": SealRequest.UnmarshalJSON clears w.Data, the daemon Wipe()s
// SealRequest, DataRequest, KEKImportRequest). With a duplicate key the
// first value was decoded into a slice of its own and then replaced in v
// by the second: the caller's clear reaches only the second, and the
// first copy of the secret stays in the heap unwiped until reused. Attacker:
// whoever later reads provd's memory (A7 with a stolen device's memory or
// swap, a core dump) gains a secret provd believed wiped; the duplicate is
// put there by the sender of the body (a confused or hostile client in
// front of a custodian or sealer, a proxy). Suggested fix: run
// checkDuplicateKeys (with the depth bound) before dec.Decode(v), so a
// document refused for a duplicate never reaches v (which also bounds the
// standard decoder's nesting to MaxDepth); or document that v's earlier
// values are not reachable for clearing.
func TestReview61DuplicateSecretEscapesTheCallersClear(t *testing.T) {
	type req struct {
		Data review61Secret `json:"data"`
	}
	for _, in := range []string{
		`{"data":"c2VjcmV0LW9uZQ==","data":"c2VjcmV0LXR3bw=="}`,
		`{"data":"c2VjcmV0LW9uZQ==","DATA":"c2VjcmV0LXR3bw=="}`,
	} {
		review61Decoded = nil
		var v req
		err := Decode([]byte(in), &v)
		clear(v.Data) // what a caller that decodes secrets does either way
		if err == nil {
			t.Fatalf("%s decoded", in)
		}
		for i, d := range review61Decoded {
			if !bytes.Equal(d, make([]byte, len(d))) {
				t.Errorf("%s refused (%v), and the caller cleared v, but decoded value %d %q is still in memory", in, err, i+1, d)
			}
		}
	}
}
