package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// A move to a new anchor that a TPM fault interrupts after the old index
// went (an officer's reanchor whose NV_DefineSpace fails) is marked in
// audit.gate: status and verify say so, not tampering; the next audited
// operation makes the move again by itself, its record saying so and
// naming the index the first move replaced, and the trail verifies with
// every line kept. With another index put at the handle meanwhile (A2,
// the owner hierarchy open), the move is not made again over it: the
// operation is refused as tampering, and the officer's reanchor records
// what is there. Failed before the mend (found by make test's power-cut
// test): the trail's anchor was gone, verify said tampered, and only the
// officer's reanchor took it.
func TestInterruptedAnchorMove(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name          string
		foreign, torn bool
	}{
		{name: "made again by the next operation"},
		{name: "its record torn by a crash, made again", torn: true},
		{name: "another index put at the handle meanwhile", foreign: true},
	} {
		foreign := c.foreign
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			b := &swtpmtest.Bus{}
			env, ag, dir := provisionedBehind(t, b)
			recs, err := ag.AuditRecords(ctx)
			if err != nil {
				t.Fatal(err)
			}
			first := lastAnchorRecord(t, recs)

			sent := 0
			b.Set(swtpmtest.AnsweredOnce(tpm2.TPMCCNVDefineSpace, tpm2.TPMRCNVSpace, &sent))
			_, err = ag.AuditReanchor(ctx)
			b.Set(nil)
			if err == nil || sent != 1 {
				t.Fatalf("not mounted: reanchor with its NV_DefineSpace refused: %v (%d defines)", err, sent)
			}
			if _, err := env.TPM.ReadNVPublic(agent.AuditAnchorHandle); !errors.Is(err, tpm.ErrNotFound) {
				t.Fatalf("not mounted: the old anchor is still there (%v)", err)
			}
			if g := editGate(t, dir, nil); g["moving"] == nil {
				t.Errorf("audit.gate does not mark the move: %v", g)
			}
			st, err := ag.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(st.AuditError, "moving to a new anchor") {
				t.Errorf("status's audit error is %q, want the unfinished move", st.AuditError)
			}
			if _, err := ag.AuditVerify(ctx); err == nil || errors.Is(err, api.ErrTampered) ||
				!errors.Is(err, api.ErrAuditMoveUnfinished) || api.ExitCode(err) != api.ExitState {
				t.Errorf("verify with the move unfinished: %v (exit %d), want audit_move_unfinished, exit %d, not tampering",
					err, api.ExitCode(err), api.ExitState)
			}

			var other tpm.NVIndex
			if foreign {
				other = defineOtherAnchor(t, env.TPM)
			}
			if c.torn {
				// A crash while a move wrote its record: the line is torn.
				f, err := os.OpenFile(filepath.Join(dir, audit.FileName), os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.WriteString(`{"seq":3,"op":"audit-anchor","objects":{"gate_k`)
				f.Close()
			}
			_, err = ag.Seal(ctx, api.SealRequest{Data: []byte("after the fault")})
			if foreign {
				if !errors.Is(err, api.ErrTampered) {
					t.Fatalf("seal with another index at the handle: %v, want tampered", err)
				}
				if x, err := env.TPM.ReadNVPublic(agent.AuditAnchorHandle); err != nil || string(x.Name.Buffer) != string(other.Name.Buffer) {
					t.Fatalf("the other index was taken: %v", err)
				}
				if _, err := ag.AuditReanchor(ctx); err != nil {
					t.Fatalf("the officer's reanchor: %v", err)
				}
			} else if err != nil {
				t.Fatalf("seal after the fault: %v", err)
			}
			rep, err := ag.AuditVerify(ctx)
			if err != nil {
				t.Fatalf("verify after the move: %v", err)
			}
			if rep.Lines <= len(recs) {
				t.Errorf("%d lines after the move, %d before it: lines lost", rep.Lines, len(recs))
			}
			if g := editGate(t, dir, nil); g["moving"] != nil {
				t.Errorf("audit.gate still marks a move: %v", g)
			}
			after, err := ag.AuditRecords(ctx)
			if err != nil {
				t.Fatal(err)
			}
			moved := lastAnchorRecord(t, after)
			switch {
			case foreign && moved.Objects["replaced_nv_name"] != hex.EncodeToString(other.Name.Buffer):
				t.Errorf("the reanchor's record names %q as replaced, want the other index %x", moved.Objects["replaced_nv_name"], other.Name.Buffer)
			case !foreign && (moved.Objects["made_again"] == "" || moved.Objects["reason"] != "reanchor" || moved.UID != recs[len(recs)-1].UID):
				t.Errorf("the move made again does not say so, or lost the interrupted move's reason or uid: %+v", moved)
			case !foreign && moved.Objects["replaced_nv_name"] != first.Objects["nv_name"]:
				t.Errorf("the move made again names %q as replaced, want the first anchor %s", moved.Objects["replaced_nv_name"], first.Objects["nv_name"])
			case !foreign && moved.Objects["replaced_nv_value"] == "":
				t.Errorf("the move made again lost the replaced index's value")
			case c.torn && moved.Objects["discarded_bytes"] == "":
				t.Errorf("the move made again does not name the torn bytes it cut: %v", moved.Objects)
			}
			if got, err := ag.Unseal(ctx, mustSeal(t, ag)); err != nil || string(got) != "s" {
				t.Fatalf("unseal after the move: %q %v", got, err)
			}
		})
	}
}

