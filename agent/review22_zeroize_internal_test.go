package agent

// The twenty-second review: zeroize's gate file removal and archive under
// one hold of the log's lock (747d4ee), against a move another process
// marked between zeroize's last record and that hold.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// FLAW (failed before the mend): TestReview22ZeroizeDropsAMoveMarkedBeforeItsHold (two honest
// officer processes and one crash; records lost).
//
// Attack: zeroize writes its last record, closes the log, and takes the
// log's lock to remove audit.gate and archive the log. Between its last
// record and that hold, the officer's one-shot `audit reanchor` (started
// beside it) takes the lock, writes its move's mark (audit.gate names a
// new gate, the move's record in it: the officer's findings and uid, what
// the move replaces) and is killed before it removes the old index (here:
// the mark is put in place the moment zeroize's last record's extend is
// answered, the mark an interrupted reanchor of the same trail wrote: the
// state a kill right after writeGateRecord leaves).
//
// Expected: the unfinished move's record is kept somewhere (finished
// first, or kept among the pending records / the archived log, as
// finishMove keeps a dropped mark's, opMoveDropped), and zeroize removes
// the trail's own anchor (the index its record was extended into).
//
// Observed: under the hold zeroize reads audit.gate again (removeGate),
// takes the mark's gate for the trail's, deletes audit.gate with the
// mark, and archives the log: the move's record (gate_key, the officer's
// uid and findings) is in no file. Step 3 then removes only indices named
// as the mark's gate's, so the trail's own anchor, which the move never
// removed, stays at the handle, and so does the trail's persistent gate
// key (EvictNamed by the mark's gate's name): zeroize succeeds with
// provd's objects left in the TPM (nv_indices empty in its result).
//
// Mended: under the hold, zeroize refuses its last steps when audit.gate
// marks a move whose record is not in the log (errMoveUnfinished: the
// keys destroyed and recorded, the trail whole, the mark kept); zeroize
// run again finishes the move at its open, the move's record goes into
// the trail it then archives, and the move's index and gate are removed.
//
// Suggested: under the hold, compare audit.gate with the gate zeroize's last
// record was anchored under (read before its records, or kept in the
// trailAnchor): a mark or another gate found there is another's move;
// finish it first (finishMove) or keep its record (pending, as
// opMoveDropped) and remove both its index and the trail's.
func TestReview22ZeroizeDropsAMoveMarkedBeforeItsHold(t *testing.T) {
	for _, srk := range []bool{false, true} {
		t.Run(fmt.Sprintf("srk=%v", srk), func(t *testing.T) { review22ZeroizeUnderAMark(t, srk) })
	}
}

