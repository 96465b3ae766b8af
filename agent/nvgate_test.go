package agent_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// intruder is another local process with access to the TPM: it sends the
// raw commands tpm2-tools would (tpm2_nvextend, tpm2_nvundefine,
// tpm2_nvdefine), with the empty owner password swtpm has. It shares the
// connection with provd only because swtpm serves one client at a time.
type intruder struct {
	t  *testing.T
	tp *tpm.TPM
}

// extend is tpm2_nvextend with the index's empty password; it returns the
// TPM's response code.
func (x intruder) extend(h tpm2.TPMHandle, data []byte) tpm2.TPMRC {
	x.t.Helper()
	var b []byte
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMSTSessions))
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMCCNVExtend))
	b = binary.BigEndian.AppendUint32(b, uint32(h))
	b = binary.BigEndian.AppendUint32(b, uint32(h))
	b = binary.BigEndian.AppendUint32(b, 9)
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMRSPW))
	b = append(b, 0, 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
	b = append(b, data...)
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	rsp, err := x.tp.Send(b)
	if err != nil {
		x.t.Fatal(err)
	}
	return tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
}

// redefine undefines the index at h (owner authorization: empty) and defines
// pub in its place.
func (x intruder) redefine(h tpm2.TPMHandle, pub tpm2.TPMSNVPublic) {
	x.t.Helper()
	old, err := x.tp.ReadNVPublic(h)
	if err != nil {
		x.t.Fatal(err)
	}
	if _, err := (tpm2.NVUndefineSpace{AuthHandle: tpm2.TPMRHOwner, NVIndex: tpm2.NamedHandle{Handle: h, Name: old.Name}}).Execute(x.tp); err != nil {
		x.t.Fatalf("intruder: undefine: %v", err)
	}
	if _, err := (tpm2.NVDefineSpace{AuthHandle: tpm2.TPMRHOwner, PublicInfo: tpm2.New2B(pub)}).Execute(x.tp); err != nil {
		x.t.Fatalf("intruder: define: %v", err)
	}
}

// sameAttributes is the anchor's public area as tpm2_nvreadpublic shows it,
// the written bit cleared: what tpm2_nvdefine recreates from it.
func (x intruder) sameAttributes(h tpm2.TPMHandle) tpm2.TPMSNVPublic {
	x.t.Helper()
	p, err := x.tp.ReadNVPublic(h)
	if err != nil {
		x.t.Fatal(err)
	}
	pub := p.Public
	pub.Attributes.Written = false
	return pub
}

// ungated is the public area of an extend index anyone may extend: the
// anchor as provd defined it before gates.
func ungated(h tpm2.TPMHandle) tpm2.TPMSNVPublic {
	return tpm2.TPMSNVPublic{
		NVIndex: h, NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{NT: tpm2.TPMNTExtend, AuthWrite: true, AuthRead: true, OwnerRead: true, NoDA: true},
		DataSize:   32,
	}
}

