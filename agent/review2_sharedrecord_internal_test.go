package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// The daemon's record inside an operation's Share (0618040): the anchor is
// read in the shared session, then the gate proved in it. A reset, power
// cut or migration after that shared read, before the gate's policy start,
// its PolicySecret, its PolicyCommandCode or the extend: never forged,
// never a wrong value, nothing left that the agent does not hold, the
// trail verifies after the next seal.
func TestReview2WarmSealRecordEventsAfterTheSharedRead(t *testing.T) {
	points := []struct {
		name string
		at   func(cmd []byte) bool
	}{
		{"policy start", func(cmd []byte) bool {
			st, ok := swtpmtest.SessionType(cmd)
			return swtpmtest.CommandCode(cmd) == tpm2.TPMCCStartAuthSession && ok && st == tpm2.TPMSEPolicy
		}},
		{"PolicySecret", func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == tpm2.TPMCCPolicySecret }},
		{"PolicyCommandCode", func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == tpm2.TPMCCPolicyCommandCode }},
		{"extend", func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == tpm2.TPMCCNVExtend }},
	}
	for _, ev := range []string{"reset", "power cut", "migrate"} {
		for _, p := range points {
			t.Run(ev+"/before "+p.name, func(t *testing.T) {
				env, b, a := recordingDaemon(t)
				ctx := context.Background()
				if _, err := a.Seal(ctx, api.SealRequest{Data: []byte("warm"), PCRs: []int{7}}); err != nil {
					t.Fatal(err)
				}
				var mu sync.Mutex
				read, fired := false, false
				b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					mu.Lock()
					defer mu.Unlock()
					if swtpmtest.CommandCode(cmd) == tpm2.TPMCCNVRead && len(cmd) >= 14 &&
						binary.BigEndian.Uint32(cmd[10:14]) == uint32(AuditAnchorHandle) &&
						tpm2.TPMISTCommandTag(binary.BigEndian.Uint16(cmd[0:2])) == tpm2.TPMSTSessions {
						read = true
					}
					if !read || fired || !p.at(cmd) {
						return nil, nil, false
					}
					fired = true
					switch ev {
					case "reset":
						env.Reset()
					case "power cut":
						env.PowerCut()
					default:
						env.Migrate()
					}
					return nil, nil, false
				})
				_, err := a.Seal(ctx, api.SealRequest{Data: []byte("the disk key"), PCRs: []int{7}})
				b.Set(nil)
				t.Logf("warm seal with a %s before the %s: %v; exit %d", ev, p.name, err, api.ExitCode(err))
				if !fired {
					t.Fatal("not mounted")
				}
				if errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) == api.ExitIdentity {
					t.Errorf("an honest %s called forged (exit %d)", ev, api.ExitCode(err))
				}
				if errors.Is(err, tpm.ErrBadAuth) || api.ExitCode(err) == api.ExitBadAuth {
					t.Errorf("an honest %s called a wrong value (exit %d)", ev, api.ExitCode(err))
				}
				if left := unheldLeft(t, a); len(left) > 0 {
					t.Errorf("left after the operation: %x", left)
				}
				if _, err := a.Seal(ctx, api.SealRequest{Data: []byte("next"), PCRs: []int{7}}); err != nil {
					t.Errorf("the next seal: %v", err)
				}
				if _, err := a.AuditVerify(ctx); err != nil {
					t.Errorf("the trail: %v", err)
				}
			})
		}
	}
}

// A1 passes the shared NV_Read of the anchor on and answers TPM_RC_RETRY;
// the resend meets the moved nonces. The record must not extend on top of
// a value it did not authenticate, must not be called tampered (exit 14)
// or a wrong value (exit 11); forged (exit 15), or the read apart that
// succeeds, are both acceptable. The trail verifies on an honest bus.
func TestReview2WarmSealSharedReadForgedRetry(t *testing.T) {
	_, b, a := recordingDaemon(t)
	ctx := context.Background()
	if _, err := a.Seal(ctx, api.SealRequest{Data: []byte("warm"), PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	n := 0
	h := swtpmtest.RanThenAnswered(tpm2.TPMCCNVRead, tpm2.TPMRCRetry, &n)
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCNVRead || len(cmd) < 14 || binary.BigEndian.Uint32(cmd[10:14]) != uint32(AuditAnchorHandle) {
			return nil, nil, false
		}
		return h(next, cmd)
	})
	_, err := a.Seal(ctx, api.SealRequest{Data: []byte("the disk key"), PCRs: []int{7}})
	b.Set(nil)
	t.Logf("anchor read sent %d: %v; exit %d", n, err, api.ExitCode(err))
	if n == 0 {
		t.Fatal("not mounted")
	}
	if c := api.ExitCode(err); err != nil && c != api.ExitIdentity {
		t.Errorf("a forged RETRY on the shared anchor read: exit %d, want %d or success", c, api.ExitIdentity)
	}
	if left := unheldLeft(t, a); len(left) > 0 {
		t.Errorf("left after the operation: %x", left)
	}
	if _, err := a.Seal(ctx, api.SealRequest{Data: []byte("next"), PCRs: []int{7}}); err != nil {
		t.Errorf("the next seal: %v", err)
	}
	if _, err := a.AuditVerify(ctx); err != nil {
		t.Errorf("the trail: %v", err)
	}
}
