package agent

// Review 43: tpm.TPM.SRKBack (c7a1802) under a bus interposer, and in the
// daemon's own zeroize --srk flow.
//
// HELD: TestReview43ForgedSRKBackAfterZeroize.
// Attack (A1 on the bus): a warm daemon O runs zeroize --srk (the state
// wiped, 0x81000001 evicted by O's connection: t.srkEvicted). A1 answers
// TPM2_ReadPublic(0x81000001) with the pinned SRK's real answer (captured
// before the zeroize) while the handle is empty: "forge-first" forges the
// first such read of each operation (SRKBack's), "forge-all" every one;
// "control" forges nothing. O then serves two role-less refusals (their
// audit records), a status, a key create, an audit verify and a KeyPublic.
// Expected: each fails cleanly or succeeds, nothing persists the SRK
// (read on the raw channel), no transient object or session is left held
// by nobody (review42Leftovers: the SRK's transient copy included), and
// no session is salted to a key A1 holds. Observed: control: the first
// refusal after the zeroize begins a new audit anchor whose gate key is
// made under a transient copy of the SRK (CreatePrimary), its sessions
// salted to that copy (the pinned public); keepCopy clears the mark, so
// SRKBack reads 0x81000001 once, in that operation only (22 commands, 21
// on the parent 1c8ef9b). forge-first: SRKBack believes the forged read
// and clears the mark; the records start as in the control; in later
// operations the forged read makes pinnedSRK cache 0x81000001, the
// StartAuthSession salted to it fails TPM_RC_HANDLE, srkAgain reads the
// real (empty) handle and sends it again to a transient copy: every
// operation succeeds, nothing persisted, nothing left, the trail verifies.
// On the parent (its production files checked out, this test unchanged)
// the same forge failed every record (the gate key's TPM2_Create under the
// cached 0x81000001: TPM_RC_HANDLE, records left in audit.pending):
// SRKBack made it no worse. forge-all: srkAgain's read is forged too:
// ErrResponseForged, the records wait in audit.pending (a refused request
// stays refused; AuditVerify then says so, not checked in this mode),
// nothing persisted, no session or object left; the same on the parent.
// A salt is only ever encrypted to the pinned public (keepCopy,
// pinnedSRK), never to what the bus returns: A1 holds no key any session
// is salted to, and the forge does not put the SRK back. What the forge
// leaves after A1 stops is pre-existing:
// TestReview43ForgedSRKReadOutlivesTheForge.
//
// HELD: TestReview43OwnZeroizeThenOtherProvisionSalts.
// Attack: none (other local processes); the zeroize's own flow. O runs
// zeroize --srk; its next refusal's record; another process provisions
// the state again (the SRK persisted); O's next two refusals' records;
// then AuditVerify in O and in a new process. Expected: the gate sessions
// salted exactly when the pinned SRK is at 0x81000001: unsalted
// (TPM_RH_NULL) after the zeroize, 0x81000001 after the provision; the
// records verify. Observed: after the zeroize the records are salted
// to a transient copy of the pinned SRK (the new anchor's gate key is made
// under it; accepted here: the pinned key, flushed as each operation
// ends), never to 0x81000001 or TPM_RH_NULL; after the other's provision
// to 0x81000001; both trails verify (O and a new process, 6 lines). The
// same on the parent: the copy's keepCopy already clears the mark at the
// first refusal, so in this flow SRKBack costs one TPM2_ReadPublic in that
// refusal only (3 reads, 2 on the parent). After the other's provision
// the first operation reads 0x81000001 twice (SRKBack does not cache what
// it read, pinnedSRK reads again: a nit), the next none.
import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review43SRKRead is a raw TPM2_ReadPublic(0x81000001) command.
func review43SRKRead() []byte {
	cmd := make([]byte, 14)
	binary.BigEndian.PutUint16(cmd[0:2], uint16(tpm2.TPMSTNoSessions))
	binary.BigEndian.PutUint32(cmd[2:6], 14)
	binary.BigEndian.PutUint32(cmd[6:10], uint32(tpm2.TPMCCReadPublic))
	binary.BigEndian.PutUint32(cmd[10:14], uint32(tpm.SRKHandle))
	return cmd
}

