package agent

// Review 44 (8c6fe57: srkAgain forgets the cached persistent SRK before
// its read, also on the ErrResponseForged path), the agent's side.
//
// HELD: TestReview44ForgedPairInAZeroizedState — the question whether a
// forgotten persistent cache has a TransientSRKOnly daemon persist the SRK
// in an operation that may not (status, a refusal). The daemon O is
// provisioned and has the SRK cached at 0x81000001; another process P
// zeroizes the state (P's zeroize on O's TPM, without --srk, so that the
// connection's srkEvicted stays false), and another program evicts the
// SRK behind the connection. A1 then answers O's refusal: TPM_RC_HANDLE(1)
// to the salted StartAuthSession naming 0x81000001, and the pinned SRK's
// real public to srkAgain's read (the forged pair): ErrResponseForged (or
// the refusal's own handling of it), the cache forgotten. A1 gone: O's
// status, a refusal, and a second status. Expected and observed:
// 0x81000001 stays empty after each (nothing persisted outside
// provision/PK/AK), no transient copy or session left held by nobody
// (review42Leftovers), and the refusal's sessions go to a transient copy
// (the SRK's key) or unsalted, never to the empty handle twice. The same on
// the parent (tpm/object.go of 8c6fe57^). The one TPM2_EvictControl sent
// after A1 is gone is the new trail's anchor (not 0x81000001; read back
// with Handles).

import (
	"context"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

func TestReview44ForgedPairInAZeroizedState(t *testing.T) {
	ctx := context.Background()
	rc := api.WithCaller(ctx, api.Caller{UID: 1})
	env, bz, o, _, dir := review41Daemon(t)
	rp, err := bz.Next.Send(review43SRKRead())
	if err != nil {
		t.Fatal(err)
	}
	// P zeroizes the state (no --srk), on the same TPM.
	if err := o.Rest(); err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{TPM: env.TPM, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Zeroize(ctx, api.ZeroizeOptions{}); err != nil {
		t.Fatal(err)
	}
	p.Close()
	// Another program evicts the SRK behind the connection.
	srk, err := (tpm2.ReadPublic{ObjectHandle: tpm.SRKHandle}).Execute(bz.Next)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: tpm2.NamedHandle{Handle: tpm.SRKHandle, Name: srk.Name}, PersistentHandle: tpm.SRKHandle}).Execute(bz.Next); err != nil {
		t.Fatal(err)
	}
	started, read := 0, 0
	bz.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		switch {
		case swtpmtest.CommandCode(cmd) == tpm2.TPMCCStartAuthSession && review44TPMKey(cmd) == tpm.SRKHandle:
			started++
			return swtpmtest.ErrorAnswer(tpm2.TPMRCHandle + 0x100), nil, true
		case review43IsSRKRead(cmd):
			read++
			return append([]byte(nil), rp...), nil, true
		}
		return nil, nil, false
	})
	err = o.RecordRefusal(rc, "key-delete", "a1")
	bz.Set(nil)
	t.Logf("the refusal under A1's forged pair: %v (salted starts %d, SRK reads forged %d)", err, started, read)
	if review43SRKThere(bz.Next) {
		t.Errorf("after the forged refusal: 0x81000001 holds the SRK again in a zeroized state")
	}
	review42Leftovers(t, env, o, "the forged refusal")
	// A1 gone.
	var salts []tpm2.TPMHandle
	var cmds []tpm2.TPMCC
	bz.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		cmds = append(cmds, swtpmtest.CommandCode(cmd))
		if swtpmtest.CommandCode(cmd) == tpm2.TPMCCStartAuthSession && len(cmd) >= 14 {
			salts = append(salts, review44TPMKey(cmd))
		}
		return nil, nil, false
	})
	st, serr := o.Status(ctx)
	t.Logf("status: %v; %+v", serr, st)
	if review43SRKThere(bz.Next) {
		t.Errorf("after status: 0x81000001 holds the SRK again")
	}
	review42Leftovers(t, env, o, "status")
	rerr := o.RecordRefusal(rc, "key-delete", "b")
	t.Logf("the next refusal: %v", rerr)
	if review43SRKThere(bz.Next) {
		t.Errorf("after the next refusal: 0x81000001 holds the SRK again in a zeroized state")
	}
	review42Leftovers(t, env, o, "the next refusal")
	if _, err := o.Status(ctx); err != nil {
		t.Logf("status again: %v", err)
	}
	bz.Set(nil)
	t.Logf("commands %v; tpmKeys %x", cmds, salts)
	// The refusal begins a new trail in the wiped state: its anchor's
	// EvictControl persists the gate key, not the SRK (read back below).
	ps, err := env.TPM.Handles(0x81000000)
	t.Logf("persistent handles: %x", ps)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range ps {
		if h == tpm.SRKHandle {
			t.Errorf("0x81000001 persisted by status or a refusal: %x", ps)
		}
	}
	for i := 1; i < len(salts); i++ {
		if salts[i] == tpm.SRKHandle && salts[i-1] == tpm.SRKHandle {
			t.Errorf("two starts salted to 0x81000001 in a row: %x", salts)
		}
	}
	if review43SRKThere(bz.Next) {
		t.Errorf("at the end: 0x81000001 holds the SRK again")
	}
	review42Leftovers(t, env, o, "the end")
}

func review44TPMKey(cmd []byte) tpm2.TPMHandle {
	return tpm2.TPMHandle(uint32(cmd[10])<<24 | uint32(cmd[11])<<16 | uint32(cmd[12])<<8 | uint32(cmd[13]))
}