// review22ZeroizeUnderAMark is TestReview22ZeroizeDropsAMoveMarkedBeforeItsHold,
// zeroize with --srk or without.
func review22ZeroizeUnderAMark(t *testing.T, srk bool) {
	bz := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bz))
	ctx := context.Background()
	dir := t.TempDir() + "/state"
	g1, g2, _, mark := zeroizeMarkMount(t, env, bz, dir)
	gatePath := filepath.Join(dir, gateFile)
	if x, err := env.TPM.ReadNVPublic(AuditAnchorHandle); err != nil || !g1.ownsIndex(x.Name.Buffer) {
		t.Fatalf("not mounted: the trail's anchor is not at the handle: %v", err)
	}

	// Zeroize; the mark appears once its last record is extended.
	var mu sync.Mutex
	extends, placed := 0, false
	bz.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCNVExtend {
			return nil, nil, false
		}
		rsp, err := next.Send(cmd)
		mu.Lock()
		defer mu.Unlock()
		extends++
		if extends == 2 && !placed {
			placed = os.WriteFile(gatePath, mark, 0o600) == nil
		}
		return rsp, err, true
	})
	z := review8Agent(t, env.TPM, dir)
	res, zerr := z.Zeroize(ctx, api.ZeroizeOptions{SRK: srk})
	bz.Set(nil)
	mu.Lock()
	ok := placed
	mu.Unlock()
	if !ok {
		t.Fatalf("not mounted: the mark was not placed after zeroize's last record (%d extends): %v", extends, zerr)
	}
	t.Logf("zeroize: %v; archived %s; indices removed %v", zerr, filepath.Base(res.AuditLog), res.NVIndices)
	if zerr != nil {
		// As mended: zeroize refuses its last steps under the
		// unfinished move's mark, the trail whole; zeroize again
		// finishes the move at its open, then removes the trail.
		if !errors.Is(zerr, errMoveUnfinished) {
			t.Fatalf("zeroize: %v, want the move unfinished", zerr)
		}
		if res, zerr = review8Agent(t, env.TPM, dir).Zeroize(ctx, api.ZeroizeOptions{SRK: srk}); zerr != nil {
			t.Fatalf("zeroize again: %v", zerr)
		}
		t.Logf("zeroize again: archived %s; indices removed %v", filepath.Base(res.AuditLog), res.NVIndices)
	}

	// Where is the move's record? Any file of the state directory that
	// names its gate.
	var holders []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err == nil && strings.Contains(string(b), g2.Name) {
			holders = append(holders, e.Name())
		}
	}
	t.Logf("files naming the unfinished move's gate: %v", holders)
	if len(holders) == 0 {
		t.Errorf("the unfinished move's record (the officer's reanchor, uid %d, gate %s…) is in no file: zeroize removed its mark with audit.gate", g2.Moving.UID, g2.Name[:16])
	}
	if g1.Persistent != 0 {
		if x, err := env.TPM.ReadPublic(AuditGateHandle); err == nil {
			t.Errorf("after zeroize the trail's persistent gate key is still at 0x%08x (name %x)", uint32(AuditGateHandle), x.Name.Buffer)
		}
	}
	if _, err := env.TPM.ReadPublic(tpm.SRKHandle); srk && err == nil {
		t.Error("after zeroize --srk the SRK is still there")
	}
	if x, err := env.TPM.ReadNVPublic(AuditAnchorHandle); err == nil {
		t.Errorf("after zeroize the trail's anchor is still at 0x%08x (name %x, the trail's: %v), nobody's", uint32(AuditAnchorHandle), x.Name.Buffer, g1.ownsIndex(x.Name.Buffer))
	}
}

