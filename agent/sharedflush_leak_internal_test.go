package agent

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// provision --force in a fresh process runs inside the audited
// operation's Share: its zeroize flushes every session the witness lists,
// the shared audit session among them, and tpm.TPM.Send then forgets the
// shared session on the flush's answer (510367b). A1 drops that one flush
// and answers it success. The witness's read-back sees the session still
// loaded, and the operation fails as forged (as it must), but nothing
// flushes the session: provd forgot it (the hook), and the read-back's
// finding asks for no sweep (tpm.TPM.Unheld), so a daemon carries a
// session nobody holds into every later operation, one of the TPM's three
// slots (and of /dev/tpmrm0's three per connection), which only the spare
// slot of counting.roomForSession absorbs. What must hold: once the
// operation is over, the TPM holds no session.
func TestForgedFlushOfSharedSessionLeavesNoSession(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	env.NoLeakCheck() // checked below; the session A1 kept is flushed by hand
	a := provisioned(t, env)
	dir := a.dir
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{TPM: env.TPM, StateDir: dir}) // a fresh process (the daemon's agent keeps going after)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx := context.Background()
	var shared, dropped tpm2.TPMHandle
	hmacStarts := 0
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		switch swtpmtest.CommandCode(cmd) {
		case tpm2.TPMCCStartAuthSession:
			st, ok := swtpmtest.SessionType(cmd)
			if !ok || st != tpm2.TPMSEHMAC {
				break
			}
			rsp, err := next.Send(cmd)
			if err == nil && len(rsp) >= 14 && binary.BigEndian.Uint32(rsp[6:10]) == 0 {
				if hmacStarts++; hmacStarts == 1 {
					shared = tpm2.TPMHandle(binary.BigEndian.Uint32(rsp[10:14])) // the operation's first: the shared session
				}
			}
			return rsp, err, true
		case tpm2.TPMCCFlushContext:
			// The shared session's flush once a second HMAC session (the
			// zeroize's witness) started beside it: the sweep's.
			if h := tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])); dropped == 0 && hmacStarts >= 2 && h == shared {
				dropped = h
				return swtpmtest.ErrorAnswer(tpm2.TPMRCSuccess), nil, true
			}
		}
		return nil, nil, false
	})
	_, err = a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}, Force: true})
	bus.Set(nil)
	t.Logf("dropped the sweep's flush of the shared session 0x%08x; provision --force: %v (exit %d)", uint32(dropped), err, api.ExitCode(err))
	if dropped == 0 {
		t.Fatal("not mounted: no flush of the shared session after the witness started")
	}
	left := loadedSessions(bus.Next)
	_, _ = (tpm2.FlushContext{FlushHandle: dropped}).Execute(bus.Next)
	if api.ExitCode(err) != api.ExitIdentity {
		t.Errorf("provision --force after A1 dropped a flush the witness then found undone: exit %d, want %d (forged)", api.ExitCode(err), api.ExitIdentity)
	}
	if left != 0 {
		t.Errorf("after the operation the TPM holds %d session(s) nobody holds (0x%08x: the shared session, whose flush A1 dropped and the witness's read-back found undone)", left, uint32(dropped))
	}
}
