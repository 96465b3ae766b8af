package agent_test

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// editGate rewrites the state's audit.gate through edit (its JSON fields).
func editGate(t *testing.T, dir string, edit func(g map[string]any)) map[string]any {
	t.Helper()
	p := filepath.Join(dir, "audit.gate")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var g map[string]any
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	if edit == nil {
		return g
	}
	edit(g)
	if b, err = json.Marshal(g); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return g
}

// sealCommands is a seal by a new process on dir (a new Agent: nothing
// loaded, nothing kept), with the commands it sent.
func sealCommands(t *testing.T, env *swtpmtest.Env, b *swtpmtest.Bus, dir string) ([]tpm2.TPMCC, error) {
	t.Helper()
	ag := newAgent(t, env, dir)
	log := &swtpmtest.CommandLog{}
	b.Set(log.Hook)
	log.Start()
	_, err := ag.Seal(context.Background(), api.SealRequest{Data: []byte("s"), PCRs: []int{7}})
	cmds := log.Stop()
	b.Set(nil)
	return cmds, err
}

// persistentGateName is the name of the object persistent at
// AuditGateHandle, "" when there is none.
func persistentGateName(t *testing.T, tp *tpm.TPM) string {
	t.Helper()
	pub, err := tp.ReadPublic(agent.AuditGateHandle)
	if errors.Is(err, tpm.ErrNotFound) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(pub.Name.Buffer)
}

// Provision makes the audit gate key persistent (issue 14), and a record
// then proves it in place: a one-shot seal sends one TPM2_Load and one
// TPM2_FlushContext fewer than with the record edited to name no
// persistent gate (the gate loaded from its blob, as before, and the
// sweep asked for after it).
func TestRecordsProveThePersistentGate(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	_, dir := signingState(t, env)
	g := editGate(t, dir, nil)
	if h, _ := g["gate_handle"].(float64); uint32(h) != uint32(agent.AuditGateHandle) {
		t.Fatalf("audit.gate names gate_handle %v, want 0x%08x", g["gate_handle"], uint32(agent.AuditGateHandle))
	}
	if got := persistentGateName(t, env.TPM); got != g["gate_name"] {
		t.Fatalf("0x%08x holds %q, the gate is %v", uint32(agent.AuditGateHandle), got, g["gate_name"])
	}
	persistent, err := sealCommands(t, env, b, dir)
	if err != nil {
		t.Fatal(err)
	}
	editGate(t, dir, func(g map[string]any) { delete(g, "gate_handle") })
	loaded, err := sealCommands(t, env, b, dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, cc := range []tpm2.TPMCC{tpm2.TPMCCLoad, tpm2.TPMCCFlushContext} {
		if p, l := swtpmtest.Count(persistent, cc), swtpmtest.Count(loaded, cc); p != l-1 {
			t.Errorf("%v: %d with the persistent gate, %d with it loaded; want one fewer", cc, p, l)
		}
	}
	// A loaded gate also asks for the sweep (its load's handle is the
	// bus's word): three TPM2_GetCapability after the operation.
	sweep := swtpmtest.Count(loaded, tpm2.TPMCCGetCapability)
	if swtpmtest.Count(persistent, tpm2.TPMCCGetCapability) != 0 || sweep != 3 || len(persistent) != len(loaded)-2-sweep {
		t.Errorf("%d commands with the persistent gate, %d with it loaded (%d of its sweep)", len(persistent), len(loaded), sweep)
	}
	if _, err := newAgent(t, env, dir).AuditVerify(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// A2 (or A4) takes the persistent gate away: evicts it, or puts another
// key at its handle (whoever has the owner's authorization can; a key that
// counts against the dictionary-attack lockout among them), or A4 edits
// the record to name another handle. The record is written all the same,
// the gate loaded from its blob: nothing is called forged or a wrong
// value, nothing is left in the TPM, the trail verifies, and the next
// record works.
func TestPersistentGateTakenAway(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		take func(t *testing.T, env *swtpmtest.Env, dir string)
	}{
		{"evicted", func(t *testing.T, env *swtpmtest.Env, _ string) {
			if err := env.TPM.Evict(agent.AuditGateHandle); err != nil {
				t.Fatal(err)
			}
		}},
		{"another key (noDA) in its place", func(t *testing.T, env *swtpmtest.Env, _ string) { agent.PlantGateKey(t, env.TPM, true) }},
		{"another key (DA-protected) in its place", func(t *testing.T, env *swtpmtest.Env, _ string) { agent.PlantGateKey(t, env.TPM, false) }},
		{"the record names the SRK's handle", func(t *testing.T, _ *swtpmtest.Env, dir string) {
			editGate(t, dir, func(g map[string]any) { g["gate_handle"] = float64(tpm.SRKHandle) })
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			_, dir := signingState(t, env)
			tc.take(t, env, dir)
			for i := range 2 {
				cmds, err := sealCommands(t, env, b, dir)
				if err != nil {
					t.Fatalf("record %d: %v (exit %d)", i, err, api.ExitCode(err))
				}
				if n := swtpmtest.Count(cmds, tpm2.TPMCCNVExtend); n != 1 {
					t.Errorf("record %d: %d extends", i, n)
				}
				t.Logf("seal %d: %d commands", i, len(cmds))
			}
			if left, err := env.TPM.Leftovers(); err != nil || len(left) > 0 {
				t.Errorf("left in the TPM: %x %v", left, err)
			}
			if _, err := newAgent(t, env, dir).AuditVerify(context.Background()); err != nil {
				t.Fatal(err)
			}
			info, err := env.TPM.Info()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("lockout counter: %d", info.Lockout.Counter)
			if info.Lockout.Counter > 1 {
				t.Errorf("lockout counter %d after the records: each refused proof counted (the gate was not made persistent again)", info.Lockout.Counter)
			}
			if got, want := persistentGateName(t, env.TPM), editGate(t, dir, nil)["gate_name"]; got != want {
				t.Errorf("0x%08x holds %q after the records, the gate is %v", uint32(agent.AuditGateHandle), got, want)
			}
		})
	}
}

// firstGateProof is A1 on the first TPM2_PolicySecret of the persistent
// gate: passed on to the TPM (which proves it) or not, and answered rc.
func firstGateProof(pass bool, rc tpm2.TPMRC, fired *bool) swtpmtest.Hook {
	return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if *fired || swtpmtest.CommandCode(cmd) != tpm2.TPMCCPolicySecret || len(cmd) < 14 ||
			tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) != agent.AuditGateHandle {
			return nil, nil, false
		}
		*fired = true
		if pass {
			if _, err := next.Send(cmd); err != nil {
				return nil, err, true
			}
		}
		return swtpmtest.ErrorAnswer(rc), nil, true
	}
}

