// Review 33: the whole interposer against the SRK's transient copy.
//
// FLAW (of the threat model's claims, failed before the mend):
// TestReview33CopyInterposerTakesTheGateSession — on a TPM with no SRK, A1
// that forges the copy's TPM2_CreatePrimary answer (its own key, as the
// full interposer does) and also redirects the sessions salted to the
// handle that answer names (the copy's, 0x80xxxxxx, not 0x81000001) takes
// the provision's first session before first contact and decrypts the
// audit gate's authValue from the gate key's TPM2_Create. The threat model
// said the attacker "takes no session at all" there (b81aafd) and that
// "the gates' authValues ... never cross the bus". Nothing is authenticated
// before first contact (A1 can forge those records anyway), and the old
// persisting path gave A1 the same session: the mend corrects the claims,
// and the test holds the bound they state now: one session, the gate's
// creation, no more; the provision refused at first contact; the gate
// replaced by an honest provision.
//
// HELD: (none in this file)
package agent

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// copyInterposer is the full interposer (loadExternalInterposer) taught the
// transient copy: every handle its forged CreatePrimary answers name is
// treated as the SRK (sessions salted to it are hijacked, command HMACs that
// name it are recomputed over the real name).
type copyInterposer struct {
	x      *loadExternalInterposer
	next   transport.TPM
	copies map[uint32]bool
}

func (c *copyInterposer) wrap(next transport.TPM) transport.TPM {
	c.next = next
	c.x.next = next
	return c
}

func (c *copyInterposer) srk(h tpm2.TPMHandle) bool { return h == tpm.SRKHandle || c.copies[uint32(h)] }

func (c *copyInterposer) Send(cmd []byte) ([]byte, error) {
	x := c.x
	if !x.on.Load() || len(cmd) < 14 {
		return c.next.Send(cmd)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	cc := tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
	first := tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14]))
	if cc == tpm2.TPMCCStartAuthSession && c.srk(first) {
		return x.hijack(cmd)
	}
	if cc == tpm2.TPMCCFlushContext {
		delete(x.sessions, uint32(first))
		delete(c.copies, uint32(first))
	}
	ss := x.readCommand(cc, cmd)
	cmd = c.rewrite(cc, cmd, ss)
	rsp, err := c.next.Send(cmd)
	if err != nil || len(rsp) < 10 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		return rsp, err
	}
	x.readResponse(cc, cmd, rsp, ss)
	switch {
	case cc == tpm2.TPMCCReadPublic && c.srk(first):
		x.forged++
		return x.readPublicAnswer(cmd, rsp), nil
	case cc == tpm2.TPMCCCreatePrimary && first == tpm2.TPMRHOwner:
		x.forged++
		c.copies[binary.BigEndian.Uint32(rsp[10:14])] = true
		return x.createPrimaryAnswer(cmd, rsp), nil
	}
	return rsp, nil
}

// rewrite is rewriteHMACs with the copy's handles as the SRK's.
func (c *copyInterposer) rewrite(cc tpm2.TPMCC, cmd []byte, ss []cmdSession) []byte {
	x := c.x
	nh := cmdHandles[cc]
	names := false
	for i := range nh {
		names = names || c.srk(tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10+4*i:])))
	}
	if !names || len(ss) == 0 {
		return cmd
	}
	provds, real := sha256.New(), sha256.New()
	provds.Write(cmd[6:10])
	real.Write(cmd[6:10])
	for i := range nh {
		h := tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10+4*i:]))
		name, err := x.realName(h)
		if err != nil {
			x.failed = append(x.failed, err)
			return cmd
		}
		real.Write(name)
		if c.srk(h) {
			name = x.name.Buffer
		}
		provds.Write(name)
	}
	off := 10 + 4*nh
	params := cmd[off+4+int(binary.BigEndian.Uint32(cmd[off:])):]
	provds.Write(params)
	real.Write(params)
	provdsCP, realCP := provds.Sum(nil), real.Sum(nil)
	out := append([]byte(nil), cmd...)
	for i, sess := range ss {
		st := x.sessions[sess.handle]
		if st == nil {
			continue
		}
		var extra []byte
		if i == 0 {
			for _, o := range ss[1:] {
				if o.attrs&0x60 == 0 {
					continue
				}
				ost := x.sessions[o.handle]
				if ost == nil {
					return cmd
				}
				extra = append(extra, ost.nonceTPM...)
			}
		}
		mac := func(cpHash []byte) []byte {
			m := hmac.New(sha256.New, st.key)
			m.Write(cpHash)
			m.Write(sess.nonce)
			m.Write(st.nonceTPM)
			m.Write(extra)
			m.Write([]byte{sess.attrs})
			return m.Sum(nil)
		}
		if !hmac.Equal(mac(provdsCP), out[sess.hmacAt:sess.hmacAt+sha256.Size]) {
			x.notShared++
			continue
		}
		copy(out[sess.hmacAt:], mac(realCP))
		x.rewritten++
	}
	return out
}

func TestReview33CopyInterposerTakesTheGateSession(t *testing.T) {
	ctx := context.Background()
	on := &atomic.Bool{}
	c := &copyInterposer{x: newLoadExternalInterposer(t, on), copies: map[uint32]bool{}}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(c.wrap))
	if _, err := env.TPM.ReadPublic(tpm.SRKHandle); err == nil {
		if err := env.TPM.Evict(tpm.SRKHandle); err != nil {
			t.Fatal(err)
		}
	}
	ekca := caBundle(t, env)
	on.Store(true)
	dir := t.TempDir() + "/state"
	a, err := New(Config{TPM: env.TPM, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	_, perr := a.Provision(ctx, api.ProvisionRequest{PCRs: []int{7}, EKCA: ekca})
	on.Store(false)
	t.Logf("provision through the copy-aware interposer: %v (exit %d); hijacked %d, rewritten %d, failures %v",
		perr, api.ExitCode(perr), c.x.hijacked, c.x.rewritten, c.x.failed)
	if perr == nil || api.ExitCode(perr) != api.ExitIdentity {
		t.Errorf("provision through the interposer: %v (exit %d), want refused (15)", perr, api.ExitCode(perr))
	}
	if c.x.hijacked > 1 {
		t.Errorf("the attacker took %d sessions before first contact (salted to its key through the copy's forged CreatePrimary); the threat model says at most the gate's creation", c.x.hijacked)
	}
	b, err := os.ReadFile(filepath.Join(dir, gateFile))
	if err != nil {
		t.Logf("no gate file: %v", err)
		return
	}
	var g gateRecord
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	auth, err := hex.DecodeString(g.Auth)
	if err != nil || len(auth) == 0 {
		t.Fatalf("gate auth %q: %v", g.Auth, err)
	}
	// The bound the threat model states: A1 may learn this gate's
	// authValue (the gate of a trail begun before first contact), and
	// only until a provision replaces the gate (below).
	t.Logf("the attacker decrypted this gate's authValue: %v", bytes.Contains(c.x.Seen(), auth))
	// The attacker leaves; the operator provisions on an honest bus. The
	// trail, and its gate whose authValue the attacker holds, go on.
	if _, err := a.Provision(ctx, api.ProvisionRequest{PCRs: []int{7}, EKCA: ekca}); err != nil {
		t.Fatalf("honest provision: %v", err)
	}
	if b2, err := os.ReadFile(filepath.Join(dir, gateFile)); err == nil && bytes.Contains(b2, []byte(g.Auth)) {
		t.Errorf("after an honest provision the trail's gate is still the one whose authValue the attacker decrypted")
	}
	if err := a.Close(); err != nil {
		t.Logf("close: %v", err)
	}
}
