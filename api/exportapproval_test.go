package api

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"strings"
	"testing"

	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
)

// exportApproval is an export approval by a fresh officer key.
func exportApproval(t testing.TB) *ExportApproval {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pk := sha256.Sum256([]byte("pk policy"))
	obj := append([]byte{0, 0x0b}, bytes.Repeat([]byte{7}, 32)...)
	kek := append([]byte{0, 0x0b}, bytes.Repeat([]byte{9}, 32)...)
	dup, kekPart, err := officer.ApproveExport(key, pk[:], obj, kek)
	if err != nil {
		t.Fatal(err)
	}
	return &ExportApproval{Duplication: dup, KEK: kekPart}
}

// The file: round trip, and refusals of a missing or null part, another
// format, unknown or duplicate fields, a changed part, and the file of a
// duplication approval alone (an export approval before it named the KEK),
// which must say what to do.
func TestExportApprovalFile(t *testing.T) {
	ea := exportApproval(t)
	b, err := json.Marshal(ea)
	if err != nil {
		t.Fatal(err)
	}
	var back ExportApproval
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back.KEK.ApprovedPolicy, ea.KEK.ApprovedPolicy) || !bytes.Equal(back.Duplication.ApprovedPolicy, ea.Duplication.ApprovedPolicy) {
		t.Fatal("round trip changed the approval")
	}
	var parts map[string]json.RawMessage
	if err := json.Unmarshal(b, &parts); err != nil {
		t.Fatal(err)
	}
	dup, kekPart := string(parts["duplication"]), string(parts["kek"])
	// The KEK part's approved digest with its first hex digit changed.
	at := strings.Index(kekPart, `"approved_policy":"`) + len(`"approved_policy":"`)
	digit := map[bool]string{true: "1", false: "0"}[kekPart[at] == '0']
	changed := kekPart[:at] + digit + kekPart[at+1:]
	for what, f := range map[string]string{
		"no kek":           `{"format":1,"duplication":` + dup + `}`,
		"kek null":         `{"format":1,"duplication":` + dup + `,"kek":null}`,
		"format 2":         `{"format":2,"duplication":` + dup + `,"kek":` + kekPart + `}`,
		"unknown field":    `{"format":1,"duplication":` + dup + `,"kek":` + kekPart + `,"kek_name":"00"}`,
		"kek twice":        `{"format":1,"duplication":` + dup + `,"kek":` + kekPart + `,"kek":` + kekPart + `}`,
		"kek changed":      `{"format":1,"duplication":` + dup + `,"kek":` + changed + `}`,
		"trailing":         string(b) + `{}`,
		"duplication only": dup,
	} {
		var got ExportApproval
		err := json.Unmarshal([]byte(f), &got)
		if err == nil {
			t.Errorf("%s: parsed", what)
			continue
		}
		if what == "duplication only" && !strings.Contains(err.Error(), "--kek-object-name") {
			t.Errorf("the file of a duplication approval alone: %v, want it to name --kek-object-name", err)
		}
		if got.KEK != nil || got.Duplication != nil {
			t.Errorf("%s: a refused file filled the approval", what)
		}
	}
	var none ExportApproval
	if _, err := json.Marshal(&none); err == nil {
		t.Error("an export approval with no parts marshalled")
	}
}

// FuzzParseExportApproval: an export approval file either parses into two
// parts that verify against their own keys and marshal back to a file
// that parses to the same parts, or is refused; never a panic.
func FuzzParseExportApproval(f *testing.F) {
	good, err := json.Marshal(exportApproval(f))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"format":1}`))
	f.Add([]byte(`{"format":1,"duplication":null,"kek":{}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var a ExportApproval
		if err := a.UnmarshalJSON(data); err != nil {
			return
		}
		for _, p := range []*policy.Approval{a.Duplication, a.KEK} {
			if p == nil {
				t.Fatal("parsed with a part missing")
			}
			if err := p.Verify(p.Signer); err != nil {
				t.Fatalf("parsed part does not verify: %v", err)
			}
		}
		again, err := json.Marshal(&a)
		if err != nil {
			t.Fatal(err)
		}
		var b ExportApproval
		if err := b.UnmarshalJSON(again); err != nil || !bytes.Equal(b.KEK.ApprovedPolicy, a.KEK.ApprovedPolicy) || !bytes.Equal(b.Duplication.ApprovedPolicy, a.Duplication.ApprovedPolicy) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
