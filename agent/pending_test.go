package agent_test

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// refuser answers the next n commands of code cc itself, with
// TPM_RC_SESSION_MEMORY, and does not pass them on.
type refuser struct {
	next transport.TPM
	mu   sync.Mutex
	cc   tpm2.TPMCC
	n    int
}

func (r *refuser) Send(cmd []byte) ([]byte, error) {
	r.mu.Lock()
	if r.n > 0 && tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) == r.cc {
		r.n--
		r.mu.Unlock()
		return []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x09, 0x03}, nil
	}
	r.mu.Unlock()
	return r.next.Send(cmd)
}

// An operation that ran and whose record the trail could not take (found by
// review: two answers forged on the bus, refusing the sessions of the
// record's anchor read and of its retry, left a key deleted with no line
// for it, and audit verify passed): the record waits in audit.pending, audit
// verify and status say so (audit_unanchored, exit 14), and the next audited
// operation writes it into the trail first, marked recorded_late; then the
// trail verifies again and holds the delete. The pending file is strict: one
// that does not parse refuses audited operations as tampered.
func TestUnrecordedOperationIsRecordedLate(t *testing.T) {
	r := &refuser{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(func(next transport.TPM) transport.TPM { r.next = next; return r }))
	ctx := context.Background()
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"victim", "other"} {
		if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: k, Type: "ecc-p256"}); err != nil {
			t.Fatal(err)
		}
	}
	r.mu.Lock()
	r.cc, r.n = tpm2.TPMCCStartAuthSession, 2
	r.mu.Unlock()
	if err := ag.DeleteKey(ctx, "victim"); err == nil {
		t.Fatal("the delete's record could not be written, yet it reported success")
	}
	if _, err := ag.AuditVerify(ctx); !errors.Is(err, audit.ErrUnanchored) || api.ExitCode(err) != api.ExitTampered {
		t.Fatalf("audit verify with a record waiting: %v (exit %d), want audit_unanchored, exit 14", err, api.ExitCode(err))
	}
	if st, err := ag.Status(ctx); err != nil || st.AuditError == "" {
		t.Fatalf("status with a record waiting: %+v %v", st, err)
	}
	// The next audited operation writes it first.
	if err := ag.DeleteKey(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatalf("audit verify once the record is in: %v", err)
	}
	recs, err := ag.AuditRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ops []string
	late := false
	for _, rec := range recs {
		ops = append(ops, rec.Op+":"+rec.Objects["key"])
		if rec.Op == "key-delete" && rec.Objects["key"] == "victim" {
			late = rec.Objects["recorded_late"] == "true"
		}
	}
	if !late || len(ops) < 2 || ops[len(ops)-2] != "key-delete:victim" || ops[len(ops)-1] != "key-delete:other" {
		t.Fatalf("trail: %v (victim recorded late: %v)", ops, late)
	}
	if _, err := os.Stat(filepath.Join(dir, "audit.pending")); !os.IsNotExist(err) {
		t.Fatalf("the pending file stays: %v", err)
	}

	// A pending file that does not parse is tampered with.
	if err := os.WriteFile(filepath.Join(dir, "audit.pending"), []byte("{\"op\":\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "x", Type: "ecc-p256"}); !errors.Is(err, api.ErrTampered) {
		t.Fatalf("create with a garbled pending file: %v, want tampered", err)
	}
}
