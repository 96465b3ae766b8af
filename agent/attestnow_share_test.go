package agent_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// quoteThenRecord is attest now's sequence in one process (the CLI's
// inOneSession): the quote, then, after the endpoint's answer, the
// verdict's record, in one agent.Agent.Share; between is called between
// the two.
func quoteThenRecord(q *quoteEnv, between func()) (api.AttestQuoteResult, error) {
	ctx := context.Background()
	nonce := sha256.Sum256([]byte("the endpoint's nonce"))
	var res api.AttestQuoteResult
	err := q.ag.Share(func() (err error) {
		res, err = q.ag.AttestQuote(ctx, api.AttestQuoteRequest{Nonce: nonce[:], PCRs: map[string][]int{"sha256": {0, 7}}})
		if err != nil {
			return err
		}
		between()
		_, err = q.ag.AttestRecord(ctx, api.AttestVerdict{Endpoint: "https://fleet.example", DeviceID: "dev-1", AppraisalID: "a-1", Pass: true})
		return err
	})
	return res, err
}

// attest now's record goes in the quote's session (issue 14): one
// StartAuthSession and one FlushContext fewer than two operations each
// starting and flushing a session of its own. The first record after the
// quote starts no session but its gate's policy session.
func TestAttestNowRecordInTheQuotesSession(t *testing.T) {
	q := startQuoteEnv(t)
	log := &swtpmtest.CommandLog{}
	q.bus.Set(log.Hook)
	log.Start()
	if _, err := quoteThenRecord(q, func() {}); err != nil {
		t.Fatal(err)
	}
	cmds := log.Stop()
	starts := 0
	for _, cc := range cmds {
		if cc == tpm2.TPMCCStartAuthSession {
			starts++
		}
	}
	if starts != 2 {
		t.Errorf("quote and record started %d sessions, want 2 (the shared one, the gate's policy session): %v", starts, cmds)
	}
	if _, err := q.ag.AuditVerify(context.Background()); err != nil {
		t.Fatalf("the trail after the record: %v", err)
	}
	q.noLeftovers(t)
}

// What can happen to the TPM while attest now waits for the endpoint, with
// the shared session kept over that wait: a reset, a power cut, a
// migration, or another holder of the TPM (root on /dev/tpm0 between two
// of provd's commands) flushing the session. The record is made in a
// session started anew, none is called forged or a wrong value, nothing is
// left, the trail verifies, and the next attest now works.
func TestAttestNowEventsWhileTheEndpointAppraises(t *testing.T) {
	t.Parallel()
	events := map[string]func(q *quoteEnv){
		// Sent on the bus before provd's next command, so that provd does
		// not know of it, as another holder's would be.
		"flushed by another": func(q *quoteEnv) {
			left, err := q.env.TPM.Leftovers()
			if err != nil || len(left) != 1 {
				panic(fmt.Sprintf("want the shared session alone loaded: %x %v", left, err))
			}
			flush := binary.BigEndian.AppendUint32([]byte{0x80, 0x01, 0, 0, 0, 14, 0, 0, 0x01, 0x65}, uint32(left[0]))
			done := false
			q.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if !done {
					done = true
					if rsp, err := next.Send(flush); err != nil || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
						panic(fmt.Sprintf("the other's flush: %x %v", rsp, err))
					}
				}
				return nil, nil, false
			})
		},
	}
	for _, name := range swtpmtest.Events {
		events[name] = func(q *quoteEnv) { q.env.Event(name) }
	}
	for name, ev := range events {
		t.Run(name, func(t *testing.T) {
			q := startQuoteEnv(t)
			_, err := quoteThenRecord(q, func() { ev(q) })
			t.Logf("the record after a %s: %v (exit %d)", name, err, api.ExitCode(err))
			if err != nil {
				t.Errorf("the record failed: %v", err)
			}
			if errors.Is(err, tpm.ErrResponseForged) || errors.Is(err, tpm.ErrBadAuth) {
				t.Errorf("an honest %s called forged or a wrong value", name)
			}
			if _, err := q.ag.AuditVerify(context.Background()); err != nil {
				t.Fatalf("the trail after a %s: %v", name, err)
			}
			q.noLeftovers(t)
			if _, err := quoteThenRecord(q, func() {}); err != nil {
				t.Fatalf("the next attest now: %v", err)
			}
			q.noLeftovers(t)
		})
	}
}

var _ interface{ Share(func() error) error } = (*agent.Agent)(nil)
