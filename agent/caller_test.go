package agent

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// Concurrent operations by different callers on one Agent each reach the
// audit trail under their own uid: the caller travels in the request's
// context, so no interleaving can record one caller's operation under
// another's identity. An operation whose context names no caller records
// Config.UID.
func TestCallerPerRequest(t *testing.T) {
	env := swtpmtest.Start(t)
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	a.uid = 4242 // Config.UID: the in-process caller
	const callers = 6
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for uid := 1000; uid < 1000+callers; uid++ {
		wg.Go(func() {
			ctx := api.WithCaller(context.Background(), api.Caller{UID: uid})
			_, err := officertest.Derive(t, ctx, a, api.DeriveRequest{Name: fmt.Sprintf("k%d", uid), Label: fmt.Sprintf("l%d", uid), Type: "ecc-p256"})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := officertest.Derive(t, context.Background(), a, api.DeriveRequest{Name: "mine", Label: "mine", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	recs, err := a.AuditRecords(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, r := range recs {
		if r.Op != "key-derive" {
			continue
		}
		seen++
		name := r.Objects["key"]
		want := a.uid
		if n, ok := strings.CutPrefix(name, "k"); ok {
			want, _ = strconv.Atoi(n)
		}
		if r.UID != want {
			t.Errorf("key %s derived by uid %d recorded as uid %d", name, want, r.UID)
		}
	}
	if seen != callers+1 {
		t.Errorf("%d key-derive records, want %d", seen, callers+1)
	}
}

// status warns about an owner hierarchy without authorization (swtpm has
// none): what it allows is what the audit anchor and policy counter rest on.
func TestStatusWarnsWithoutOwnerAuth(t *testing.T) {
	env := swtpmtest.Start(t)
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	st, err := a.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Warnings) != 2 || !strings.Contains(st.Warnings[0], "owner hierarchy") || !strings.Contains(st.Warnings[1], "TPM2_Clear") ||
		st.TPMTrust != api.TrustOnFirstUse {
		t.Errorf("status warnings %q, trust %q: want two (owner authorization, clear)", st.Warnings, st.TPMTrust)
	}
}

// With a lockout authorization set, the warning about TPM2_Clear goes away
// (found by review: an empty lockout authorization lets any process clear
// the TPM, owner password or not). The state it reads is authenticated.
func TestStatusWarnsOfAnOpenClear(t *testing.T) {
	env := swtpmtest.Start(t)
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	if _, err := (tpm2.HierarchyChangeAuth{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHLockout, Auth: tpm2.PasswordAuth(nil)},
		NewAuth:    tpm2.TPM2BAuth{Buffer: []byte("lockout secret")},
	}).Execute(a.t); err != nil {
		t.Fatal(err)
	}
	st, err := a.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range st.Warnings {
		if strings.Contains(w, "TPM2_Clear") || strings.Contains(w, "without authentication") {
			t.Errorf("status warns %q with a lockout authorization set and the SRK pinned", w)
		}
	}
	p, err := a.t.PermanentState()
	if err != nil || !p.Authenticated || !p.LockoutAuthSet || p.OwnerAuthSet {
		t.Fatalf("permanent state %+v %v", p, err)
	}
}