// rewriteHistory changes the uid and an object of the first record with op
// in the log at path and recomputes the chain after it; it returns the heads
// the anchor must be extended with (from the last audit-anchor record on)
// to match the rewritten log.
func rewriteHistory(t *testing.T, path, op string) [][]byte {
	t.Helper()
	recs, err := audit.ReadRecords(path)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	prev := make([]byte, 32)
	var heads [][]byte
	done := false
	for i, r := range recs {
		if r.Op == op && !done {
			r.UID = 4242
			for k := range r.Objects {
				r.Objects[k] = "rewritten"
				break
			}
			done = true
		}
		if i == 0 {
			r.Prev = hex.EncodeToString(make([]byte, 32))
		} else {
			r.Prev = hex.EncodeToString(prev)
		}
		line, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(line)
		prev = h[:]
		if r.Op == audit.OpAnchor {
			heads = nil
		}
		heads = append(heads, h[:])
		out.Write(line)
		out.WriteByte('\n')
	}
	if !done {
		t.Fatalf("no %s record to rewrite", op)
	}
	if err := os.WriteFile(path, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return heads
}

// The attack the review mounted on swtpm: another process rewrites a
// record's uid and object, recomputes the chain, undefines the anchor,
// recreates it and extends it with the rewritten chain. Against the gated
// anchor every variant fails or shows: recreated with the same attributes it
// cannot be extended (the TPM wants the gate); recreated ungated, or gated
// by a key of the intruder's own, it has another name than the one the
// trail's gate implies. audit verify reports tampering each time (exit 14).
func TestAnchorHistoryRewriteIsCaught(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.Seal(ctx, api.SealRequest{Data: []byte("s")}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatal(err)
	}
	ag.Close()

	x := intruder{t, env.TPM}
	h := agent.AuditAnchorHandle
	if rc := x.extend(h, []byte("stray")); rc == tpm2.TPMRCSuccess {
		t.Fatal("an empty-password extend of the audit anchor succeeded")
	}
	heads := rewriteHistory(t, filepath.Join(dir, audit.FileName), "provision")
	verify := func(variant string) {
		t.Helper()
		ag := newAgent(t, env, dir)
		defer ag.Close()
		if rep, err := ag.AuditVerify(ctx); !errors.Is(err, api.ErrTampered) {
			t.Errorf("%s: audit verify says %+v, %v; want tampering", variant, rep, err)
		} else {
			t.Logf("%s: %v", variant, err)
		}
	}
	verify("history rewritten, anchor untouched")

	// Same attributes (and so the same name while unwritten): the TPM
	// refuses the intruder's extends.
	x.redefine(h, x.sameAttributes(h))
	for _, d := range heads {
		if rc := x.extend(h, d); rc == tpm2.TPMRCSuccess {
			t.Fatal("the intruder extended an anchor recreated with provd's attributes")
		}
	}
	verify("recreated with the same attributes")

	// Ungated, as tpm2_nvdefine -a "authread|authwrite|nt=extend" makes it.
	x.redefine(h, ungated(h))
	for _, d := range heads {
		if rc := x.extend(h, d); rc != tpm2.TPMRCSuccess {
			t.Fatalf("extend of the intruder's own index: %v", rc)
		}
	}
	verify("recreated ungated and re-extended with the rewritten chain")

	// Gated by a key of the intruder's own, under the same SRK.
	srk, err := env.TPM.SRK()
	if err != nil {
		t.Fatal(err)
	}
	ownAuth, _ := tpm.NewGateAuth(rand.Reader)
	blob, err := env.TPM.CreateGate(srk, ownAuth)
	if err != nil {
		t.Fatal(err)
	}
	own, err := env.TPM.LoadGate(srk, blob, ownAuth)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := tpm.GatedExtendPublic(h, own.Name.Buffer, false)
	if err != nil {
		t.Fatal(err)
	}
	x.redefine(h, pub)
	for _, d := range heads {
		if err := env.TPM.NVExtendGated(h, d, own); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.TPM.Flush(own.Handle); err != nil {
		t.Fatal(err)
	}
	verify("recreated under the intruder's own gate and re-extended")
}

// A stray extend by another process does not reach the anchor: the TPM
// refuses it and provd goes on. What another process can still do where the
// owner hierarchy has no password is remove or replace the index: audited
// operations are then refused (exit 14: an operation that cannot be recorded
// does not happen), status and verify say so, zeroize destroys nothing, and
// the crypto officer's audit reanchor is the way out. A fresh state
// directory provisions all the same (its new trail takes the handle over).
func TestStrayWritesAndTheWayOut(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	x := intruder{t, env.TPM}
	h := agent.AuditAnchorHandle
	if rc := x.extend(h, []byte("stray")); rc == tpm2.TPMRCSuccess {
		t.Fatal("stray extend succeeded")
	}
	blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("kept")})
	if err != nil {
		t.Fatalf("seal after a stray extend: %v", err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatalf("verify after a stray extend: %v", err)
	}

	// The intruder replaces the index with one of its own.
	x.redefine(h, ungated(h))
	if rc := x.extend(h, []byte("mine")); rc != tpm2.TPMRCSuccess {
		t.Fatal(rc)
	}
	if _, err := ag.Seal(ctx, api.SealRequest{Data: []byte("x")}); !errors.Is(err, api.ErrTampered) {
		t.Fatalf("seal with the anchor replaced: %v, want ErrTampered", err)
	}
	st, err := ag.Status(ctx)
	if err != nil || st.AuditError == "" || !st.Provisioned {
		t.Fatalf("status with the anchor replaced: %+v %v", st, err)
	}
	if got, err := ag.Unseal(ctx, blob); err != nil || string(got) != "kept" {
		t.Fatalf("unseal (not audited) with the anchor replaced: %q %v", got, err)
	}

	// zeroize cannot write its record: it destroys nothing.
	blobsBefore, _ := os.ReadDir(filepath.Join(dir, "blobs"))
	if _, err := ag.Zeroize(ctx, api.ZeroizeOptions{SRK: true}); !errors.Is(err, api.ErrTampered) {
		t.Fatalf("zeroize with the anchor replaced: %v, want ErrTampered", err)
	}
	blobsAfter, _ := os.ReadDir(filepath.Join(dir, "blobs"))
	if len(blobsAfter) == 0 || len(blobsAfter) != len(blobsBefore) {
		t.Errorf("zeroize refused but blobs changed: %d before, %d after", len(blobsBefore), len(blobsAfter))
	}
	if _, err := env.TPM.ReadPublic(tpm.SRKHandle); err != nil {
		t.Errorf("zeroize refused but the SRK is gone: %v", err)
	}
	if got, err := ag.Unseal(ctx, blob); err != nil || string(got) != "kept" {
		t.Fatalf("unseal after the refused zeroize: %q %v", got, err)
	}
	if recs, _ := audit.ReadRecords(filepath.Join(dir, audit.FileName)); recs[len(recs)-1].Op == "zeroize-start" {
		t.Errorf("a zeroize-start record was written without its anchor")
	}

	// The way out: reanchor records what was found and anchors anew.
	res, err := ag.AuditReanchor(ctx)
	if err != nil {
		t.Fatalf("reanchor: %v", err)
	}
	if res.Found == "" || res.ArchivedLog != "" || res.Record.Op != audit.OpAnchor || res.Record.Objects["replaced_nv_name"] == "" || res.Record.Objects["replaced_nv_value"] == "" {
		t.Fatalf("reanchor result %+v", res)
	}
	if _, err := ag.Seal(ctx, api.SealRequest{Data: []byte("x")}); err != nil {
		t.Fatalf("seal after reanchor: %v", err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatalf("verify after reanchor: %v", err)
	}

	// A fresh state directory on the same TPM provisions only when told
	// --force (found by issue 14's review: it took the handle over
	// silently, and the first state's trail no longer verified). Refused,
	// it changes nothing: no trail begins in it, the first still verifies.
	dir2 := stateDir(t)
	ag2 := newAgent(t, env, dir2)
	if _, err := ag2.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); !errors.Is(err, api.ErrAlreadyProvisioned) || !strings.Contains(err.Error(), "another state directory") {
		t.Fatalf("provision into a fresh state directory over another's trail: %v", err)
	}
	for _, f := range []string{"audit.gate", "audit.pending"} {
		if _, err := os.Stat(filepath.Join(dir2, f)); err == nil {
			t.Fatalf("the refused provision left %s: a trail begun, or waiting to", f)
		}
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatalf("the first trail after a refused provision elsewhere: %v", err)
	}
	// With --force its new trail takes the handle over, naming what it
	// replaced. One TPM holds one live trail: the first state's trail now
	// reports its anchor moved.
	if _, err := ag2.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}, Force: true}); err != nil {
		t.Fatalf("provision --force into a fresh state directory: %v", err)
	}
	recs, err := ag2.AuditRecords(ctx)
	if err != nil || len(recs) != 2 || recs[0].Op != audit.OpAnchor || recs[0].Objects["replaced_nv_value"] == "" {
		t.Fatalf("fresh trail: %+v %v", recs, err)
	}
	if _, err := ag.AuditVerify(ctx); !errors.Is(err, api.ErrTampered) {
		t.Errorf("first trail after the second took the handle: %v", err)
	}
	// A refusal recorded in a third, fresh state directory (a daemon
	// started on the wrong one) waits rather than begin a trail there over
	// the second's anchor.
	ag3 := newAgent(t, env, stateDir(t))
	if err := ag3.RecordRefusal(ctx, "key sign", "not permitted"); !errors.Is(err, api.ErrAlreadyProvisioned) {
		t.Errorf("a refusal recorded in a fresh state directory over another's anchor: %v", err)
	}
	if _, err := ag2.AuditVerify(ctx); err != nil {
		t.Fatalf("the second trail after a refusal recorded elsewhere: %v", err)
	}

	// zeroize on the second state: it can write its record, so it acts.
	if _, err := ag2.Zeroize(ctx, api.ZeroizeOptions{}); err != nil {
		t.Fatalf("zeroize: %v", err)
	}
	if _, err := env.TPM.ReadNVPublic(h); !errors.Is(err, tpm.ErrNotFound) {
		t.Errorf("after zeroize the anchor remains: %v", err)
	}
}

