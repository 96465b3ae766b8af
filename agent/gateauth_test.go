package agent_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// loadSniffer is a passive interposer: it keeps every byte that crosses the
// bus and a copy of every TPM2_Load under the SRK authorized by the password
// session (the gates' loads).
type loadSniffer struct {
	next  transport.TPM
	mu    sync.Mutex
	loads [][]byte
	wire  bytes.Buffer
}

func (s *loadSniffer) wrap(next transport.TPM) transport.TPM { s.next = next; return s }

func (s *loadSniffer) Send(cmd []byte) ([]byte, error) {
	rsp, err := s.next.Send(cmd)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.wire.Write(cmd)
	s.wire.Write(rsp)
	if len(cmd) > 27 && tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) == tpm2.TPMCCLoad &&
		tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == tpm.SRKHandle &&
		tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[18:22])) == tpm2.TPMRSPW {
		s.loads = append(s.loads, append([]byte(nil), cmd...))
	}
	return rsp, err
}

// replayLoad sends a recorded password-session Load verbatim and returns
// the loaded object.
func replayLoad(t *testing.T, tp *tpm.TPM, cmd []byte) (tpm.Object, bool) {
	t.Helper()
	rsp, err := tp.Send(cmd)
	if err != nil || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		return tpm.Object{}, false
	}
	obj, err := tp.ReadPublic(tpm2.TPMHandle(binary.BigEndian.Uint32(rsp[10:14])))
	if err != nil {
		t.Fatal(err)
	}
	return obj, true
}

