package agent_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// refuseN answers the next n commands of cc with a forged SESSION_MEMORY, not passing them on.
func refuseN(cc tpm2.TPMCC, n int) func(transport.TPM, []byte) ([]byte, error, bool) {
	var mu sync.Mutex
	return func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		if n > 0 && swtpmtest.CommandCode(cmd) == cc {
			n--
			return []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x09, 0x03}, nil, true
		}
		return nil, nil, false
	}
}

// dropAnswerN passes the next n commands of cc on and loses their answers.
func dropAnswerN(cc tpm2.TPMCC, n int) func(transport.TPM, []byte) ([]byte, error, bool) {
	var mu sync.Mutex
	return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		if n > 0 && swtpmtest.CommandCode(cmd) == cc {
			n--
			_, _ = next.Send(cmd)
			return nil, errors.New("answer lost on the bus"), true
		}
		return nil, nil, false
	}
}

// Found by review (A1): the extend of a pending record's line loses its
// answer on the bus (the TPM did extend). writePending kept the record
// pending although its line was in the trail, and left the stuck log open:
// every later operation failed, and repair wrote the record twice. Now the
// record leaves the pending file once its line is in, and the log is opened
// again (the anchor decides): one line for it, and work goes on.
func TestPendingRecordWrittenOnceWhenItsExtendAnswerIsLost(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ctx := context.Background()
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"victim", "other", "third"} {
		if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: k, Type: "ecc-p256"}); err != nil {
			t.Fatal(err)
		}
	}
	b.Set(refuseN(tpm2.TPMCCStartAuthSession, 2))
	if err := ag.DeleteKey(ctx, "victim"); err == nil {
		t.Fatal("want a record failure")
	}
	p, _ := os.ReadFile(filepath.Join(dir, "audit.pending"))
	t.Logf("pending after forged refusals: %d line(s)", strings.Count(string(p), "\n"))

	// The next audited op writes the pending record; its extend's answer is lost.
	b.Set(dropAnswerN(tpm2.TPMCCNVExtend, 1))
	err := ag.DeleteKey(ctx, "other")
	t.Logf("delete other (extend answer lost): %v", err)
	b.Set(nil)
	p, _ = os.ReadFile(filepath.Join(dir, "audit.pending"))
	t.Logf("pending now: %d line(s)", strings.Count(string(p), "\n"))
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Logf("audit verify (honest bus): %v", err)
	}
	// Honest bus from here on: does work go on (the extend did happen)?
	for i := range 3 {
		err := ag.DeleteKey(ctx, "other")
		t.Logf("honest delete other #%d: %v", i, err)
	}
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "fresh", Type: "ecc-p256"}); err != nil {
		t.Logf("honest create: %v", err)
	}
	rep, err := ag.AuditRepair(ctx, false)
	t.Logf("audit repair: %+v %v", rep, err)
	recs, err := ag.AuditRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if r.Op == "key-delete" && r.Objects["key"] == "victim" {
			n++
			t.Logf("line %d: %s %v %s", r.Seq, r.Op, r.Objects, r.Result)
		}
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Logf("final verify: %v", err)
	}
	if n != 1 {
		t.Errorf("the victim's delete is in the trail %d times", n)
	}
}

// Found by review (A1): a refusal or fault recorded by record() itself,
// while the trail could not be opened or its pending records written, was
// neither written nor kept: two forged answers erased the record of a
// refused caller. Now it waits in audit.pending like any other.
func TestRecordWaitsWhenTheTrailCannotTakeIt(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ctx := context.Background()
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "victim", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	b.Set(refuseN(tpm2.TPMCCStartAuthSession, 2))
	if err := ag.DeleteKey(ctx, "victim"); err == nil {
		t.Fatal("want a record failure")
	}
	// A refusal of a caller, recorded while the pending write is refused.
	b.Set(refuseN(tpm2.TPMCCStartAuthSession, 2))
	err := ag.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 4242}), "key-delete", "role user may not delete keys")
	t.Logf("record refusal: %v", err)
	b.Set(nil)
	if _, err := ag.AuditRepair(ctx, false); err != nil {
		t.Logf("repair: %v", err)
	}
	recs, err := ag.AuditRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range recs {
		if r.UID == 4242 {
			found = true
		}
	}
	p, _ := os.ReadFile(filepath.Join(dir, "audit.pending"))
	t.Logf("pending left: %q", p)
	if !found && !strings.Contains(string(p), "4242") {
		t.Errorf("the refusal of uid 4242 is neither in the trail nor pending")
	}
}