// A trail whose lines no longer link up is not blessed by reanchor: it is
// archived as evidence and a new trail names it.
func TestReanchorArchivesABrokenTrail(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	ag.Close()
	p := filepath.Join(dir, audit.FileName)
	b, _ := os.ReadFile(p)
	os.WriteFile(p, bytes.Replace(b, []byte(`"op":"provision"`), []byte(`"op":"provisioN"`), 1), 0o600)
	ag = newAgent(t, env, dir)
	res, err := ag.AuditReanchor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.ArchivedLog == "" || res.Lines != 1 || res.Record.Objects["archived_sha256"] == "" {
		t.Fatalf("reanchor of a broken trail: %+v", res)
	}
	if old, err := os.ReadFile(res.ArchivedLog); err != nil || !bytes.Contains(old, []byte("provisioN")) {
		t.Fatalf("archived trail: %v", err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatal(err)
	}
}

// The policy counter takes increments only from provd: an empty-password
// increment (tpm2_nvincrement by another process) is refused, and provd's
// policy install still moves it. Its name stays the one computed offline
// (agent.CounterRef), which fleet-wide signed policies embed.
//
// What a gate cannot stop, shown here: where the owner hierarchy has no
// password, another process undefines the authorizer and the counter,
// defines them again with the same public areas (the same fleet-constant
// names: no authPolicy that is the same on every device can name what only
// this device holds) but a policy of its own in the authorizer, and
// increments: the installed signed policy is revoked early. It can only move
// the counter forward (never bring an old policy back), and provd notices
// (its own increment fails). With an owner password set, neither index can
// be undefined and the counter is provd's alone.
func TestCounterIncrementsOnlyByProvd(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag, signer, res := signedPolicyAgent(t, env)
	tp := env.TPM
	if name, err := tp.NVName(agent.PolicyCounterHandle); err != nil || !bytes.Equal(name.Buffer, agent.CounterRef().Name) {
		t.Fatalf("counter name %x, CounterRef %x (%v)", name.Buffer, agent.CounterRef().Name, err)
	}
	signed := signedPCR7(t, env, signer)
	install := func(v uint64) error {
		t.Helper()
		_, err := ag.InstallPolicy(ctx, signed(v))
		return err
	}
	c0 := *res.Counter
	if err := install(c0 + 1); err != nil {
		t.Fatal(err)
	}
	if rc := rawIncrement(t, tp, agent.PolicyCounterHandle); rc == tpm2.TPMRCSuccess {
		t.Fatal("an empty-password increment of the policy counter succeeded")
	}
	if c, err := tp.ReadCounter(agent.PolicyCounterHandle); err != nil || c != c0+1 {
		t.Fatalf("counter %d (%v), want %d: only provd's install moved it", c, err, c0+1)
	}
	if err := install(c0 + 2); err != nil {
		t.Fatalf("install after the refused increment: %v", err)
	}

	// The owner hierarchy open: the intruder re-creates both indices with
	// its own policy in the authorizer and increments.
	x := intruder{t, tp}
	authPub := tpm.AuthorizerPublic(agent.CounterAuthorizerHandle, false)
	cntPub, err := tpm.GatedCounterPublic(agent.PolicyCounterHandle, agent.CounterAuthorizerHandle)
	if err != nil {
		t.Fatal(err)
	}
	cntPub.Attributes.Written = false
	x.redefine(agent.PolicyCounterHandle, cntPub)
	x.redefine(agent.CounterAuthorizerHandle, authPub)
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	ownAuth, _ := tpm.NewGateAuth(rand.Reader)
	blob, err := tp.CreateGate(srk, ownAuth)
	if err != nil {
		t.Fatal(err)
	}
	own, err := tp.LoadGate(srk, blob, ownAuth)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Flush(own.Handle)
	if _, err := tp.DefineGatedCounter(agent.PolicyCounterHandle, agent.CounterAuthorizerHandle, own); err != nil {
		t.Fatal(err)
	}
	if err := tp.IncrementGated(agent.PolicyCounterHandle, agent.CounterAuthorizerHandle, own, 1); err != nil {
		t.Fatal(err)
	}
	c, err := tp.ReadCounter(agent.PolicyCounterHandle)
	if err != nil || c <= c0+2 {
		t.Fatalf("counter after the intruder: %d (%v); a counter never goes back", c, err)
	}
	if err := install(c + 1); err == nil {
		t.Fatal("provd incremented a counter gated by the intruder's authorizer")
	}

	// With an owner password, the indices cannot be undefined.
	if _, err := (tpm2.HierarchyChangeAuth{AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		NewAuth: tpm2.TPM2BAuth{Buffer: []byte("owner secret")}}).Execute(tp); err != nil {
		t.Fatal(err)
	}
	for _, h := range []tpm2.TPMHandle{agent.PolicyCounterHandle, agent.CounterAuthorizerHandle, agent.AuditAnchorHandle} {
		cur, err := tp.ReadNVPublic(h)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := (tpm2.NVUndefineSpace{AuthHandle: tpm2.TPMRHOwner, NVIndex: tpm2.NamedHandle{Handle: h, Name: cur.Name}}).Execute(tp); err == nil {
			t.Fatalf("0x%08x undefined without the owner password", uint32(h))
		}
	}
	if _, err := (tpm2.HierarchyChangeAuth{AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth([]byte("owner secret"))}}).Execute(tp); err != nil {
		t.Fatal(err)
	}
}

