package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
)

// srkEvictionOwed: a zeroize that left its trail and evicted the SRK owes
// the eviction to the next zeroize, its record waiting or written late
// into the live trail, until a provision since (its SRK is the new PK's)
// or a zeroize after it that kept the SRK as asked (one asked to evict
// that failed leaves the debt: review 29), the pending records being the
// newest.
func TestSRKEvictionOwed(t *testing.T) {
	zeroize := func(srk string) audit.Record {
		return audit.Record{Op: opZeroize, Result: "ok", Objects: map[string]string{keysDestroyed: "true", "srk": srk, "srk_evicted": srk}}
	}
	// A zeroize asked to evict the SRK whose eviction failed.
	failedEviction := audit.Record{Op: opZeroize, Result: "error: TPM2_EvictControl", Objects: map[string]string{keysDestroyed: "false", "srk": "true", "srk_evicted": "false"}}
	refused := audit.Record{Op: opZeroize, Result: "error: refused", Objects: map[string]string{"refused": "no role", "srk_evicted": "true"}}
	provision := audit.Record{Op: "provision", Result: "ok"}
	seal := audit.Record{Op: "seal", Result: "ok"}
	// The officer's reanchor that archived a log owing the eviction.
	carried := audit.Record{Op: "audit-anchor", Result: "ok", Objects: map[string]string{srkEvictionOwedKey: "true"}}
	for _, tc := range []struct {
		name           string
		trail, pending []audit.Record
		want           bool
	}{
		{"nothing", nil, nil, false},
		{"waiting, evicted", nil, []audit.Record{zeroize("true")}, true},
		{"waiting, not evicted", nil, []audit.Record{zeroize("false")}, false},
		{"a refusal waiting", nil, []audit.Record{refused}, false},
		{"written late, evicted", []audit.Record{seal, zeroize("true"), seal}, nil, true},
		{"written late, then provisioned", []audit.Record{zeroize("true"), provision, seal}, nil, false},
		{"written late, then a zeroize that kept the SRK", []audit.Record{zeroize("true"), zeroize("false")}, nil, false},
		{"a refusal in the trail", []audit.Record{refused}, nil, false},
		{"written late, then an eviction that failed", []audit.Record{zeroize("true"), failedEviction}, nil, true},
		{"only an eviction that failed", []audit.Record{failedEviction}, nil, false},
		{"written late, then a provision whose record waits", []audit.Record{zeroize("true")}, []audit.Record{provision}, false},
		{"provisioned, then a zeroize record waits", []audit.Record{provision}, []audit.Record{zeroize("true")}, true},
		{"carried over an archive", []audit.Record{carried, seal}, nil, true},
		{"carried over an archive, then provisioned", []audit.Record{carried, provision}, nil, false},
		{"carried over an archive, then a zeroize that kept the SRK", []audit.Record{carried, zeroize("false")}, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			write := func(name string, recs []audit.Record) {
				var b []byte
				for _, r := range recs {
					line, err := json.Marshal(r)
					if err != nil {
						t.Fatal(err)
					}
					b = append(append(b, line...), '\n')
				}
				if len(recs) > 0 {
					if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
						t.Fatal(err)
					}
				}
			}
			write(audit.FileName, tc.trail)
			write(pendingFile, tc.pending)
			if got := (&Agent{dir: dir}).srkEvictionOwed(); got != tc.want {
				t.Errorf("srkEvictionOwed = %v, want %v", got, tc.want)
			}
		})
	}
}

// A pending file larger than writePending takes is read no further than
// that bound and counts as no records (a zeroize waiting in it unseen, as
// for a file that does not parse).
func TestPendingInIsBounded(t *testing.T) {
	dir := t.TempDir()
	rec, err := json.Marshal(audit.Record{Op: opZeroize, Result: "ok", Objects: map[string]string{keysDestroyed: "true", "srk_evicted": "true"}})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, pendingFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(append(rec, '\n')); err != nil {
		t.Fatal(err)
	}
	if got := pendingIn(dir); len(got) != 1 {
		t.Fatalf("a small pending file: %d records, want 1", len(got))
	}
	if err := f.Truncate(maxPending + zeroizeRoom + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if got := pendingIn(dir); got != nil {
		t.Errorf("a pending file past the bound: %d records, want none", len(got))
	}
}

// An unfinished move, and a zeroize that left its trail, reach the CLI and
// the wire as api.ErrAuditMoveUnfinished (audit_move_unfinished, exit 8):
// not tampering (exit 14), not "anything else" (exit 1, as before), and
// each keeps its own message (the command that makes the move).
func TestUnfinishedMoveHasItsKind(t *testing.T) {
	for _, err := range []error{
		errMoveUnfinished,
		errZeroizeUnfinished,
		zeroizeLeftTrail(errZeroizeUnfinished),
		fmt.Errorf("audit trail: %w", errMoveUnfinished),
	} {
		if !errors.Is(err, api.ErrAuditMoveUnfinished) || !errors.Is(err, errMoveUnfinished) {
			t.Errorf("%q is not an unfinished move", err)
		}
		if got := api.ExitCode(err); got != api.ExitState {
			t.Errorf("%q: exit %d, want %d", err, got, api.ExitState)
		}
		if kinds := api.ErrorKinds(err); !slices.Equal(kinds, []string{"audit_move_unfinished"}) {
			t.Errorf("%q: kinds %v, want [audit_move_unfinished]", err, kinds)
		}
	}
	if errors.Is(errMoveUnfinished, errZeroizeUnfinished) {
		t.Error("every unfinished move is taken for a waiting zeroize")
	}
	if !strings.Contains(zeroizeLeftTrail(errZeroizeUnfinished).Error(), "provd zeroize again") ||
		strings.Contains(errZeroizeUnfinished.Error(), "audit repair") {
		t.Errorf("a waiting zeroize's message: %q", zeroizeLeftTrail(errZeroizeUnfinished))
	}
}