func review43IsSRKRead(cmd []byte) bool {
	return len(cmd) >= 14 && swtpmtest.CommandCode(cmd) == tpm2.TPMCCReadPublic &&
		tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == tpm.SRKHandle
}

// review43SRKThere reads 0x81000001 on the raw channel (no hook).
func review43SRKThere(next transport.TPM) bool {
	_, err := (tpm2.ReadPublic{ObjectHandle: tpm.SRKHandle}).Execute(next)
	return err == nil
}

// review43Forger answers TPM2_ReadPublic(0x81000001) with rsp (the pinned
// SRK's real answer) while on: the first of each operation (reset) or
// every one; it also records every StartAuthSession's tpmKey.
type review43Forger struct {
	rsp    []byte
	all    bool
	on     bool
	forged int
	n      int // this operation's SRK reads
	salts  []tpm2.TPMHandle
	cmds   []tpm2.TPMCC
}

func (f *review43Forger) reset() { f.n, f.salts, f.cmds = 0, nil, nil }

func (f *review43Forger) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	f.cmds = append(f.cmds, swtpmtest.CommandCode(cmd))
	if swtpmtest.CommandCode(cmd) == tpm2.TPMCCStartAuthSession && len(cmd) >= 14 {
		f.salts = append(f.salts, tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])))
	}
	if f.on && review43IsSRKRead(cmd) {
		f.n++
		if f.all || f.n == 1 {
			f.forged++
			return append([]byte(nil), f.rsp...), nil, true
		}
	}
	return nil, nil, false
}

func TestReview43ForgedSRKBackAfterZeroize(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"control", "forge-first", "forge-all"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			env, bz, o, _, _ := review41Daemon(t)
			rsp, err := bz.Next.Send(review43SRKRead())
			if err != nil || len(rsp) < 10 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
				t.Fatalf("the SRK's answer: %x %v", rsp, err)
			}
			if _, err := o.Zeroize(ctx, api.ZeroizeOptions{SRK: true}); err != nil {
				t.Fatal(err)
			}
			if review43SRKThere(bz.Next) {
				t.Fatal("not mounted: the SRK is still there after zeroize --srk")
			}
			f := &review43Forger{rsp: rsp, all: mode == "forge-all", on: mode != "control"}
			bz.Set(f.hook)
			defer bz.Set(nil)
			step := func(name string, fn func() error) {
				t.Helper()
				f.reset()
				err := fn()
				salts, cmds := f.salts, f.cmds
				bz.Set(nil)
				there := review43SRKThere(bz.Next)
				t.Logf("%s: %v; StartAuthSession tpmKeys %x; %d commands %v; SRK at 0x81000001: %v",
					name, err, salts, len(cmds), cmds, there)
				if there {
					t.Errorf("%s after zeroize --srk (A1 forging the SRK's read: %s) put the SRK back at 0x81000001", name, mode)
				}
				for _, s := range salts {
					if s != tpm2.TPMRHNull && s != tpm.SRKHandle && s>>24 != 0x80 {
						t.Errorf("%s: a session salted to 0x%08x", name, uint32(s))
					}
				}
				review42Leftovers(t, env, o, name)
				bz.Set(f.hook)
			}
			rc := api.WithCaller(ctx, api.Caller{UID: 1})
			step("refusal 1", func() error { return o.RecordRefusal(rc, "key-delete", "x") })
			step("refusal 2", func() error { return o.RecordRefusal(rc, "key-delete", "y") })
			step("status", func() error { _, err := o.Status(ctx); return err })
			step("key create", func() error {
				_, err := o.CreateKey(ctx, review41KeyReq("k2"))
				if errors.Is(err, api.ErrNotProvisioned) {
					return nil
				}
				if err == nil {
					return errors.New("a key created in a wiped state")
				}
				return err
			})
			step("key public", func() error { _, _, err := o.KeyPublic(ctx, "k"); return err })
			step("refusal 3", func() error { return o.RecordRefusal(rc, "key-delete", "z") })
			bz.Set(nil)
			rep, err := o.AuditVerify(ctx)
			t.Logf("forged reads: %d; audit verify: %d lines %v", f.forged, rep.Lines, err)
			if err != nil && mode != "forge-all" {
				t.Errorf("the audit trail does not verify after the %s run: %v", mode, err)
			}
			review42Leftovers(t, env, o, "audit verify")
		})
	}
}