// rawIncrement is tpm2_nvincrement with the index's empty password.
func rawIncrement(t *testing.T, tp *tpm.TPM, h tpm2.TPMHandle) tpm2.TPMRC {
	t.Helper()
	var b []byte
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMSTSessions))
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMCCNVIncrement))
	b = binary.BigEndian.AppendUint32(b, uint32(h))
	b = binary.BigEndian.AppendUint32(b, uint32(h))
	b = binary.BigEndian.AppendUint32(b, 9)
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMRSPW))
	b = append(b, 0, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	rsp, err := tp.Send(b)
	if err != nil {
		t.Fatal(err)
	}
	return tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
}

// legacyAnchor is the ungated anchor of a provd from before gates.
type legacyAnchor struct{ tp *tpm.TPM }

func (l legacyAnchor) Extend(head []byte) error { return l.tp.NVExtend(agent.AuditAnchorHandle, head) }
func (l legacyAnchor) Read() ([]byte, error) {
	v, err := l.tp.Anchor(agent.AuditAnchorHandle).Read()
	if errors.Is(err, tpm.ErrNVUninitialized) {
		return nil, audit.ErrAnchorEmpty
	}
	return v, err
}

// legacyTrail writes a trail of n records anchored the way provd did before
// gates (an ungated extend index at the anchor's handle) into dir.
func legacyTrail(t *testing.T, tp *tpm.TPM, dir string, n int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.DefineExtendIndex(agent.AuditAnchorHandle); err != nil {
		t.Fatal(err)
	}
	l, err := audit.Open(filepath.Join(dir, audit.FileName), audit.Options{Anchor: legacyAnchor{tp}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for range n {
		if err := l.Append(audit.Record{Op: "seal", Result: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
}

// A trail anchored in the ungated index of a provd before gates moves to a
// gated anchor at its next record, which says so; one that a stray extend
// broke (what made every audited operation exit 14 until a manual undefine)
// is refused, and audit reanchor archives it and starts a gated trail; a
// deleted log is reanchored too, not a dead end.
func TestLegacyTrailsMoveToTheGate(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	tp := env.TPM

	dir := stateDir(t)
	legacyTrail(t, tp, dir, 2)
	ag := newAgent(t, env, dir)
	if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatalf("provision on a legacy trail: %v", err)
	}
	recs, err := ag.AuditRecords(ctx)
	if err != nil || len(recs) != 4 || recs[2].Op != audit.OpAnchor || recs[2].Objects["replaced_nv_value"] == "" {
		t.Fatalf("legacy trail after provision: %+v %v", recs, err)
	}
	if rc := (intruder{t, tp}).extend(agent.AuditAnchorHandle, []byte("stray")); rc == tpm2.TPMRCSuccess {
		t.Fatal("stray extend of the moved trail's anchor succeeded")
	}
	ag.Close()

	// A legacy trail broken by a stray extend.
	if err := tp.UndefineNV(agent.AuditAnchorHandle); err != nil {
		t.Fatal(err)
	}
	dir2 := stateDir(t)
	legacyTrail(t, tp, dir2, 2)
	if err := tp.NVExtend(agent.AuditAnchorHandle, []byte("stray")); err != nil {
		t.Fatal(err)
	}
	ag2 := newAgent(t, env, dir2)
	if _, err := ag2.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); !errors.Is(err, api.ErrTampered) {
		t.Fatalf("provision on a legacy trail broken by a stray extend: %v, want ErrTampered", err)
	}
	res, err := ag2.AuditReanchor(ctx)
	if err != nil || res.ArchivedLog == "" {
		t.Fatalf("reanchor of the broken legacy trail: %+v %v", res, err)
	}
	if _, err := ag2.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatalf("provision after reanchor: %v", err)
	}

	// The log deleted while the anchor stays.
	if err := os.Remove(filepath.Join(dir2, audit.FileName)); err != nil {
		t.Fatal(err)
	}
	if _, err := ag2.AuditVerify(ctx); !errors.Is(err, api.ErrTampered) {
		t.Fatalf("verify of a deleted log: %v", err)
	}
	if res, err = ag2.AuditReanchor(ctx); err != nil || res.Record.Objects["log_missing"] != "true" {
		t.Fatalf("reanchor of a deleted log: %+v %v", res, err)
	}
	if _, err := ag2.AuditVerify(ctx); err != nil {
		t.Fatal(err)
	}
}

// signedPCR7 is a signed PK policy over PCR 7's value now, by signer, as
// policy install takes it, for version v.
func signedPCR7(t *testing.T, env *swtpmtest.Env, signer *ecdsa.PrivateKey) func(v uint64) []byte {
	t.Helper()
	cur, err := env.TPM.PCRRead(tpm2.TPMAlgSHA256, []int{7})
	if err != nil {
		t.Fatal(err)
	}
	return func(v uint64) []byte {
		t.Helper()
		sp, err := agent.SignPKPolicy(signer, policy.PCRValues{Bank: policy.BankSHA256, Values: cur}, v, "", true)
		if err != nil {
			t.Fatal(err)
		}
		b, err := sp.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
}

// signedPolicyAgent is a new agent on env, provisioned (trust on first
// use) with a signed PK policy whose signer it returns, with the result.
func signedPolicyAgent(t *testing.T, env *swtpmtest.Env) (*agent.Agent, *ecdsa.PrivateKey, api.ProvisionResult) {
	t.Helper()
	ag := newAgent(t, env, stateDir(t))
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	res, err := ag.Provision(context.Background(), api.ProvisionRequest{TrustOnFirstUse: true, Signer: signer.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return ag, signer, res
}
