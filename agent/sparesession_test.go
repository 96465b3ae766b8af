package agent_test

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// The record of an operation that creates under the PK proves the audit
// gate in the policy session that authorized the creation (issue 14:
// tpm.PolicySession.Spare), one-shot and in the daemon: the PolicySecret
// names the session the TPM2_Create was authorized by, no policy session
// starts after the creation, what was made works, the trail verifies, and
// nothing is left.
func TestRecordProvesTheGateInTheCreationsSession(t *testing.T) {
	t.Parallel()
	ops := map[string]func(ctx context.Context, ag *agent.Agent) error{
		"seal": func(ctx context.Context, ag *agent.Agent) error {
			_, err := ag.Seal(ctx, api.SealRequest{Data: []byte("the disk key"), PCRs: []int{7}})
			return err
		},
		"key create": func(ctx context.Context, ag *agent.Agent) error {
			_, err := ag.CreateKey(ctx, api.CreateRequest{Name: "made", Type: "ecc-p256"})
			return err
		},
	}
	for name, op := range ops {
		for _, daemon := range []bool{false, true} {
			t.Run(name+map[bool]string{false: " one-shot", true: " daemon"}[daemon], func(t *testing.T) {
				b := &swtpmtest.Bus{}
				env, ag, dir := oneShot(t, b)
				if daemon {
					var err error
					if ag, err = agent.New(agent.Config{TPM: env.TPM, StateDir: dir, KeepSession: true}); err != nil {
						t.Fatal(err)
					}
					// A record before: the daemon's trail is open, as
					// when it serves.
					if err := ag.RecordRefusal(api.WithCaller(context.Background(), api.Caller{UID: 1}), "key-delete", "warm"); err != nil {
						t.Fatal(err)
					}
				}
				var mu sync.Mutex
				var creation, proof tpm2.TPMHandle
				var afterCreate []tpm2.TPMCC
				b.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
					mu.Lock()
					defer mu.Unlock()
					cc := swtpmtest.CommandCode(cmd)
					if creation != 0 {
						afterCreate = append(afterCreate, cc)
					}
					switch cc {
					case tpm2.TPMCCCreate:
						creation = swtpmtest.Sessions(cmd, 1)[0]
					case tpm2.TPMCCPolicySecret:
						proof = tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[14:18])) // authHandle, then policySession
					}
					return nil, nil, false
				})
				ctx := context.Background()
				err := op(ctx, ag)
				b.Set(nil)
				if err != nil {
					t.Fatal(err)
				}
				if creation == 0 || proof != creation {
					t.Errorf("the record's proof went into session 0x%08x, the creation was authorized by 0x%08x", uint32(proof), uint32(creation))
				}
				if n := swtpmtest.Count(afterCreate, tpm2.TPMCCStartAuthSession); n != 0 {
					t.Errorf("%d StartAuthSessions after the creation: %v", n, afterCreate)
				}
				if _, err := ag.AuditVerify(ctx); err != nil {
					t.Fatal(err)
				}
				if err := ag.Close(); err != nil {
					t.Fatal(err)
				}
				if left, err := env.TPM.Leftovers(); err != nil || len(left) != 0 {
					t.Errorf("left in the TPM: %x %v", left, err)
				}
			})
		}
	}
}