// lastAnchorRecord is the last audit-anchor record of recs.
func lastAnchorRecord(t *testing.T, recs []audit.Record) audit.Record {
	t.Helper()
	for i := len(recs) - 1; i >= 0; i-- {
		if recs[i].Op == audit.OpAnchor {
			return recs[i]
		}
	}
	t.Fatal("no audit-anchor record in the trail")
	return audit.Record{}
}

// defineOtherAnchor defines, at the audit anchor's handle, a gated extend
// index of a gate that is not the trail's (what A2 could put there).
func defineOtherAnchor(t *testing.T, tp *tpm.TPM) tpm.NVIndex {
	t.Helper()
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	auth, err := tpm.NewGateAuth(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := tp.CreateGate(srk, auth)
	if err != nil {
		t.Fatal(err)
	}
	gn, err := blob.Name()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := tpm.GatedExtendPublic(agent.AuditAnchorHandle, gn.Buffer, false)
	if err != nil {
		t.Fatal(err)
	}
	x, err := tp.DefineNV(pub)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func mustSeal(t *testing.T, ag *agent.Agent) []byte {
	t.Helper()
	blob, err := ag.Seal(context.Background(), api.SealRequest{Data: []byte("s")})
	if err != nil {
		t.Fatalf("seal: %v", err)
	}
	return blob
}

// A move interrupted before it removed the old index (its NV_UndefineSpace
// refused), then made again by the next operation with A1 answering that
// move's own read of the anchor's handle "no such index" (its define then
// fails: the old index is there): the mark of the move made again still
// names the old index as the trail's (anchorMove.Known carries the
// interrupted move's), so the operation after, A1 gone, makes the move
// and the trail verifies. Failed with Known not carried from mark to mark:
// the old index at the handle was "none the move may have left", tampered.
func TestInterruptedAnchorMoveHiddenWhenMadeAgain(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env, ag, _ := provisionedBehind(t, b)
	before, err := env.TPM.ReadNVPublic(agent.AuditAnchorHandle)
	if err != nil {
		t.Fatal(err)
	}
	sent := 0
	b.Set(swtpmtest.AnsweredOnce(tpm2.TPMCCNVUndefineSpace, tpm2.TPMRCNVLocked, &sent))
	_, err = ag.AuditReanchor(ctx)
	b.Set(nil)
	if err == nil || sent != 1 {
		t.Fatalf("not mounted: reanchor with its NV_UndefineSpace refused: %v", err)
	}
	// The move made again reads the anchor's handle three times: finishMove's
	// decision under the log's lock, again inside the move, then
	// newGatedAnchor's read, which A1 answers.
	reads, hidden := 0, 0
	b.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		if !review15IsAnchorNVReadPublic(cmd) {
			return nil, nil, false
		}
		if reads++; reads != 3 {
			return nil, nil, false
		}
		hidden++
		return swtpmtest.ErrorAnswer(tpm2.TPMRCHandle + 0x100), nil, true
	})
	_, err = ag.Seal(ctx, api.SealRequest{Data: []byte("A1 hides the anchor")})
	b.Set(nil)
	if hidden != 1 || err == nil {
		t.Fatalf("not mounted: the move made again with its read hidden: %v (%d hidden)", err, hidden)
	}
	if x, err := env.TPM.ReadNVPublic(agent.AuditAnchorHandle); err != nil || string(x.Name.Buffer) != string(before.Name.Buffer) {
		t.Fatalf("not mounted: the old index is not at the handle (%v)", err)
	}
	if _, err := ag.Seal(ctx, api.SealRequest{Data: []byte("A1 gone")}); err != nil {
		t.Fatalf("seal after A1 left: %v (exit %d)", err, api.ExitCode(err))
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatalf("verify: %v", err)
	}
}

// A mark of a move that begins the log anew (fresh) but names no archive
// (A4 editing audit.gate, or a mark of another provd) is not made again:
// the lines would be cut and kept nowhere. The next operation is refused
// as tampered, and the log is as it was. Failed before: the move cut the
// log with no archive.
func TestFreshMarkWithoutArchiveCutsNothing(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env, ag, dir := provisionedBehind(t, b)
	mustSeal(t, ag)
	// The officer's reanchor of a log its anchor contradicts, its define
	// refused: a fresh mark; then its archive's name taken out.
	review17EditLine(t, dir)
	before, err := os.ReadFile(filepath.Join(dir, audit.FileName))
	if err != nil {
		t.Fatal(err)
	}
	sent := 0
	b.Set(swtpmtest.AnsweredOnce(tpm2.TPMCCNVDefineSpace, tpm2.TPMRCNVSpace, &sent))
	_, err = ag.AuditReanchor(ctx)
	b.Set(nil)
	if err == nil || sent != 1 {
		t.Fatalf("not mounted: %v", err)
	}
	editGate(t, dir, func(g map[string]any) {
		mv, _ := g["moving"].(map[string]any)
		rec, _ := mv["record"].(map[string]any)
		if mv["fresh"] != true || rec["archived_log"] == nil {
			t.Fatalf("not mounted: the mark is %v", mv)
		}
		delete(rec, "archived_log")
	})
	_, err = newAgent(t, env, dir).Seal(ctx, api.SealRequest{Data: []byte("x")})
	if !errors.Is(err, api.ErrTampered) {
		t.Errorf("seal under a fresh mark naming no archive: %v, want tampered", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, audit.FileName)); !bytes.Equal(after, before) {
		t.Errorf("the log changed: %d bytes, was %d", len(after), len(before))
	}
}
