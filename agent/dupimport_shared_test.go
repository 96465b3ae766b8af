package agent

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// dupForPeer is A's duplicate of an extractable P-256 key "k" for B, whose
// TPM is behind bus b (and opts): B's TPM, B, and the duplicate.
func dupForPeer(t *testing.T, b *swtpmtest.Bus, opts ...swtpmtest.Option) (*swtpmtest.Env, *Agent, api.DupFile) {
	t.Helper()
	envA := swtpmtest.Start(t)
	envB := swtpmtest.Start(t, append([]swtpmtest.Option{swtpmtest.WithBus(b)}, opts...)...)
	a, pb, peer := senderAndPeer(t, envA, envB)
	dup, err := a.DupExport(context.Background(), api.DupExportRequest{Name: "k", Peer: peer, Approval: approveDup(t, a, "k", peer), EKCA: caBundle(t, envB)})
	if err != nil {
		t.Fatal(err)
	}
	return envB, pb, dup
}

// nothingImported fails t if B holds the key "k" or left anything loaded
// that it does not hold.
func nothingImported(t *testing.T, pb *Agent) {
	t.Helper()
	if _, _, err := pb.KeyPublic(context.Background(), "k"); err == nil {
		t.Error("the key was imported")
	}
	if left := unheldLeft(t, pb); len(left) != 0 {
		t.Errorf("left in the TPM after the import: %v", left)
	}
}

// A duplicate's TPM2_Import (and the proving load after it) is authorized
// through the transfer key's policy (its USER role is its policy's since
// review 74: PolicyAuthValue and the command's code), in one policy session
// salted to the SRK that also encrypts the command's first parameter, the
// inner wrapper key: the Import's one session is a policy session, not the
// operation's shared HMAC session (which cannot satisfy T's policy), it
// decrypts, and the import works, which it could not if the key were not
// encrypted as the TPM decrypts it. B starts seven sessions (six before
// review 74: T's own is the seventh); the trail verifies; nothing is left.
func TestDupImportInTheSharedSession(t *testing.T) {
	t.Parallel()
	b := &swtpmtest.Bus{}
	envB, pb, dup := dupForPeer(t, b)
	ctx := context.Background()
	var mu sync.Mutex
	var codes []tpm2.TPMCC
	var importSessions []tpm2.TPMHandle
	var importAttrs byte
	var readSession tpm2.TPMHandle
	b.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		cc := swtpmtest.CommandCode(cmd)
		codes = append(codes, cc)
		switch cc {
		case tpm2.TPMCCImport:
			importSessions = swtpmtest.Sessions(cmd, 1)
			importAttrs = cmd[swtpmtest.SessionAttrOffset(cmd, 1, 0)]
		case tpm2.TPMCCNVRead:
			if binary.BigEndian.Uint32(cmd[10:]) == uint32(AuditAnchorHandle) {
				readSession = swtpmtest.LastSession(cmd, 2)
			}
		}
		return nil, nil, false
	})
	_, err := pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup})
	b.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(importSessions) != 1 || importSessions[0]>>24 != 0x03 || importSessions[0] == readSession {
		t.Errorf("TPM2_Import's sessions %v, the record's read 0x%08x: want one policy session, T's own", importSessions, uint32(readSession))
	}
	if importAttrs&0x20 == 0 {
		t.Errorf("TPM2_Import's session attributes 0x%02x: the inner key is not encrypted", importAttrs)
	}
	if n := swtpmtest.Count(codes, tpm2.TPMCCStartAuthSession); n != 7 {
		t.Errorf("%d StartAuthSessions, want 7: %v", n, codes)
	}
	if left, err := envB.TPM.Leftovers(); err != nil || len(left) != 0 {
		t.Fatalf("left in the TPM: %v (%v)", left, err)
	}
	if _, err := pb.AuditVerify(ctx); err != nil {
		t.Fatal(err)
	}
}

// A1 flips a byte of the encrypted inner key in that TPM2_Import: the TPM
// refuses the command (the session's HMAC covers it) without moving the
// nonces, which cannot be told from a transfer key's value changed in the
// state: exit 11 (a wrong value, or the command
// changed on its way), nothing is imported or left, and the next import
// of the same duplicate works.
func TestDupImportSharedInnerKeyChanged(t *testing.T) {
	t.Parallel()
	b := &swtpmtest.Bus{}
	_, pb, dup := dupForPeer(t, b)
	ctx := context.Background()
	ran := false
	b.Set(swtpmtest.Tamper(func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == tpm2.TPMCCImport }, func(cmd, rsp []byte) ([]byte, []byte) {
		if rsp != nil {
			return nil, rsp
		}
		c := append([]byte(nil), cmd...)
		c[swtpmtest.ParamsOffset(c, 1)+2] ^= 0x01 // encryptionKey's first byte
		return c, nil
	}, &ran))
	_, err := pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup})
	b.Set(nil)
	if !ran {
		t.Fatal("no TPM2_Import went by")
	}
	if api.ExitCode(err) != api.ExitBadAuth {
		t.Fatalf("import with its inner key changed: %v (exit %d), want exit %d", err, api.ExitCode(err), api.ExitBadAuth)
	}
	nothingImported(t, pb)
	if _, err := pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup}); err != nil {
		t.Fatalf("the next import: %v", err)
	}
}
