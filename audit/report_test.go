package audit

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// A report's JSON form is snake_case with hashes in hex (found by review:
// Go field names and base64), and reads back as it was.
func TestReportJSON(t *testing.T) {
	r := Report{Lines: 3, Head: bytes.Repeat([]byte{0xab}, 32), Anchor: bytes.Repeat([]byte{0x01}, 32)}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"lines":3,"head":"` + strings.Repeat("ab", 32) + `","anchor":"` + strings.Repeat("01", 32) + `"}`; string(b) != want {
		t.Fatalf("got %s\nwant %s", b, want)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil || !bytes.Equal(back.Head, r.Head) || !bytes.Equal(back.Anchor, r.Anchor) || back.Lines != 3 {
		t.Fatalf("round trip: %+v %v", back, err)
	}
	var empty Report
	if err := json.Unmarshal([]byte(`{"lines":0,"head":"","anchor":""}`), &empty); err != nil || empty.Head != nil || empty.Anchor != nil {
		t.Fatalf("empty: %+v %v", empty, err)
	}
	if err := json.Unmarshal([]byte(`{"lines":0,"head":"zz","anchor":""}`), &empty); err == nil {
		t.Fatal("a head that is not hex was read")
	}
}