// A1 answers the persistent gate's proof with a failure, after the TPM ran
// it or in its place. The record goes to the gate loaded from its blob,
// and the anchor is extended once: the proof the TPM may hold is spent
// before the second is made (a held extend would otherwise chain the head
// twice, and verify would fail). Nothing is left, the trail verifies, and
// the gate is persistent again.
func TestPersistentGateUnderA1(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		pass bool
		rc   tpm2.TPMRC
	}{
		{"ran, answered TPM_RC_HANDLE", true, tpm2.TPMRCHandle},
		{"not passed on, answered TPM_RC_HANDLE", false, tpm2.TPMRCHandle},
		{"ran, answered TPM_RC_BAD_AUTH", true, tpm2.TPMRCBadAuth},
		{"not passed on, answered TPM_RC_BAD_AUTH", false, tpm2.TPMRCBadAuth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			_, dir := signingState(t, env)
			ag := newAgent(t, env, dir)
			log := &swtpmtest.CommandLog{}
			fired := false
			a1 := firstGateProof(tc.pass, tc.rc, &fired)
			b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				log.Hook(next, cmd)
				return a1(next, cmd)
			})
			log.Start()
			_, err := ag.Seal(context.Background(), api.SealRequest{Data: []byte("s"), PCRs: []int{7}})
			cmds := log.Stop()
			b.Set(nil)
			if !fired {
				t.Fatal("not mounted")
			}
			if err != nil {
				t.Fatalf("seal: %v (exit %d)", err, api.ExitCode(err))
			}
			if n := swtpmtest.Count(cmds, tpm2.TPMCCNVExtend); n != 1 {
				t.Errorf("%d extends", n)
			}
			if left, err := env.TPM.Leftovers(); err != nil || len(left) > 0 {
				t.Errorf("left in the TPM: %x %v", left, err)
			}
			if _, err := newAgent(t, env, dir).AuditVerify(context.Background()); err != nil {
				t.Fatal(err)
			}
			if got, want := persistentGateName(t, env.TPM), editGate(t, dir, nil)["gate_name"]; got != want {
				t.Errorf("0x%08x holds %q, the gate is %v", uint32(agent.AuditGateHandle), got, want)
			}
		})
	}
}