// The review's finding 2, mounted again: a passive recording of the bus
// holds every gate's blob (they are loaded with a password session), and a
// later local process (no state directory, owner password set) replays the
// loads. The gates now need their authorization values, which never crossed
// the bus: PolicySecret fails (TPM_RC_BAD_AUTH), the anchor and the counter
// do not move, verify and seal go on.
func TestRecordedGateBlobsAreUseless(t *testing.T) {
	sn := &loadSniffer{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(sn.wrap))
	ctx := context.Background()
	dir := t.TempDir() + "/state"
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	res, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, Signer: signer.Public()})
	if err != nil {
		t.Fatal(err)
	}
	cur, err := env.TPM.PCRRead(tpm2.TPMAlgSHA256, []int{7})
	if err != nil {
		t.Fatal(err)
	}
	sp, _ := agent.SignPKPolicy(signer, policy.PCRValues{Bank: policy.BankSHA256, Values: cur}, *res.Counter+1, "", true)
	b, _ := sp.MarshalJSON()
	if _, err := ag.InstallPolicy(ctx, b); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.Seal(ctx, api.SealRequest{Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	ag.Close()

	// The authorization values are in the state only, never on the bus.
	var g struct {
		Auth string `json:"gate_auth"`
	}
	raw, err := os.ReadFile(filepath.Join(dir, "audit.gate"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &g); err != nil || len(g.Auth) != 64 {
		t.Fatalf("audit.gate has no authorization value: %s", raw)
	}
	auth, _ := hex.DecodeString(g.Auth)
	sn.mu.Lock()
	if bytes.Contains(sn.wire.Bytes(), auth[:16]) || bytes.Contains(sn.wire.Bytes(), auth[16:]) {
		t.Error("the audit gate's authorization value crossed the bus")
	}
	loads := append([][]byte(nil), sn.loads...)
	sn.mu.Unlock()

	tp := env.TPM
	if _, err := (tpm2.HierarchyChangeAuth{AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		NewAuth: tpm2.TPM2BAuth{Buffer: []byte("owner secret")}}).Execute(tp); err != nil {
		t.Fatal(err)
	}
	c0, err := tp.ReadCounter(agent.PolicyCounterHandle)
	if err != nil {
		t.Fatal(err)
	}
	a0, err := tp.Anchor(agent.AuditAnchorHandle).Read()
	if err != nil {
		t.Fatal(err)
	}
	if len(loads) == 0 {
		t.Fatal("no gate load recorded: the attack is not mounted")
	}
	t.Logf("recorded %d password-session loads under the SRK", len(loads))
	replayed := 0
	for _, cmd := range loads {
		obj, ok := replayLoad(t, tp, cmd)
		if !ok {
			continue
		}
		replayed++
		g := tpm.GateOf(obj, nil) // the blob, without the value
		if err := tp.NVExtendGated(agent.AuditAnchorHandle, []byte("stray"), g); err == nil {
			t.Error("BROKEN: a recorded gate blob extended the audit anchor")
		} else if !errors.Is(err, tpm.ErrBadAuth) && !errors.Is(err, tpm.ErrPolicyNotSatisfied) {
			t.Errorf("replayed gate, extend: %v, want a refused authorization", err)
		}
		if err := tp.IncrementGated(agent.PolicyCounterHandle, agent.CounterAuthorizerHandle, g, 1); err == nil {
			t.Error("BROKEN: a recorded gate blob incremented the policy counter")
		} else if !errors.Is(err, tpm.ErrBadAuth) && !errors.Is(err, tpm.ErrPolicyNotSatisfied) {
			t.Errorf("replayed gate, increment: %v, want a refused authorization", err)
		}
		if err := tp.Flush(obj.Handle); err != nil {
			t.Fatal(err)
		}
	}
	if replayed == 0 {
		t.Fatal("no recorded load replayed: the attack is not mounted")
	}
	if c1, _ := tp.ReadCounter(agent.PolicyCounterHandle); c1 != c0 {
		t.Errorf("the policy counter moved %d -> %d", c0, c1)
	}
	if a1, _ := tp.Anchor(agent.AuditAnchorHandle).Read(); !bytes.Equal(a0, a1) {
		t.Error("the audit anchor moved")
	}
	ag2, err := agent.New(agent.Config{TPM: env.TPM, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer ag2.Close()
	if _, err := ag2.AuditVerify(ctx); err != nil {
		t.Errorf("audit verify after the replays: %v", err)
	}
	if _, err := ag2.Seal(ctx, api.SealRequest{Data: []byte("y")}); err != nil {
		t.Errorf("seal after the replays: %v", err)
	}
	// The owner password must come off again for the harness's cleanup.
	if _, err := (tpm2.HierarchyChangeAuth{AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth([]byte("owner secret"))},
		NewAuth: tpm2.TPM2BAuth{}}).Execute(tp); err != nil {
		t.Fatal(err)
	}
}

// dropper is an active interposer that, while on, drops one command code
// sent to one NV index and answers it with success itself, computing the
// response HMAC of its one session with an empty key: what was enough while
// the gate sessions were unsalted.
type dropper struct {
	next    transport.TPM
	cc      tpm2.TPMCC
	index   tpm2.TPMHandle
	on      atomic.Bool
	dropped atomic.Int32
}

func (x *dropper) wrap(next transport.TPM) transport.TPM { x.next = next; return x }

func (x *dropper) Send(cmd []byte) ([]byte, error) {
	if !x.on.Load() || len(cmd) < 18 || tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) != x.cc ||
		tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[14:18])) != x.index {
		return x.next.Send(cmd)
	}
	off := 18 + 4 + 4 // two handles, authorizationSize, the session's handle
	n := int(binary.BigEndian.Uint16(cmd[off:]))
	nonceCaller := cmd[off+2 : off+2+n]
	attrs := cmd[off+2+n]
	nonceTPM := make([]byte, 32)
	rand.Read(nonceTPM)
	rp := sha256.New()
	rp.Write(make([]byte, 4)) // rc
	rp.Write(cmd[6:10])       // cc
	m := hmac.New(sha256.New, nil)
	m.Write(rp.Sum(nil))
	m.Write(nonceTPM)
	m.Write(nonceCaller)
	m.Write([]byte{attrs & 0x01})
	var rsp []byte
	rsp = binary.BigEndian.AppendUint16(rsp, uint16(tpm2.TPMSTSessions))
	rsp = binary.BigEndian.AppendUint32(rsp, 0)
	rsp = binary.BigEndian.AppendUint32(rsp, 0) // rc
	rsp = binary.BigEndian.AppendUint32(rsp, 0) // parameterSize
	rsp = binary.BigEndian.AppendUint16(rsp, uint16(len(nonceTPM)))
	rsp = append(rsp, nonceTPM...)
	rsp = append(rsp, attrs&0x01)
	rsp = binary.BigEndian.AppendUint16(rsp, sha256.Size)
	rsp = append(rsp, m.Sum(nil)...)
	binary.BigEndian.PutUint32(rsp[2:6], uint32(len(rsp)))
	x.dropped.Add(1)
	return rsp, nil
}

