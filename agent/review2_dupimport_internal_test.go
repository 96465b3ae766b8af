package agent

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
)

// review2Dup sets up A and B (B behind bus b) and a duplicate of "k" for B.
func review2Dup(t *testing.T, opts ...swtpmtest.Option) (envB *swtpmtest.Env, b *swtpmtest.Bus, pb *Agent, dup api.DupFile) {
	t.Helper()
	b = &swtpmtest.Bus{}
	envB, pb, dup = dupForPeer(t, b, opts...)
	return envB, b, pb, dup
}

// review2AfterImport runs h on the commands from the first TPM2_Import on (the
// Import included when withImport).
func review2AfterImport(withImport bool, h swtpmtest.Hook) swtpmtest.Hook {
	var mu sync.Mutex
	seen := false
	return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		if swtpmtest.CommandCode(cmd) == tpm2.TPMCCImport && !seen {
			seen = true
			if !withImport {
				return nil, nil, false
			}
		}
		if !seen {
			return nil, nil, false
		}
		return h(next, cmd)
	}
}

// A1 passes B's TPM2_Import on (the TPM imports, the shared session's
// nonces move) and answers TPM_RC_RETRY; provd resends the same bytes,
// which meet the moved nonces. Forged (exit 15), not a wrong value, nothing
// imported or left, and the next import works. An honest RETRY: imported.
func TestReview2DupImportForgedRetryOnImport(t *testing.T) {
	t.Parallel()
	_, b, pb, dup := review2Dup(t)
	ctx := context.Background()
	n := 0
	b.Set(swtpmtest.RanThenAnswered(tpm2.TPMCCImport, tpm2.TPMRCRetry, &n))
	_, err := pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup})
	b.Set(nil)
	t.Logf("Import sent %d: %v; exit %d", n, err, api.ExitCode(err))
	if n == 0 {
		t.Fatal("not mounted")
	}
	if api.ExitCode(err) != api.ExitIdentity {
		t.Errorf("forged RETRY after the TPM imported: exit %d, want %d", api.ExitCode(err), api.ExitIdentity)
	}
	nothingImported(t, pb)
	n = 0
	b.Set(swtpmtest.AnsweredOnce(tpm2.TPMCCImport, tpm2.TPMRCRetry, &n))
	_, err = pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup})
	b.Set(nil)
	if err != nil {
		t.Fatalf("an honest RETRY on the Import: %v", err)
	}
}

// The same on the proving TPM2_Load after the Import, in the shared
// session: the TPM loads, A1 answers RETRY, the resend is refused. Forged,
// the object the first copy loaded swept, nothing imported.
func TestReview2DupImportForgedRetryOnProvingLoad(t *testing.T) {
	t.Parallel()
	_, b, pb, dup := review2Dup(t)
	ctx := context.Background()
	n := 0
	b.Set(review2AfterImport(false, swtpmtest.RanThenAnswered(tpm2.TPMCCLoad, tpm2.TPMRCRetry, &n)))
	_, err := pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup})
	b.Set(nil)
	t.Logf("proving Load sent %d: %v; exit %d", n, err, api.ExitCode(err))
	if n == 0 {
		t.Fatal("not mounted")
	}
	if api.ExitCode(err) != api.ExitIdentity {
		t.Errorf("forged RETRY after the TPM loaded: exit %d, want %d", api.ExitCode(err), api.ExitIdentity)
	}
	nothingImported(t, pb)
	n = 0
	b.Set(review2AfterImport(false, swtpmtest.AnsweredOnce(tpm2.TPMCCLoad, tpm2.TPMRCRetry, &n)))
	_, err = pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup})
	b.Set(nil)
	if err != nil {
		t.Fatalf("an honest RETRY on the proving Load: %v", err)
	}
}

// A1 clears the decrypt bit of the Import's session (the TPM would
// take the ciphertext as the inner key), or flips continueSession/audit,
// or the Load's session attributes: refused by the TPM, nothing left, the
// next import works. The Import's refusal is probed (authorizeChecked):
// the nonces did not move, so it cannot be told from a transfer key's
// value changed in the state (TestReview2DupImportWrongTransferAuthIsNotForged)
// and is exit 11, which says a wrong value or a command changed on the
// bus; the Load's, after the value worked for the Import, is forged.
func TestReview2DupImportSessionBitsFlipped(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		cc   tpm2.TPMCC
		nh   int
		bit  byte
		exit int
	}{
		{"import decrypt cleared", tpm2.TPMCCImport, 1, 0x20, api.ExitBadAuth},
		{"import continueSession cleared", tpm2.TPMCCImport, 1, 0x01, api.ExitBadAuth},
		// Since review 74 the Import's session is a policy session (T's
		// USER role is its policy's), which the TPM never takes for
		// audit (TPM_RC_ATTRIBUTES): only the bus sets that bit.
		{"import audit set", tpm2.TPMCCImport, 1, 0x80, api.ExitIdentity},
		{"import encrypt set", tpm2.TPMCCImport, 1, 0x40, api.ExitBadAuth},
		{"load decrypt cleared", tpm2.TPMCCLoad, 1, 0x20, api.ExitIdentity},
		{"load continueSession cleared", tpm2.TPMCCLoad, 1, 0x01, api.ExitIdentity},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, b, pb, dup := review2Dup(t)
			ctx := context.Background()
			ran := false
			b.Set(review2AfterImport(true, swtpmtest.Tamper(func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == c.cc }, func(cmd, rsp []byte) ([]byte, []byte) {
				if rsp != nil {
					return nil, rsp
				}
				x := append([]byte(nil), cmd...)
				x[swtpmtest.SessionAttrOffset(x, c.nh, 0)] ^= c.bit
				return x, nil
			}, &ran)))
			_, err := pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup})
			b.Set(nil)
			t.Logf("%s: %v; exit %d", c.name, err, api.ExitCode(err))
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