// Found by review (A2 after a TPM restart, or A1): the exact public area of
// provd's cached key loaded alone (LoadExternal) at its handle: the Name
// matches, so the cache's read-back keeps it, and every use failed with
// TPM_RC_AUTH_UNAVAILABLE until restart. Now such an error on a cached
// handle drops it and loads the key again.
func TestPublicOnlyPlantAtACachedHandle(t *testing.T) {
	b := &signBus{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(func(next transport.TPM) transport.TPM { b.next = next; return b }))
	env.RequireSimulator()
	env.NoLeakCheck()
	ctx := context.Background()
	ag := signingAgent(t, env)
	d := sha256.Sum256([]byte("m"))
	if _, err := ag.Sign(ctx, "sig", d[:], api.SignOptions{}); err != nil {
		t.Fatal(err)
	}
	stale := b.signH
	rp, err := (tpm2.ReadPublic{ObjectHandle: stale}).Execute(b.next)
	if err != nil {
		t.Fatal(err)
	}
	env.PowerCut()
	a2, err := tpm.Open(ctx, tpm.Options{Spec: env.Spec})
	if err != nil {
		t.Fatal(err)
	}
	var filler []tpm2.TPMHandle
	planted := false
	for range 3 {
		r, err := (tpm2.LoadExternal{InPublic: rp.OutPublic, Hierarchy: tpm2.TPMRHNull}).Execute(a2)
		if err != nil {
			t.Fatalf("LoadExternal: %v", err)
		}
		if r.ObjectHandle == stale {
			planted = true
			t.Logf("planted public-only object at 0x%08x, name equal: %v", uint32(stale), string(r.Name.Buffer) == string(rp.Name.Buffer))
			break
		}
		filler = append(filler, r.ObjectHandle)
	}
	for _, h := range filler {
		_, _ = (tpm2.FlushContext{FlushHandle: h}).Execute(a2)
	}
	if !planted {
		t.Fatal("could not plant")
	}
	if err := a2.Close(); err != nil {
		t.Fatal(err)
	}
	fails := 0
	for i := range 4 {
		if _, err := ag.Sign(ctx, "sig", d[:], api.SignOptions{}); err != nil {
			fails++
			t.Logf("sign %d: %v", i, err)
		}
	}
	if fails > 0 {
		t.Errorf("%d of 4 signs failed after A2 planted a same-name public-only object", fails)
	}
}

// Found by review (A1): a Sign passed on and answered with a forged BAD_AUTH
// made provd forget, without a flush, its own cached key: each forgery
// leaked a slot (one survived Close). Now the handle is flushed before the
// key is loaded again; the harness's leak check holds.
func TestForgedBadAuthLeaksNoSlot(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ctx := context.Background()
	ag := signingAgent(t, env)
	d := sha256.Sum256([]byte("m"))
	if _, err := ag.Sign(ctx, "sig", d[:], api.SignOptions{}); err != nil {
		t.Fatal(err)
	}
	signs := 0
	var mu sync.Mutex
	for round := range 3 {
		forged := 1
		b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
			if swtpmtest.CommandCode(cmd) != tpm2.TPMCCSign {
				return nil, nil, false
			}
			mu.Lock()
			defer mu.Unlock()
			signs++
			if forged > 0 {
				forged--
				_, _ = next.Send(cmd)
				return []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x09, 0xa2}, nil, true
			}
			return nil, nil, false
		})
		_, err := ag.Sign(ctx, "sig", d[:], api.SignOptions{})
		b.Set(nil)
		left, _ := env.TPM.Leftovers()
		t.Logf("round %d: sign with forged BAD_AUTH: err=%v; TPM signed %d times so far; transient handles now %d", round, err, signs, len(left))
		_, err = ag.Sign(ctx, "sig", d[:], api.SignOptions{})
		left, _ = env.TPM.Leftovers()
		t.Logf("round %d: honest sign: err=%v; transient handles now %d", round, err, len(left))
	}
	if err := ag.Close(); err != nil {
		t.Fatal(err)
	}
}

