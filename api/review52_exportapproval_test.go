package api

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/provd/provd/internal/strictjson"
)

// Held: the export approval file and the export request are read one way
// only. Keys that differ in case only (which encoding/json matches to one
// field, the last winning) are refused as duplicates at the file's level
// and inside a part, as the request's approval; a part given twice in a
// part's own fields, a number where the format goes, an approval nested in
// an array, the parts nested one level down, and a duplication-only
// approval in a request (the old format) are refused. What the file says
// is what the device checks: a file whose parts are swapped parses (each
// part is a valid approval) and the device refuses it (the agent's
// TestReview52ExportApprovalConfusion).
func TestReview52ExportApprovalParserEdges(t *testing.T) {
	ea := exportApproval(t)
	other := exportApproval(t)
	b, err := json.Marshal(ea)
	if err != nil {
		t.Fatal(err)
	}
	var parts map[string]json.RawMessage
	if err := json.Unmarshal(b, &parts); err != nil {
		t.Fatal(err)
	}
	ob, _ := json.Marshal(other)
	var oparts map[string]json.RawMessage
	if err := json.Unmarshal(ob, &oparts); err != nil {
		t.Fatal(err)
	}
	dup, kek, okek := string(parts["duplication"]), string(parts["kek"]), string(oparts["kek"])
	// A part with its signature field given again in another case.
	sigAt := strings.Index(kek, `"signature":`)
	if sigAt < 0 {
		t.Fatalf("no signature field in %s", kek)
	}
	kekSigTwice := kek[:len(kek)-1] + `,"Signature":` + kek[sigAt+len(`"signature":`):]
	for what, f := range map[string]string{
		"kek and KEK":                      `{"format":1,"duplication":` + dup + `,"kek":` + okek + `,"KEK":` + kek + `}`,
		"KEK then kek":                     `{"format":1,"duplication":` + dup + `,"KEK":` + kek + `,"kek":` + okek + `}`,
		"duplication and Duplication":      `{"format":1,"duplication":` + dup + `,"Duplication":` + dup + `,"kek":` + kek + `}`,
		"format and FORMAT":                `{"format":1,"FORMAT":1,"duplication":` + dup + `,"kek":` + kek + `}`,
		"a part's signature twice by case": `{"format":1,"duplication":` + dup + `,"kek":` + kekSigTwice + `}`,
		"format as a string":               `{"format":"1","duplication":` + dup + `,"kek":` + kek + `}`,
		"format 1.5":                       `{"format":1.5,"duplication":` + dup + `,"kek":` + kek + `}`,
		"kek in an array":                  `{"format":1,"duplication":` + dup + `,"kek":[` + kek + `]}`,
		"the parts one level down":         `{"format":1,"approval":{"duplication":` + dup + `,"kek":` + kek + `}}`,
		"null":                             `null`,
		"an empty object":                  `{}`,
		"duplication null":                 `{"format":1,"duplication":null,"kek":` + kek + `}`,
		"kek an empty object":              `{"format":1,"duplication":` + dup + `,"kek":{}}`,
		"kek the string of the part":       `{"format":1,"duplication":` + dup + `,"kek":` + strconv.Quote(kek) + `}`,
		"a leading byte order mark":        "\ufeff" + string(b),
	} {
		var got ExportApproval
		if err := got.UnmarshalJSON([]byte(f)); err == nil {
			t.Errorf("%s: parsed", what)
		}
		if got.KEK != nil || got.Duplication != nil {
			t.Errorf("%s: a refused file filled the approval", what)
		}
	}
	for what, body := range map[string]string{
		"the approval's kek and KEK":          `{"name":"ext","kek":"backup-kek","approval":{"format":1,"duplication":` + dup + `,"kek":` + okek + `,"KEK":` + kek + `}}`,
		"the request's approval and Approval": `{"name":"ext","kek":"backup-kek","approval":` + string(ob) + `,"Approval":` + string(b) + `}`,
		"the old duplication-only approval":   `{"name":"ext","kek":"backup-kek","approval":` + dup + `}`,
		"the request's kek and KEK":           `{"name":"ext","kek":"mine","KEK":"backup-kek","approval":` + string(b) + `}`,
	} {
		var req KeyExportRequest
		if err := strictjson.Decode([]byte(body), &req); err == nil {
			t.Errorf("request with %s: decoded as %+v", what, req)
		}
	}
	// Control: the file itself, and a request carrying it.
	var back ExportApproval
	if err := back.UnmarshalJSON(b); err != nil {
		t.Fatalf("control: %v", err)
	}
	var req KeyExportRequest
	if err := strictjson.Decode([]byte(`{"name":"ext","kek":"backup-kek","approval":`+string(b)+`}`), &req); err != nil || req.Approval == nil || req.Approval.KEK == nil {
		t.Fatalf("control, the request: %v", err)
	}
}