// A1 renames the proving Load's answer (a Load's handle has no HMAC) to
// the handle of its parent, T (provd's own object, the slots being full:
// PK, T and the new object), or to a handle nothing holds. Measured on
// f9c6f47: renamed to T, provd flushes T by the bus's word, the flush of T
// that follows finds nothing (Flush takes not-found as done), and the
// import succeeds; the object the TPM loaded does not stay. That is
// acceptable only because the blob and the loaded name are under the
// session's HMACs: the key imported must be the TPM's and work. Either
// way nothing the TPM loaded is left.
func TestReview2DupImportRenamedProvingLoad(t *testing.T) {
	t.Parallel()
	for _, to := range []string{"T", "free"} {
		t.Run(to, func(t *testing.T) {
			_, b, pb, dup := review2Dup(t)
			ctx := context.Background()
			var mu sync.Mutex
			var made, renamed tpm2.TPMHandle
			seen := false
			b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				mu.Lock()
				defer mu.Unlock()
				if swtpmtest.CommandCode(cmd) == tpm2.TPMCCImport {
					seen = true
				}
				if !seen || made != 0 || swtpmtest.CommandCode(cmd) != tpm2.TPMCCLoad {
					return nil, nil, false
				}
				decoy := tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14]))
				if to == "free" {
					decoy = 0x80fffffe
				}
				rsp, err, ok := swtpmtest.RenamedLoad(nil, decoy, &made)(next, cmd)
				renamed = decoy
				return rsp, err, ok
			})
			_, err := pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup})
			b.Set(nil)
			mu.Lock()
			m, r := made, renamed
			mu.Unlock()
			t.Logf("renamed load 0x%08x -> 0x%08x: %v; exit %d", uint32(m), uint32(r), err, api.ExitCode(err))
			if m == 0 {
				t.Fatal("not mounted")
			}
			left, lerr := pb.t.Leftovers()
			if lerr != nil {
				t.Fatal(lerr)
			}
			for _, l := range left {
				if l == m {
					t.Errorf("the object the TPM loaded (0x%08x) is left", uint32(m))
				}
			}
			if err == nil {
				// The Import's answer (the blob) and the Load's name are
				// under the session's HMAC: the key is the TPM's, and must
				// work; only the handle was A1's.
				d := make([]byte, 32)
				if _, serr := pb.Sign(ctx, "k", d, api.SignOptions{}); serr != nil {
					t.Errorf("imported with its proving load renamed, and the key does not sign: %v", serr)
				}
			}
			if err != nil {
				nothingImported(t, pb)
			}
		})
	}
}

// Neither the transfer key's value nor the imported key's authValue
// crosses B's bus in the clear in a shared-session import.
func TestReview2DupImportValuesNotOnTheBus(t *testing.T) {
	t.Parallel()
	rec := new(swtpmtest.Recorder)
	_, _, pb, dup := review2Dup(t, swtpmtest.WithRecorder(rec))
	ctx := context.Background()
	var tr transferRecord
	if err := pb.st.View(ctx, func(tx *store.Tx) error { return tx.Get(transferRec, &tr) }); err != nil {
		t.Fatal(err)
	}
	tauth, _ := hex.DecodeString(tr.Auth)
	rec.Reset()
	if _, err := pb.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup}); err != nil {
		t.Fatal(err)
	}
	var k keyRecord
	if err := pb.st.View(ctx, func(tx *store.Tx) error { return tx.Get(keyPrefix+"k", &k) }); err != nil {
		t.Fatal(err)
	}
	kauth, _ := hex.DecodeString(k.Auth)
	if n := rec.Leak(tauth); n != -1 {
		t.Errorf("the transfer key's value crossed the bus (window at %d)", n)
	}
	if n := rec.Leak(kauth); n != -1 || len(kauth) == 0 {
		t.Errorf("the key's authValue (%d bytes) crossed the bus (window at %d)", len(kauth), n)
	}
}
