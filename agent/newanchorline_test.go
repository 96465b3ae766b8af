package agent_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// unwrittenLiar is A1 on the first record of a new anchor (reanchor, a new
// trail, a move to a new gate): that line's "value before" is "never
// extended", and the read that says so is not authenticated. A1 passes
// provd's extend to the TPM and answers it with an error (no HMAC on an
// error); provd's read-back of the anchor (Read: an authenticated NV_Read
// as the written index) is answered TPM_RC_NV_UNINITIALIZED (an error:
// no HMAC), and the NV_ReadPublic that tells why (outside any session) with
// the index's own public area, TPMA_NV_WRITTEN cleared and the name
// recomputed. Read says ErrAnchorEmpty, which is extendAgain's "before" for
// a reset line, and provd extends once more.
type unwrittenLiar struct {
	mu                         sync.Mutex
	extended, read, readPublic bool
	extends                    int
}

func anchorHandleAt(cmd []byte, off int) bool {
	return len(cmd) >= off+4 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[off:off+4])) == agent.AuditAnchorHandle
}

func (u *unwrittenLiar) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	rc := func(v uint16) []byte { return []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, byte(v >> 8), byte(v)} }
	switch cc := swtpmtest.CommandCode(cmd); {
	case cc == tpm2.TPMCCNVExtend && anchorHandleAt(cmd, 10):
		u.extends++
		if !u.extended {
			u.extended = true
			_, _ = next.Send(cmd)
			return rc(0x148), nil, true // TPM_RC_NV_LOCKED: any error will do (no HMAC)
		}
	case cc == tpm2.TPMCCNVRead && anchorHandleAt(cmd, 14) && u.extended && !u.read:
		u.read = true
		return rc(uint16(tpm2.TPMRCNVUninitialized)), nil, true
	case cc == tpm2.TPMCCNVReadPublic && anchorHandleAt(cmd, 10) && u.read && !u.readPublic:
		u.readPublic = true
		rsp, err := next.Send(cmd)
		if err != nil || len(rsp) < 12 || rsp[6]|rsp[7]|rsp[8]|rsp[9] != 0 {
			return rsp, err, true
		}
		rsp = bytes.Clone(rsp)
		n := int(binary.BigEndian.Uint16(rsp[10:12]))
		pub := rsp[12 : 12+n]
		// attributes: after nvIndex (4) and nameAlg (2)
		attr := binary.BigEndian.Uint32(pub[6:10]) &^ (1 << 29) // TPMA_NV_WRITTEN
		binary.BigEndian.PutUint32(pub[6:10], attr)
		sum := sha256.Sum256(pub)
		name := rsp[12+n+2:]
		copy(name[2:], sum[:]) // nameAlg stays SHA-256
		return rsp, nil, true
	}
	return nil, nil, false
}

// A new anchor's first line is never extended twice (found by review: the
// record's read-back after a failed extend took "never extended" from the
// bus's word, an NV_Read error and an unauthenticated NV_ReadPublic, for
// the value before a reset line, extended again, and the genuine trail read
// as tampered). Such a line is extended again only by the officer's repair.
func TestNewAnchorsFirstLineNeverExtendedTwice(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatal(err)
	}
	u := &unwrittenLiar{}
	b.Set(u.hook)
	_, err := ag.AuditReanchor(ctx)
	b.Set(nil)
	if !u.readPublic {
		t.Fatalf("attack not mounted (extended %v read %v); reanchor: %v", u.extended, u.read, err)
	}
	t.Logf("reanchor through A1: %v; extends sent: %d", err, u.extends)
	if u.extends > 1 {
		t.Errorf("provd extended the new anchor's first line %d times", u.extends)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Errorf("a genuine trail after A1's forged \"never extended\": verify: %v", err)
	}
	if _, err := ag.ImportKeyBlob(ctx, ".bad-name", nil); !errors.Is(err, api.ErrBadInput) {
		t.Errorf("the next audited operation: %v", err)
	}
}