// audit.pending torn or garbled (found by review: a torn last line, which a
// power loss while a record was kept can leave, refused every audited
// operation, zeroize included, with no way out named; status read the file
// whole, however large). A torn last line is a record never acknowledged
// and is dropped; a complete line that does not parse is tampering, and
// the message says how to get out (read the file, remove it); status only
// looks at its size.
func TestPendingFileTornOrGarbled(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	pending := filepath.Join(dir, "audit.pending")
	if err := os.WriteFile(pending, []byte(`{"op":"key-del`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"}); err != nil {
		t.Fatalf("create with a torn pending line: %v", err)
	}
	if _, err := os.Stat(pending); !os.IsNotExist(err) {
		t.Fatalf("the torn pending file stays: %v", err)
	}
	if err := os.WriteFile(pending, []byte("{\"op\":\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := ag.Zeroize(ctx, api.ZeroizeOptions{})
	if !errors.Is(err, api.ErrTampered) || !strings.Contains(err.Error(), "remove it") {
		t.Fatalf("zeroize with a garbled pending file: %v", err)
	}
	if err := os.WriteFile(pending, []byte(strings.Repeat("x", 8<<20)), 0o600); err != nil {
		t.Fatal(err)
	}
	if st, err := ag.Status(ctx); err != nil || !strings.Contains(st.AuditError, "audit.pending") {
		t.Fatalf("status with an 8 MiB pending file: %+v %v", st.AuditError, err)
	}
	if err := os.Remove(pending); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.Zeroize(ctx, api.ZeroizeOptions{}); err != nil {
		t.Fatalf("zeroize once the file is removed: %v", err)
	}
}

// A record kept while the trail had no anchor yet (its anchor could not be
// made: found by the power-cut test, where such a record waited for ever and
// repair could not write it): audit repair, or the next audited operation,
// makes the anchor first and writes it.
func TestPendingRecordBeforeTheTrailHasAnAnchor(t *testing.T) {
	for _, via := range []string{"repair", "provision"} {
		t.Run(via, func(t *testing.T) {
			env := swtpmtest.Start(t)
			ctx := context.Background()
			dir := stateDir(t)
			ag := newAgent(t, env, dir)
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			rec := `{"seq":0,"time":"2026-12-04T19:00:00Z","op":"provision","uid":0,"objects":{},"result":"error: power cut","prev":""}` + "\n"
			if err := os.WriteFile(filepath.Join(dir, "audit.pending"), []byte(rec), 0o600); err != nil {
				t.Fatal(err)
			}
			var err error
			if via == "repair" {
				_, err = ag.AuditRepair(ctx, false)
			} else {
				_, err = ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
			}
			if err != nil {
				t.Fatalf("%s with a record waiting and no anchor: %v", via, err)
			}
			if _, err := ag.AuditVerify(ctx); err != nil {
				t.Fatalf("audit verify: %v", err)
			}
			recs, err := ag.AuditRecords(ctx)
			if err != nil {
				t.Fatal(err)
			}
			late := false
			for _, r := range recs {
				late = late || (r.Result == "error: power cut" && r.Objects["recorded_late"] == "true")
			}
			if !late {
				t.Fatalf("the waiting record is not in the trail: %+v", recs)
			}
		})
	}
}
