package api

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// Held: every hex field each reader names is checked (no field left out,
// no name mistyped), the refusal names the field and never its text; a
// file as provd writes it (lowercase hex) and one with uppercase hex both
// read; an empty field reads (whether it may be empty is the agent's rule:
// provisionFrom refuses an officer that is not this device's, and this
// device has one, errNoOfficer first; the peer identity is never written
// without an officer).
func TestReview57EveryHexFieldIsChecked(t *testing.T) {
	name := strings.Repeat("ab", 34)
	digest := strings.Repeat("cd", 32)
	type reader struct {
		parse  func([]byte) error
		base   map[string]any
		fields []string
	}
	readers := map[string]reader{
		"peer identity": {func(b []byte) error { _, err := ParsePeerIdentity(b); return err },
			map[string]any{"format": PeerFormat, "parent_name": name, "pk_name": name, "pk_policy": digest, "officer": name},
			[]string{"parent_name", "pk_name", "pk_policy", "officer"}},
		"duplicate": {func(b []byte) error { _, err := ParseDupFile(b); return err },
			map[string]any{"format": DupFormat, "type": DupTypePK, "parent_name": name, "pk_policy": digest, "officer": name, "ek_cert_sha256": digest, "dup_to": name},
			[]string{"parent_name", "pk_policy", "officer", "ek_cert_sha256", "dup_to"}},
		"challenge": {func(b []byte) error { _, err := ParsePeerChallenge(b); return err },
			map[string]any{"format": ChallengeFormat, "parent_name": name, "ek_cert_sha256": digest, "commitment": digest},
			[]string{"parent_name", "ek_cert_sha256", "commitment"}},
		"proof": {func(b []byte) error { _, err := ParsePeerProof(b); return err },
			map[string]any{"format": ChallengeFormat, "parent_name": name},
			[]string{"parent_name"}},
	}
	enc := func(m map[string]any, k string, v any) []byte {
		c := map[string]any{}
		for kk, vv := range m {
			c[kk] = vv
		}
		if k != "" {
			c[k] = v
		}
		b, _ := json.Marshal(c)
		return b
	}
	for what, r := range readers {
		if err := r.parse(enc(r.base, "", nil)); err != nil {
			t.Errorf("%s as provd writes it: %v", what, err)
		}
		for _, f := range r.fields {
			if err := r.parse(enc(r.base, f, strings.ToUpper(r.base[f].(string)))); err != nil {
				t.Errorf("%s with %s in uppercase: %v", what, f, err)
			}
			if err := r.parse(enc(r.base, f, "")); err != nil {
				t.Errorf("%s with %s empty: %v", what, f, err)
			}
			bad := "ab\x1b]0;owned\x07cd"
			err := r.parse(enc(r.base, f, bad))
			if !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), f+" is not hex") || strings.Contains(err.Error(), "owned") {
				t.Errorf("%s with %s of control characters: %v", what, f, err)
			}
		}
	}
}
