package audit_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/audit"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// tpm.NVAnchor is the Anchor the agent gives the trail in production; tpm
// does not import audit, so the guard lives here.
var _ audit.Anchor = (*tpm.NVAnchor)(nil)

// nvAnchor maps an index never written to ErrAnchorEmpty, as the agent's
// anchor does: the TPM says TPM_RC_NV_UNINITIALIZED.
type nvAnchor struct{ *tpm.NVAnchor }

func (a nvAnchor) Read() ([]byte, error) {
	v, err := a.NVAnchor.Read()
	if errors.Is(err, tpm.ErrNVUninitialized) {
		return nil, audit.ErrAnchorEmpty
	}
	return v, err
}

// anchorHandle is an owner-range NV index of this test's own.
const anchorHandle tpm2.TPMHandle = 0x01500021

// A trail anchored in a real TPM NV extend index verifies, and the index
// holds exactly what ExpectedAnchor replays from the trail's heads: the TPM
// and the software replay chain alike. A line cut from the end is then
// caught by the TPM's value.
func TestTrailOnTPMAnchor(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	if _, err := tp.DefineExtendIndex(anchorHandle); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tp.UndefineNV(anchorHandle); err != nil {
			t.Errorf("undefine: %v", err)
		}
	})
	anchor := nvAnchor{tp.Anchor(anchorHandle)}
	path := filepath.Join(t.TempDir(), audit.FileName)
	now := func() time.Time { return time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC) }
	l, err := audit.Open(path, audit.Options{Anchor: anchor, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	var heads [][]byte
	for _, op := range []string{"provision", "key-derive", "zeroize"} {
		if err := l.Append(audit.Record{Op: op, Objects: map[string]string{}, Result: "ok"}); err != nil {
			t.Fatal(err)
		}
		rep, err := audit.Verify(path, anchor)
		if err != nil {
			t.Fatalf("after %s: %v", op, err)
		}
		heads = append(heads, rep.Head)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := anchor.Read()
	if err != nil {
		t.Fatal(err)
	}
	if want := audit.ExpectedAnchor(heads); !bytes.Equal(got, want) {
		t.Fatalf("TPM anchor %x, ExpectedAnchor %x", got, want)
	}

	// Whoever can write the file cuts the last line: the TPM's anchor,
	// which only moves forward, no longer matches the replay.
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cut := bytes.LastIndexByte(b[:len(b)-1], '\n') + 1
	if err := os.WriteFile(path, b[:cut], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := audit.Verify(path, anchor); !errors.Is(err, audit.ErrUnanchored) && !errors.Is(err, audit.ErrTampered) {
		t.Fatalf("Verify of a cut trail: %v, want it caught by the anchor", err)
	}
}
