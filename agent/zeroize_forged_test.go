package agent_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// zeroizeLiar is A1 against zeroize: while on, it drops the commands whose
// codes are in drop and answers success itself. naive answers as the
// review's interposer did (one password session in the response); otherwise
// it answers with one session entry per session of the command, a random
// nonce and HMAC for each that is not a password session. flush, when set,
// is the one transient handle whose TPM2_FlushContext it drops (that
// command takes no sessions: the answer is a bare header).
type zeroizeLiar struct {
	next   transport.TPM
	on     atomic.Bool
	naive  bool
	drop   map[tpm2.TPMCC]bool
	flush  atomic.Uint32
	forged atomic.Int32
}

func (x *zeroizeLiar) wrap(next transport.TPM) transport.TPM { x.next = next; return x }

func (x *zeroizeLiar) Send(cmd []byte) ([]byte, error) {
	if !x.on.Load() || len(cmd) < 10 {
		return x.next.Send(cmd)
	}
	cc := tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
	switch {
	case cc == tpm2.TPMCCFlushContext && len(cmd) >= 14 && x.flush.Load() != 0 && binary.BigEndian.Uint32(cmd[10:14]) == x.flush.Load():
		x.forged.Add(1)
		return []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0}, nil
	case !x.drop[cc]:
		return x.next.Send(cmd)
	case x.naive:
		x.forged.Add(1)
		return []byte{0x80, 0x02, 0, 0, 0, 19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0}, nil
	}
	// EvictControl and NV_UndefineSpace have two handles before the
	// authorization area.
	off := 10 + 8
	end := off + 4 + int(binary.BigEndian.Uint32(cmd[off:]))
	off += 4
	rsp := []byte{0x80, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} // header, parameterSize 0
	for off < end {
		h := binary.BigEndian.Uint32(cmd[off:])
		off += 4
		off += 2 + int(binary.BigEndian.Uint16(cmd[off:])) // nonceCaller
		attrs := cmd[off]
		off++
		off += 2 + int(binary.BigEndian.Uint16(cmd[off:])) // hmac
		if tpm2.TPMHandle(h) == tpm2.TPMRSPW {
			rsp = append(rsp, 0, 0, 1, 0, 0)
			continue
		}
		nonce, mac := make([]byte, 16), make([]byte, 32)
		rand.Read(nonce)
		rand.Read(mac)
		rsp = binary.BigEndian.AppendUint16(rsp, 16)
		rsp = append(rsp, nonce...)
		rsp = append(rsp, attrs)
		rsp = binary.BigEndian.AppendUint16(rsp, 32)
		rsp = append(rsp, mac...)
	}
	binary.BigEndian.PutUint32(rsp[2:6], uint32(len(rsp)))
	x.forged.Add(1)
	return rsp, nil
}