// The review's finding 3, mounted again: an interposer drops the policy
// counter's increment and forges success. provd now refuses the install as
// forged (exit 15) instead of reporting the counter moved; once the bus is
// honest the install goes through and the older version is revoked for good.
func TestInterposerCannotFreezeRevocation(t *testing.T) {
	x := &dropper{cc: tpm2.TPMCCNVIncrement, index: agent.PolicyCounterHandle}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(x.wrap))
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	res, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, Signer: signer.Public()})
	if err != nil {
		t.Fatal(err)
	}
	signed := signedPCR7(t, env, signer)
	old := *res.Counter + 1
	if _, err := ag.InstallPolicy(ctx, signed(old)); err != nil {
		t.Fatal(err)
	}
	blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("secret under the old policy")})
	if err != nil {
		t.Fatal(err)
	}

	x.on.Store(true)
	r, err := ag.InstallPolicy(ctx, signed(old+1))
	x.on.Store(false)
	if x.dropped.Load() == 0 {
		t.Fatal("no increment dropped: the attack is not mounted")
	}
	c, _ := env.TPM.ReadCounter(agent.PolicyCounterHandle)
	if err == nil {
		t.Fatalf("BROKEN: install of version %d through the interposer reported %+v; the TPM's counter is %d", old+1, r, c)
	}
	if !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != 15 {
		t.Fatalf("install through the interposer: %v (exit %d), want tpm_response_forged (exit 15)", err, api.ExitCode(err))
	}
	if c != old {
		t.Fatalf("the TPM's counter is %d, want %d (the increment was dropped)", c, old)
	}

	// On an honest bus the revocation happens, and sticks.
	if r, err := ag.InstallPolicy(ctx, signed(old+1)); err != nil || r.Counter != old+1 {
		t.Fatalf("install of version %d: %+v, %v", old+1, r, err)
	}
	if c, _ := env.TPM.ReadCounter(agent.PolicyCounterHandle); c != old+1 {
		t.Fatalf("the TPM's counter is %d, want %d", c, old+1)
	}
	if _, err := ag.InstallPolicy(ctx, signed(old)); !errors.Is(err, tpm.ErrPolicyNotSatisfied) {
		t.Fatalf("the revoked version %d installs again: %v", old, err)
	}
	if _, err := ag.Unseal(ctx, blob); err != nil {
		t.Fatalf("unseal under version %d: %v", old+1, err)
	}
}

// The same interposer on the audit anchor's extend: the record is refused as
// forged (exit 15) rather than reported written, and verify, whose anchor
// read is authenticated, says the trail is not covered by its anchor.
func TestInterposerCannotDropAnAnchorExtend(t *testing.T) {
	x := &dropper{cc: tpm2.TPMCCNVExtend, index: agent.AuditAnchorHandle}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(x.wrap))
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	x.on.Store(true)
	_, err := ag.Seal(ctx, api.SealRequest{Data: []byte("x")})
	x.on.Store(false)
	if x.dropped.Load() == 0 {
		t.Fatal("no extend dropped: the attack is not mounted")
	}
	if !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != 15 {
		t.Fatalf("seal through the interposer: %v (exit %d), want tpm_response_forged (exit 15)", err, api.ExitCode(err))
	}
	if _, err := ag.AuditVerify(ctx); err == nil {
		t.Fatal("verify says the trail is intact although its last extend never reached the TPM")
	} else {
		t.Logf("verify after the dropped extend: %v", err)
	}
}

// forger flips a byte of the data of every TPM2_NV_Read response of one
// index while on: what an interposer would do to hide a changed anchor.
type forger struct {
	next  transport.TPM
	index tpm2.TPMHandle
	on    atomic.Bool
	hits  atomic.Int32
}

func (f *forger) wrap(next transport.TPM) transport.TPM { f.next = next; return f }

func (f *forger) Send(cmd []byte) ([]byte, error) {
	rsp, err := f.next.Send(cmd)
	if err != nil || !f.on.Load() || len(cmd) < 18 || tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) != tpm2.TPMCCNVRead ||
		tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[14:18])) != f.index || len(rsp) < 20 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		return rsp, err
	}
	rsp = append([]byte(nil), rsp...)
	rsp[10+4+2] ^= 1 // parameterSize, the buffer's size, its first byte
	f.hits.Add(1)
	return rsp, nil
}

// verify reads the anchor in an audit session salted to the pinned SRK: a
// changed read is tpm_response_forged, never "intact" nor a tampered trail.
func TestAnchorReadIsAuthenticated(t *testing.T) {
	f := &forger{index: agent.AuditAnchorHandle}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(f.wrap))
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	f.on.Store(true)
	_, err := ag.AuditVerify(ctx)
	f.on.Store(false)
	if f.hits.Load() == 0 {
		t.Fatal("no anchor read changed: the attack is not mounted")
	}
	if !errors.Is(err, tpm.ErrResponseForged) {
		t.Fatalf("verify with a changed anchor read: %v, want tpm_response_forged", err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatalf("verify on an honest bus: %v", err)
	}
}