// HELD: TestReview22RecordOfAnOpenedLogAfterAnInterruptedMove. A
// one-shot process whose trail was opened (no line appended yet: the
// append that reads no anchor, trailAnchor.Prepare's case) or a daemon
// (KeepSession, a request served) records an operation after the
// officer's reanchor of a log its anchor contradicts wrote its archive,
// began the log anew and failed before its record (every
// TPM2_PolicySecret after its define refused); and a one-shot whose trail
// was opened before the reanchor of a healthy trail failed likewise (the
// lines kept in place: its Prepare refuses under the mark, the record
// waits in the pending file). The record is neither lost nor written into
// the archive or under the unfinished move: it lands once in the trail,
// after the move's record, and the trail verifies.
func TestReview22RecordOfAnOpenedLogAfterAnInterruptedMove(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name          string
		daemon, fresh bool
	}{{"one-shot", false, true}, {"daemon", true, true}, {"one-shot-healthy-trail", false, false}} {
		daemon, fresh := c.daemon, c.fresh
		t.Run(c.name, func(t *testing.T) {
			bz := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(bz))
			ctx := context.Background()
			dir := t.TempDir() + "/state"
			first := review8Agent(t, env.TPM, dir)
			if _, err := first.Provision(ctx, review8Req()); err != nil {
				t.Fatal(err)
			}
			if _, err := first.Seal(ctx, api.SealRequest{Data: []byte("s")}); err != nil {
				t.Fatal(err)
			}
			if err := first.Close(); err != nil {
				t.Fatal(err)
			}
			user, err := New(Config{TPM: env.TPM, StateDir: dir, KeepSession: daemon})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { user.Close() })
			if daemon {
				if _, err := user.Seal(ctx, api.SealRequest{Data: []byte("served")}); err != nil {
					t.Fatal(err)
				}
			} else if err := user.openAudit(); err != nil {
				t.Fatal(err)
			}
			logPath := filepath.Join(dir, "audit.log")
			data, err := os.ReadFile(logPath)
			if err != nil {
				t.Fatal(err)
			}
			if fresh {
				edited := strings.Replace(string(data), `"op":"seal"`, `"op":"sEal"`, 1)
				if edited == string(data) {
					t.Fatal("not mounted: nothing edited")
				}
				if err := os.WriteFile(logPath, []byte(edited), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			bz.Set(swtpmtest.RefuseAfter(tpm2.TPMCCNVDefineSpace, tpm2.TPMCCPolicySecret, tpm2.TPMRCNVSpace))
			officer := review8Agent(t, env.TPM, dir)
			res, rerr := officer.AuditReanchor(ctx)
			bz.Set(nil)
			if err := officer.Close(); err != nil {
				t.Fatal(err)
			}
			g := review21Gate(t, dir)
			if rerr == nil || g.Moving == nil {
				t.Fatalf("not mounted: the reanchor %v, the mark %v", rerr, g.Moving)
			}
			archive := filepath.Join(dir, "none")
			if fresh {
				if fi, err := os.Stat(logPath); res.ArchivedLog == "" && g.Moving.Objects["archived_log"] == "" || err != nil || fi.Size() != 0 {
					t.Fatalf("not mounted: the mark %v, the log %v %v", g.Moving, fi, err)
				}
				archive = filepath.Join(dir, g.Moving.Objects["archived_log"])
			}
			const marker = "review22-recorded-after-the-cut"
			err = user.record(ctx, "seal", map[string]string{"n": marker}, nil)
			t.Logf("the record after the interrupted move: %v", err)
			next := review8Agent(t, env.TPM, dir)
			if _, err := next.Seal(ctx, api.SealRequest{Data: []byte("next")}); err != nil {
				t.Fatalf("the next seal: %v", err)
			}
			live, _ := os.ReadFile(logPath)
			arch, _ := os.ReadFile(archive)
			if n := strings.Count(string(live), marker); n != 1 {
				t.Errorf("the record is %d times in the live trail, want once", n)
			}
			if strings.Contains(string(arch), marker) {
				t.Error("the record went into the archive")
			}
			if i, j := strings.Index(string(live), `"op":"audit-anchor"`), strings.Index(string(live), marker); i < 0 || j >= 0 && j < i {
				t.Errorf("the record is before the move's record (%d, %d)", j, i)
			}
			if _, err := next.AuditVerify(ctx); err != nil {
				t.Errorf("verify: %v", err)
			}
		})
	}
}

// zeroizeMarkMount provisions dir on env's TPM and takes the mark an
// officer's reanchor of its trail writes before it removes the old index
// (from one whose NV_UndefineSpace bz refuses), then puts audit.gate back
// as it was: the trail's gate g1, the mark's gate g2, and audit.gate's
// bytes as the trail has them and as the mark has them.
func zeroizeMarkMount(t *testing.T, env *swtpmtest.Env, bz *swtpmtest.Bus, dir string) (g1, g2 *gateRecord, trailGate, mark []byte) {
	t.Helper()
	ctx := context.Background()
	first := review8Agent(t, env.TPM, dir)
	if _, err := first.Provision(ctx, review8Req()); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	gatePath := filepath.Join(dir, gateFile)
	trailGate, err := os.ReadFile(gatePath)
	if err != nil {
		t.Fatal(err)
	}
	g1 = review21Gate(t, dir)
	bz.Set(swtpmtest.Refuse(tpm2.TPMCCNVUndefineSpace, tpm2.TPMRCNVLocked))
	officer := review8Agent(t, env.TPM, dir)
	_, rerr := officer.AuditReanchor(ctx)
	bz.Set(nil)
	if err := officer.Close(); err != nil {
		t.Fatal(err)
	}
	g2 = review21Gate(t, dir)
	if rerr == nil || g2.Moving == nil || g2.Name == g1.Name {
		t.Fatalf("not mounted: the reanchor %v, the mark %+v", rerr, g2.Moving)
	}
	if mark, err = os.ReadFile(gatePath); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(gatePath, trailGate, 0o600); err != nil {
		t.Fatal(err)
	}
	return g1, g2, trailGate, mark
}