// The review's finding R3-2, mounted again (TestReview3ZeroizeBelievesTheBus):
// A1 drops TPM2_EvictControl and TPM2_NV_UndefineSpace and answers success,
// as the review did (one password session in the answer) and with an
// answer shaped for provd's sessions. zeroize --srk now sends both with a
// witness session salted to the pinned SRK: the forged success is
// tpm_response_forged (exit 15), nothing is reported removed, the audit
// record says what the TPM confirmed (nothing), and the SRK and indices are
// where they were. On an honest bus the same zeroize then goes through,
// authenticated.
func TestZeroizeReportsOnlyWhatTheTPMConfirmed(t *testing.T) {
	for _, naive := range []bool{true, false} {
		name := "shaped answer"
		if naive {
			name = "the review's answer"
		}
		t.Run(name, func(t *testing.T) {
			x := &zeroizeLiar{naive: naive, drop: map[tpm2.TPMCC]bool{tpm2.TPMCCEvictControl: true, tpm2.TPMCCNVUndefineSpace: true}}
			env := swtpmtest.Start(t, swtpmtest.WithWrap(x.wrap))
			ctx := context.Background()
			dir := t.TempDir() + "/state"
			ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			defer ag.Close()
			// A signed policy: the policy counter and its authorizer are
			// defined beside the audit anchor.
			signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, Signer: signer.Public()}); err != nil {
				t.Fatal(err)
			}
			before, err := env.TPM.ListNV()
			if err != nil {
				t.Fatal(err)
			}
			x.on.Store(true)
			res, err := ag.Zeroize(ctx, api.ZeroizeOptions{SRK: true})
			x.on.Store(false)
			t.Logf("zeroize through A1: %+v err=%v (forged answers: %d)", res, err, x.forged.Load())
			if x.forged.Load() == 0 {
				t.Fatal("nothing dropped: the attack is not mounted")
			}
			if !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != 15 {
				t.Fatalf("zeroize through A1: %v (exit %d), want tpm_response_forged (exit 15)", err, api.ExitCode(err))
			}
			if res.SRKEvicted || len(res.NVIndices) != 0 || !res.Authenticated {
				t.Errorf("zeroize through A1 reported %+v: want nothing removed, authenticated", res)
			}
			if _, err := env.TPM.ReadPublic(tpm.SRKHandle); err != nil {
				t.Fatalf("the SRK: %v (the eviction was dropped, it must still be there)", err)
			}
			after, _ := env.TPM.ListNV()
			if !slices.Equal(before, after) {
				t.Fatalf("NV indices before %x, after %x: the undefines were dropped", before, after)
			}
			recs, err := audit.ReadRecords(filepath.Join(dir, audit.FileName))
			if err != nil {
				t.Fatal(err)
			}
			last := recs[len(recs)-1]
			if last.Op != "zeroize" || last.Result == "ok" || last.Objects["tpm_authenticated"] != "true" ||
				last.Objects["srk_evicted"] != "false" || last.Objects["nv_indices_removed"] != "" {
				t.Fatalf("the zeroize record: %+v", last)
			}

			// The same zeroize on an honest bus: authenticated, and true.
			res, err = ag.Zeroize(ctx, api.ZeroizeOptions{SRK: true})
			if err != nil {
				t.Fatalf("zeroize on an honest bus: %v", err)
			}
			if !res.SRKEvicted || !res.Authenticated || len(res.NVIndices) != 3 {
				t.Fatalf("zeroize on an honest bus: %+v", res)
			}
			if _, err := env.TPM.ReadPublic(tpm.SRKHandle); !errors.Is(err, tpm.ErrNotFound) {
				t.Fatalf("the SRK after zeroize --srk: %v", err)
			}
			for _, h := range []tpm2.TPMHandle{agent.PolicyCounterHandle, agent.CounterAuthorizerHandle, agent.AuditAnchorHandle} {
				if _, err := env.TPM.ReadNVPublic(h); !errors.Is(err, tpm.ErrNotFound) {
					t.Errorf("NV index 0x%08x after zeroize: %v", uint32(h), err)
				}
			}
		})
	}
}

// TPM2_FlushContext takes no session, so A1 can answer it; zeroize counts
// a flush only when the witness's read-back no longer lists the handle, and
// one still listed is tpm_response_forged.
func TestZeroizeFlushesAreReadBack(t *testing.T) {
	x := &zeroizeLiar{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(x.wrap))
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	// A leftover, as a crashed run leaves one.
	left, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}).Execute(env.TPM)
	if err != nil {
		t.Fatal(err)
	}
	x.flush.Store(uint32(left.ObjectHandle))
	x.on.Store(true)
	res, err := ag.Zeroize(ctx, api.ZeroizeOptions{})
	x.on.Store(false)
	if x.forged.Load() == 0 {
		t.Fatal("no flush dropped: the attack is not mounted")
	}
	if !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != 15 {
		t.Fatalf("zeroize with a dropped flush: %v (exit %d), want tpm_response_forged (exit 15)", err, api.ExitCode(err))
	}
	if res.Flushed != 0 {
		t.Errorf("zeroize reported %d handles flushed; the one leftover is still loaded", res.Flushed)
	}
	if _, err := env.TPM.ReadPublic(left.ObjectHandle); err != nil {
		t.Fatalf("the leftover: %v (its flush was dropped)", err)
	}
	res, err = ag.Zeroize(ctx, api.ZeroizeOptions{})
	if err != nil || res.Flushed != 1 || !res.Authenticated {
		t.Fatalf("zeroize on an honest bus: %+v, %v", res, err)
	}
}
