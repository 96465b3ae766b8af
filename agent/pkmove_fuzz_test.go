package agent

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/provd/provd/api"
)

// FuzzMovedState feeds a moved PK's state parser and checks (openMoved,
// adoptedState) arbitrary plaintexts under a valid seal, as a malicious
// origin could make them, and arbitrary sealed bytes, as anyone in transit
// could: never a panic, and nothing accepted that names another PK or
// policy. The seal is checked first, so in the field only the origin (or
// the receiver's TPM) reaches the parser.
func FuzzMovedState(f *testing.F) {
	key := bytes.Repeat([]byte{7}, stateKeySize)
	in := pkInputs{state: pkState{Policy: policyRecord{Kind: PolicySigned, Digest: "ab"}, Officer: "officer"}}
	good, _ := json.Marshal(movedState{PK: pkState{Name: "000b", Policy: in.state.Policy, Officer: "officer"}})
	f.Add(good, false)
	f.Add([]byte(`{"pk":{},"d":"","keys":[{"record":{"name":"a"}}]}`), false)
	f.Add([]byte("\x00\x01"), true)
	aad := movedAAD("000b", "000c")
	f.Fuzz(func(t *testing.T, data []byte, raw bool) {
		sealed := data
		if !raw {
			gcm, err := stateGCM(key)
			if err != nil {
				t.Fatal(err)
			}
			nonce := make([]byte, gcm.NonceSize())
			sealed = gcm.Seal(nonce, nonce, data, aad)
		}
		ms, err := openMoved(key, sealed, aad)
		if err != nil {
			return
		}
		st, err := adoptedState(in, ms, "000b", api.DupFile{})
		if err != nil {
			return
		}
		if st.Name != "000b" || st.Policy.Digest != "ab" || st.Officer != "officer" {
			t.Fatalf("adopted a state of another PK, policy or officer: %+v", st)
		}
	})
}