// FLAW (low; failed before the mend; pre-existing: the same on the parent 1c8ef9b, not caused by
// SRKBack): TestReview43ForgedSRKReadOutlivesTheForge.
// Attack (A1 on the bus, then gone): after O's zeroize --srk, A1 answers
// every TPM2_ReadPublic(0x81000001) with the pinned SRK's real answer for
// one refused request. pinnedSRK believes it and caches the SRK at
// 0x81000001 (t.srk); the StartAuthSession salted to it fails
// TPM_RC_HANDLE, srkAgain reads again, A1 forges again: ErrResponseForged,
// and srkAgain returns before it forgets the cached SRK. A1 then stops.
// The operator runs provision in O (the threat model: provision persists a
// missing SRK; tpm.PersistSRK). Expected: provision persists the SRK and
// succeeds (A1 is gone). Observed (command trace logged): PersistSRK
// serves the cached 0x81000001 without a read; the audit anchor's
// TPM2_StartAuthSession salted to it answers TPM_RC_HANDLE, srkAgain
// reads the empty handle and, PersistMissingSRK being off in provision,
// makes a transient copy (srkCopy) and sends the session again to it; the
// gate key's TPM2_Create then names the 0x81000001 provision got first,
// TPM_RC_HANDLE, and srkAgain does nothing (t.srk is the copy now):
// provision fails ("audit gate key: TPM2_Create: TPM object not found"),
// nothing committed, 0x81000001 left empty. A second provision succeeds
// and persists it. The same on the parent 1c8ef9b: not SRKBack's. Low: one
// failed provision after A1 stops, no secret, no wrong state.
// Suggested mend: srkAgain forgets the cached persistent SRK (t.srk = nil)
// on its ErrResponseForged path too (the next SRK reads the handle again;
// tried locally and reverted: that one line makes this test pass, the
// other TestReview43 tests unchanged);
// and srkAgain in provision (tpm.PersistSRK's caller) persists rather than
// copies, e.g. provision sets PersistMissingSRK(true) as PK/AK uses do.
// Mended: the first (srkAgain forgets the cached SRK before its read).
// The second is not taken: with the flag, a failed provision would have
// the agent evict the SRK it persisted (evictSRKUnowed), a change of its
// own.
func TestReview43ForgedSRKReadOutlivesTheForge(t *testing.T) {
	ctx := context.Background()
	env, bz, o, _, dir := review41Daemon(t)
	rsp, err := bz.Next.Send(review43SRKRead())
	if err != nil || len(rsp) < 10 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		t.Fatalf("the SRK's answer: %x %v", rsp, err)
	}
	if _, err := o.Zeroize(ctx, api.ZeroizeOptions{SRK: true}); err != nil {
		t.Fatal(err)
	}
	f := &review43Forger{rsp: rsp, all: true, on: true}
	bz.Set(f.hook)
	err = o.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 1}), "key-delete", "x")
	bz.Set(nil)
	t.Logf("the refusal under A1's forged reads (%d): %v", f.forged, err)
	review42Leftovers(t, env, o, "the forged refusal")
	// A1 is gone.
	var pcmds []string
	bz.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		rsp, err := next.Send(cmd)
		e := ""
		if len(cmd) >= 14 {
			e = fmt.Sprintf("%x(h %08x)", uint32(swtpmtest.CommandCode(cmd)), binary.BigEndian.Uint32(cmd[10:14]))
		}
		if err == nil && len(rsp) >= 10 {
			e += fmt.Sprintf("=%x", binary.BigEndian.Uint32(rsp[6:10]))
		}
		pcmds = append(pcmds, e)
		return rsp, err, true
	})
	_, perr := o.Provision(ctx, review8Req())
	bz.Set(nil)
	t.Logf("the provision's commands: %v", pcmds)
	there := review43SRKThere(bz.Next)
	objs, _ := review40State(t, dir)
	t.Logf("O's provision with A1 gone: %v; SRK at 0x81000001: %v; the state holds %q", perr, there, objs)
	if perr != nil || !there {
		t.Errorf("after A1 forged the SRK's reads in one refused request (and stopped), O's provision fails or leaves 0x81000001 empty: %v (SRK there: %v)", perr, there)
	}
	_, perr2 := o.Provision(ctx, review8Req())
	t.Logf("O's provision again: %v; SRK at 0x81000001: %v", perr2, review43SRKThere(bz.Next))
	salts, err := review42Salts(t, bz, func() error {
		return o.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 1}), "key-delete", "y")
	})
	t.Logf("the next refusal: %v, tpmKeys %x", err, salts)
	review42Leftovers(t, env, o, "the next refusal")
}

