package agent

import (
	"bytes"
	"context"
	"testing"

	"github.com/provd/provd/api"
)

// TestHostileDupLeavesNothing: someone in transit alters the parts
// of a genuine, approved .dup that reach B's TPM (credential, duplicate,
// seed): flipped, truncated, emptied, oversized (past a TPM2B's 16-bit
// length). Every import must fail without leaving a handle (the harness
// checks at cleanup), without failure mode, and the genuine file must
// import afterwards.
func TestHostileDupLeavesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, b, _, _, dup := movedKey(t)
	fields := map[string]func(*api.DupFile) *[]byte{
		"credential_blob":   func(f *api.DupFile) *[]byte { return &f.CredentialBlob },
		"credential_secret": func(f *api.DupFile) *[]byte { return &f.CredentialSecret },
		"duplicate":         func(f *api.DupFile) *[]byte { return &f.Duplicate },
		"seed":              func(f *api.DupFile) *[]byte { return &f.Seed },
	}
	muts := map[string]func([]byte) []byte{
		"flip-first": func(b []byte) []byte { c := bytes.Clone(b); c[0] ^= 1; return c },
		"flip-last":  func(b []byte) []byte { c := bytes.Clone(b); c[len(c)-1] ^= 0x80; return c },
		"truncate":   func(b []byte) []byte { return bytes.Clone(b[:len(b)/2]) },
		"empty":      func(b []byte) []byte { return nil },
		"4k":         func(b []byte) []byte { return bytes.Repeat([]byte{0x41}, 4000) },
		"65537":      func(b []byte) []byte { return append(bytes.Repeat([]byte{0}, 65536), b...) },
	}
	for fn, field := range fields {
		for mn, m := range muts {
			f := dup
			p := field(&f)
			*p = m(*p)
			_, err := b.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: f})
			if err == nil {
				t.Errorf("%s/%s imported", fn, mn)
				continue
			}
			t.Logf("%s/%s: exit %d: %.160v", fn, mn, api.ExitCode(err), err)
		}
	}
	f := dup
	f.EKCertSHA256 = "00"
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: f}); err == nil {
		t.Error("another EK cert sum imported")
	}
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup}); err != nil {
		t.Fatalf("the genuine file after the hostile ones: %v", err)
	}
}