// Zeroize evicts the persistent gate with the anchor (confirmed by the
// witness's read-back), and says so.
func TestZeroizeEvictsThePersistentGate(t *testing.T) {
	env := swtpmtest.Start(t)
	ag, _ := signingState(t, env)
	if persistentGateName(t, env.TPM) == "" {
		t.Fatal("no persistent gate after provision")
	}
	res, err := ag.Zeroize(context.Background(), api.ZeroizeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !res.GateEvicted || !res.Authenticated {
		t.Errorf("zeroize says gate evicted %v, authenticated %v", res.GateEvicted, res.Authenticated)
	}
	if got := persistentGateName(t, env.TPM); got != "" {
		t.Errorf("0x%08x still holds %s after zeroize", uint32(agent.AuditGateHandle), got)
	}
}

// provision --force in a fresh state directory, over another state's
// trail: the new trail's gate replaces the old one at the handle.
func TestProvisionForcePersistsTheNewGate(t *testing.T) {
	env := swtpmtest.Start(t)
	_, dir1 := signingState(t, env)
	old := editGate(t, dir1, nil)["gate_name"]
	dir2 := stateDir(t)
	if _, err := newAgent(t, env, dir2).Provision(context.Background(), api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}, Force: true}); err != nil {
		t.Fatal(err)
	}
	now := editGate(t, dir2, nil)["gate_name"]
	if now == old {
		t.Fatal("the new trail has the old trail's gate")
	}
	if got := persistentGateName(t, env.TPM); got != now {
		t.Errorf("0x%08x holds %q, the new gate is %v (the old %v)", uint32(agent.AuditGateHandle), got, now, old)
	}
}

// Where the TPM will not make the gate persistent (no persistent slot
// left, an owner password), provision goes on with the gate transient:
// the record names no handle, and each record loads the gate from its
// blob, as before.
func TestGateStaysTransientWhenThePersistenceIsRefused(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	refused := 0
	b.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCEvictControl || len(cmd) < 4 ||
			tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[len(cmd)-4:])) != agent.AuditGateHandle {
			return nil, nil, false
		}
		refused++
		return swtpmtest.ErrorAnswer(tpm2.TPMRCNVSpace), nil, true
	})
	dir := stateDir(t)
	if _, err := newAgent(t, env, dir).Provision(context.Background(), api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	b.Set(nil)
	if refused == 0 {
		t.Fatal("not mounted")
	}
	if g := editGate(t, dir, nil); g["gate_handle"] != nil {
		t.Errorf("audit.gate names gate_handle %v", g["gate_handle"])
	}
	if got := persistentGateName(t, env.TPM); got != "" {
		t.Errorf("0x%08x holds %s", uint32(agent.AuditGateHandle), got)
	}
	cmds, err := sealCommands(t, env, b, dir)
	if err != nil {
		t.Fatal(err)
	}
	if n := swtpmtest.Count(cmds, tpm2.TPMCCLoad); n != 2 {
		t.Errorf("%d loads in a seal: want the PK's and the gate's", n)
	}
	if left, err := env.TPM.Leftovers(); err != nil || len(left) > 0 {
		t.Errorf("left in the TPM: %x %v", left, err)
	}
	if _, err := newAgent(t, env, dir).AuditVerify(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// A1 answers zeroize's unauthenticated TPM2_NV_ReadPublic of the anchor
// with another index's public, so that zeroize takes the trail's anchor
// for another trail's and leaves it. The witness's confirming
// NV_ReadPublic names the index A1 gave, and the TPM, which holds the
// trail's anchor there, refuses it: zeroize says forged (exit 15), does
// not report the anchor removed, and the anchor is still there.
func TestZeroizeAnchorNamedOnTheBus(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ag, dir := signingState(t, env)
	name, err := hex.DecodeString(editGate(t, dir, nil)["gate_name"].(string))
	if err != nil {
		t.Fatal(err)
	}
	const other tpm2.TPMHandle = 0x01707f01
	pub, err := tpm.GatedExtendPublic(other, name, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.TPM.DefineNV(pub); err != nil {
		t.Fatal(err)
	}
	fired := false
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if fired || swtpmtest.CommandCode(cmd) != tpm2.TPMCCNVReadPublic || binary.BigEndian.Uint16(cmd[0:2]) != uint16(tpm2.TPMSTNoSessions) ||
			len(cmd) < 14 || tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) != agent.AuditAnchorHandle {
			return nil, nil, false
		}
		fired = true
		forged := append([]byte(nil), cmd...)
		binary.BigEndian.PutUint32(forged[10:14], uint32(other))
		rsp, err := next.Send(forged)
		return rsp, err, true
	})
	res, err := ag.Zeroize(context.Background(), api.ZeroizeOptions{})
	b.Set(nil)
	if !fired {
		t.Fatal("not mounted")
	}
	t.Logf("zeroize: %+v %v (exit %d)", res, err, api.ExitCode(err))
	if !errors.Is(err, tpm.ErrResponseForged) {
		t.Errorf("zeroize with the anchor's public forged: %v, want forged", err)
	}
	if slices.Contains(res.NVIndices, fmt.Sprintf("0x%08x", uint32(agent.AuditAnchorHandle))) {
		t.Error("the anchor reported removed")
	}
	if _, err := env.TPM.ReadNVPublic(agent.AuditAnchorHandle); err != nil {
		t.Errorf("the anchor after zeroize: %v", err)
	}
}
