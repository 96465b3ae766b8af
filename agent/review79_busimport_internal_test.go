package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// Held: A1 on the receiver's bus changes the duplicate's TPM2_Import under
// T, authorized through T's Import branch in a policy session salted to
// the SRK and keyed by T's value, which also encrypts the inner wrapper
// key: a bit of the encrypted inner key flipped, or the session's decrypt
// bit cleared (the TPM would take the ciphertext as the key): the TPM
// refuses the command's HMAC (TPM_RC_BAD_AUTH, exit 11, which
// importDuplicate documents as a wrong value or a changed command). A byte
// of the answer's private blob changed, or the answer's session entry cut
// off (no response HMAC): provd refuses the answer as forged (exit 15).
// Each time nothing is recorded, nothing is left in the TPM, and the same
// duplicate imports afterwards. Never a success, never exit 3.
func TestReview79DupImportUnderTChangedOnTheBus(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, c := range []struct {
		mode string
		exit int
	}{{"inner key", api.ExitBadAuth}, {"decrypt bit", api.ExitBadAuth}, {"answer blob", api.ExitIdentity}, {"answer HMAC dropped", api.ExitIdentity}} {
		t.Run(c.mode, func(t *testing.T) {
			t.Parallel()
			bus := &swtpmtest.Bus{}
			_, pb, dup := dupForPeer(t, bus)
			ran := false
			bus.Set(swtpmtest.Tamper(swtpmtest.Code(tpm2.TPMCCImport), func(cmd, rsp []byte) ([]byte, []byte) {
				if rsp == nil {
					m := bytes.Clone(cmd)
					switch c.mode {
					case "inner key":
						m[swtpmtest.ParamsOffset(m, 1)+2] ^= 1 // encryptionKey's first byte, after its size
						return m, nil
					case "decrypt bit":
						m[swtpmtest.SessionAttrOffset(m, 1, 0)] &^= 0x20 // TPMA_SESSION decrypt
						return m, nil
					}
					return nil, nil
				}
				r := bytes.Clone(rsp)
				switch c.mode {
				case "answer blob":
					r[30] ^= 0xff
				case "answer HMAC dropped":
					// The session entry: nonceTPM (2+32), attributes, HMAC (2+32).
					r = r[:len(r)-(2+32+1+2+32)]
					binary.BigEndian.PutUint32(r[2:6], uint32(len(r)))
				}
				return nil, r
			}, &ran))
			_, err := pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup})
			bus.Set(nil)
			t.Logf("%s: %v (exit %d)", c.mode, err, api.ExitCode(err))
			if !ran {
				t.Fatal("not mounted")
			}
			if err == nil {
				t.Fatal("imported")
			}
			if api.ExitCode(err) != c.exit {
				t.Errorf("exit %d, want %d", api.ExitCode(err), c.exit)
			}
			nothingImported(t, pb)
			if _, err := pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup}); err != nil {
				t.Fatalf("the next import: %v", err)
			}
		})
	}
}