func TestReview43OwnZeroizeThenOtherProvisionSalts(t *testing.T) {
	ctx := context.Background()
	env, bz, o, w, dir := review41Daemon(t)
	ptp, _ := review8Client(t, w)
	rc := api.WithCaller(ctx, api.Caller{UID: 1})
	if _, err := o.Zeroize(ctx, api.ZeroizeOptions{SRK: true}); err != nil {
		t.Fatal(err)
	}
	count := func(name string, want tpm2.TPMHandle) {
		t.Helper()
		var cmds []tpm2.TPMCC
		var salts []tpm2.TPMHandle
		bz.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
			cmds = append(cmds, swtpmtest.CommandCode(cmd))
			if swtpmtest.CommandCode(cmd) == tpm2.TPMCCStartAuthSession && len(cmd) >= 14 {
				salts = append(salts, tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])))
			}
			return nil, nil, false
		})
		err := o.RecordRefusal(rc, "key-delete", name)
		bz.Set(nil)
		t.Logf("%s: %v; %d commands (%d ReadPublic) %v; tpmKeys %x; SRK there %v",
			name, err, len(cmds), swtpmtest.Count(cmds, tpm2.TPMCCReadPublic), cmds, salts, review43SRKThere(bz.Next))
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
		for _, s := range salts {
			if s != want && !(want == tpm2.TPMRHNull && s>>24 == 0x80) {
				t.Errorf("%s: a gate session salted to 0x%08x, want 0x%08x (SRK there: %v)", name, uint32(s), uint32(want), review43SRKThere(bz.Next))
			}
		}
		review42Leftovers(t, env, o, name)
	}
	count("refusal after the zeroize", tpm2.TPMRHNull) // or the SRK's transient copy
	count("second refusal after the zeroize", tpm2.TPMRHNull)
	review42OtherProvisions(t, o, ptp, dir)
	count("refusal after the other's provision", tpm.SRKHandle)
	count("second refusal after the other's provision", tpm.SRKHandle)
	if rep, err := o.AuditVerify(ctx); err != nil {
		t.Errorf("O's audit verify: %v", err)
	} else {
		t.Logf("O's audit verify: %d lines", rep.Lines)
	}
	q, err := New(Config{TPM: ptp, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if rep, err := q.AuditVerify(ctx); err != nil {
		t.Errorf("another process's audit verify: %v", err)
	} else {
		t.Logf("another process's audit verify: %d lines", rep.Lines)
	}
}
