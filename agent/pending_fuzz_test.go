package agent

import "testing"

// The pending audit records come from disk: whatever the bytes, readPending
// returns records it checked or an error, and never panics.
func FuzzReadPending(f *testing.F) {
	f.Add([]byte(`{"seq":0,"time":"2026-12-04T19:00:00Z","op":"key-delete","uid":0,"objects":{"key":"k"},"result":"ok","prev":""}` + "\n"))
	f.Add([]byte(`{"op":"audit-anchor"}` + "\n"))
	f.Add([]byte("{\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, err := readPending(data)
		if err == nil {
			for _, r := range recs {
				if r.Op == "" {
					t.Fatalf("accepted a record with no op: %+v", r)
				}
			}
		}
	})
}
