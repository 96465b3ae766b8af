// Package fleettest is the fleet store's conformance suite: one set of
// tests that every Store implementation passes, run on SQLite and on a real
// PostgreSQL (attest/fleet's store_test.go).
package fleettest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
)

// Opener opens a fresh, empty store for one test; the same URL opened
// twice must reach the same database (replicas).
type Opener func(t *testing.T) (url string)

var t0 = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

func open(t *testing.T, url string) fleet.Store {
	t.Helper()
	s, err := fleet.Open(context.Background(), url)
	if err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func device(id string) fleet.Device {
	secret := sha256.Sum256([]byte("secret of " + id))
	return fleet.Device{ID: id, Class: "gateway", EKPublic: []byte("ek " + id), EKCert: []byte("cert " + id), AKPublic: []byte("ak " + id),
		SecretHash: secret[:], EnrolledAt: t0}
}

// enroll puts device id in the store, enrolled (its credential activated):
// only an enrolled device's appraisals are recorded.
func enroll(t *testing.T, s fleet.Store, id string) {
	t.Helper()
	d := device(id)
	if err := s.PutPending(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Activate(context.Background(), id, d.SecretHash, t0); err != nil {
		t.Fatal(err)
	}
}

// Run runs the suite; newURL gives a fresh database for each test.
func Run(t *testing.T, newURL Opener) {
	ctx := context.Background()
	t.Run("enrollment", func(t *testing.T) {
		s := open(t, newURL(t))
		d := device("d1")
		if err := s.PutPending(ctx, d); err != nil {
			t.Fatal(err)
		}
		got, err := s.Device(ctx, "d1")
		if err != nil || got.State != fleet.StatePending || !bytes.Equal(got.AKPublic, d.AKPublic) || !got.EnrolledAt.Equal(t0) {
			t.Fatalf("%+v %v", got, err)
		}
		// Another AK cannot take a pending enrollment over before it
		// expires; a retry of the same AK, or another after PendingTTL, can.
		d.AKPublic = []byte("ak again")
		if err := s.PutPending(ctx, d); !errors.Is(err, fleet.ErrExists) {
			t.Fatalf("another AK over a pending enrollment: %v", err)
		}
		d.EnrolledAt = t0.Add(fleet.PendingTTL)
		if err := s.PutPending(ctx, d); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Activate(ctx, "d1", []byte("wrong"), t0); !errors.Is(err, fleet.ErrWrongSecret) {
			t.Fatalf("wrong secret: %v", err)
		}
		if got, _ := s.Device(ctx, "d1"); got.State != fleet.StatePending {
			t.Fatalf("a wrong secret changed the state: %s", got.State)
		}
		act, err := s.Activate(ctx, "d1", d.SecretHash, t0.Add(fleet.PendingTTL+time.Second))
		if err != nil || act.State != fleet.StateEnrolled || !bytes.Equal(act.AKPublic, []byte("ak again")) {
			t.Fatalf("activate: %+v %v", act, err)
		}
		if _, err := s.Activate(ctx, "d1", d.SecretHash, t0); !errors.Is(err, fleet.ErrExists) {
			t.Fatalf("activate twice: %v", err)
		}
		if err := s.PutPending(ctx, device("d1")); !errors.Is(err, fleet.ErrExists) {
			t.Fatalf("enroll over an enrolled device: %v", err)
		}
		if _, err := s.Device(ctx, "nobody"); !errors.Is(err, fleet.ErrNotFound) {
			t.Fatalf("unknown device: %v", err)
		}
		if _, err := s.Activate(ctx, "nobody", nil, t0); !errors.Is(err, fleet.ErrNotFound) {
			t.Fatalf("activate unknown: %v", err)
		}
		if err := s.Revoke(ctx, "d1", t0); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.Device(ctx, "d1"); got.State != fleet.StateRevoked {
			t.Fatalf("revoked: %s", got.State)
		}
		if err := s.PutPending(ctx, device("d1")); !errors.Is(err, fleet.ErrExists) {
			t.Fatalf("enroll over a revoked device: %v", err)
		}
		if err := s.Revoke(ctx, "nobody", t0); !errors.Is(err, fleet.ErrNotFound) {
			t.Fatalf("revoke unknown: %v", err)
		}
	})
	t.Run("list", func(t *testing.T) {
		s := open(t, newURL(t))
		for i := range 25 {
			if err := s.PutPending(ctx, device(fmt.Sprintf("d%02d", i))); err != nil {
				t.Fatal(err)
			}
		}
		var all []string
		after := ""
		for {
			page, err := s.Devices(ctx, after, 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			for _, d := range page {
				all = append(all, d.ID)
			}
			after = page[len(page)-1].ID
		}
		if len(all) != 25 || all[0] != "d00" || all[24] != "d24" {
			t.Fatalf("listed %v", all)
		}
	})
	t.Run("nonces", func(t *testing.T) {
		s := open(t, newURL(t))
		n := fleet.Nonce{Nonce: []byte("nonce-1"), DeviceID: "d1", ExpiresAt: t0.Add(time.Minute)}
		if err := s.UseNonce(ctx, n, t0); err != nil {
			t.Fatal(err)
		}
		if err := s.UseNonce(ctx, n, t0); !errors.Is(err, fleet.ErrNonceUnknown) {
			t.Fatalf("a nonce used twice: %v", err)
		}
		// Expired ones are swept: the table holds only what can still be
		// replayed.
		if err := s.UseNonce(ctx, fleet.Nonce{Nonce: []byte("nonce-2"), DeviceID: "d1", ExpiresAt: t0.Add(2 * time.Minute)}, t0.Add(time.Minute+time.Second)); err != nil {
			t.Fatal(err)
		}
		// Many users of one nonce at once: exactly one wins.
		race := fleet.Nonce{Nonce: []byte("nonce-3"), DeviceID: "d1", ExpiresAt: t0.Add(time.Minute)}
		var wins atomic.Int32
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if s.UseNonce(ctx, race, t0) == nil {
					wins.Add(1)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("%d users won one nonce", wins.Load())
		}
		// The nonce key: made once, the same on every call.
		k1, err := s.NonceKey(ctx)
		if err != nil || len(k1) != 32 {
			t.Fatalf("%x %v", k1, err)
		}
		if k2, err := s.NonceKey(ctx); err != nil || !bytes.Equal(k1, k2) {
			t.Fatalf("a second nonce key: %v", err)
		}
	})
	t.Run("appraisals", func(t *testing.T) {
		s := open(t, newURL(t))
		enroll(t, s, "d1")
		pcr := 7
		for i, pass := range []bool{true, false} {
			a := fleet.Appraisal{ID: fmt.Sprintf("a%d", i), DeviceID: "d1", At: t0.Add(time.Duration(i) * time.Second), Pass: pass,
				PCRs: map[string]map[int]string{"sha256": {7: "00"}}}
			if !pass {
				a.Reasons = []fleet.Reason{{Code: "pcr_policy", Bank: "sha256", PCR: &pcr}}
			}
			if err := s.RecordAppraisal(ctx, a); err != nil {
				t.Fatal(err)
			}
		}
		h, err := s.Appraisals(ctx, "d1", 10)
		if err != nil || len(h) != 2 || h[0].ID != "a1" || h[0].Pass || len(h[0].Reasons) != 1 || *h[0].Reasons[0].PCR != 7 || h[1].PCRs["sha256"][7] != "00" {
			t.Fatalf("history %+v %v", h, err)
		}
		d, err := s.Device(ctx, "d1")
		if err != nil || d.LastVerdict != "fail" || !d.LastAt.Equal(t0.Add(time.Second)) {
			t.Fatalf("last verdict: %+v %v", d, err)
		}
		// The record takes its nonce in the same transaction: of 16
		// concurrent records answering one nonce, one is kept, and the
		// others change nothing.
		n := fleet.Nonce{Nonce: []byte("appraised-nonce"), DeviceID: "d1", ExpiresAt: t0.Add(time.Hour)}
		var wg sync.WaitGroup
		var kept atomic.Int32
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a := fleet.Appraisal{ID: fmt.Sprintf("r%d", i), DeviceID: "d1", Nonce: &n, At: t0.Add(time.Minute), Pass: true, PCRs: map[string]map[int]string{}}
				switch err := s.RecordAppraisal(ctx, a); {
				case err == nil:
					kept.Add(1)
				case !errors.Is(err, fleet.ErrNonceUnknown):
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if h, err := s.Appraisals(ctx, "d1", 100); kept.Load() != 1 || err != nil || len(h) != 3 {
			t.Fatalf("%d records kept of one nonce, history of %d: %v", kept.Load(), len(h), err)
		}
		// One read gives the device and its class's policy.
		if d, p, err := s.DeviceWithPolicy(ctx, "d1"); err != nil || d.ID != "d1" || p != nil {
			t.Fatalf("without a policy: %+v %+v %v", d, p, err)
		}
		if err := s.SetPolicy(ctx, fleet.Policy{Class: "gateway", PCRs: map[string]map[int]string{"sha256": {7: "ab"}}, PKPolicies: []string{"cd"}, UpdatedAt: t0}); err != nil {
			t.Fatal(err)
		}
		if d, p, err := s.DeviceWithPolicy(ctx, "d1"); err != nil || d.LastVerdict != "pass" || p == nil || p.PCRs["sha256"][7] != "ab" || p.PKPolicies[0] != "cd" || !p.UpdatedAt.Equal(t0) {
			t.Fatalf("with a policy: %+v %+v %v", d, p, err)
		}
		if _, _, err := s.DeviceWithPolicy(ctx, "nobody"); !errors.Is(err, fleet.ErrNotFound) {
			t.Fatalf("unknown: %v", err)
		}
	})
	t.Run("policies", func(t *testing.T) {
		s := open(t, newURL(t))
		if _, err := s.Policy(ctx, "gateway"); !errors.Is(err, fleet.ErrNotFound) {
			t.Fatalf("no policy: %v", err)
		}
		base := fleet.Policy{Class: "gateway", PCRs: map[string]map[int]string{"sha256": {0: "aa"}}, TOFU: true, UpdatedAt: t0}
		// Only an enrolled device of the class sets its baseline: not an
		// unknown, pending or revoked one (revoked while its appraisal
		// ran), nor one of another class.
		pending, revoked, camera := device("pending"), device("revoked"), device("camera")
		camera.Class = "camera"
		for _, d := range []fleet.Device{pending, revoked, camera} {
			if err := s.PutPending(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
		for _, d := range []fleet.Device{revoked, camera} {
			if _, err := s.Activate(ctx, d.ID, d.SecretHash, t0); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Revoke(ctx, revoked.ID, t0); err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"unknown", pending.ID, revoked.ID, camera.ID} {
			if _, ok, err := s.Baseline(ctx, id, base); !errors.Is(err, fleet.ErrNotEnrolled) || ok {
				t.Fatalf("a baseline from %s: stored %v, %v; want ErrNotEnrolled", id, ok, err)
			}
			if _, err := s.Policy(ctx, "gateway"); !errors.Is(err, fleet.ErrNotFound) {
				t.Fatalf("after a baseline from %s: %v, want no policy", id, err)
			}
		}
		enroll(t, s, "d1")
		// Concurrent first quotes: one baseline is stored, all see it.
		var stored atomic.Int32
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := base
				p.PCRs = map[string]map[int]string{"sha256": {0: fmt.Sprintf("%02x", i)}}
				got, ok, err := s.Baseline(ctx, "d1", p)
				if err != nil {
					t.Error(err)
					return
				}
				if ok {
					stored.Add(1)
				}
				if !got.TOFU || len(got.PCRs["sha256"]) != 1 {
					t.Errorf("baseline read back: %+v", got)
				}
			}()
		}
		wg.Wait()
		if stored.Load() != 1 {
			t.Fatalf("%d baselines stored", stored.Load())
		}
		set := fleet.Policy{Class: "gateway", PCRs: map[string]map[int]string{"sha256": {7: "bb"}}, Manifests: []string{"cc"}, UpdatedAt: t0}
		if err := s.SetPolicy(ctx, set); err != nil {
			t.Fatal(err)
		}
		got, err := s.Policy(ctx, "gateway")
		if err != nil || got.TOFU || got.PCRs["sha256"][7] != "bb" || len(got.Manifests) != 1 {
			t.Fatalf("%+v %v", got, err)
		}
		if _, ok, err := s.Baseline(ctx, "d1", base); err != nil || ok {
			t.Fatalf("a baseline over a set policy: %v %v", ok, err)
		}
		// Over a policy, a revoked device gets the policy (its record is
		// refused later), nothing stored.
		if got, ok, err := s.Baseline(ctx, revoked.ID, base); err != nil || ok || got.TOFU {
			t.Fatalf("a baseline from a revoked device over a set policy: %+v %v %v", got, ok, err)
		}
	})
	t.Run("secrets", func(t *testing.T) {
		s := open(t, newURL(t))
		for _, sec := range []fleet.Secret{{Class: "gateway", Name: "wifi", Value: []byte("v1"), UpdatedAt: t0},
			{Class: "gateway", Name: "api", Value: []byte("a"), UpdatedAt: t0}, {Class: "camera", Name: "wifi", Value: []byte("c"), UpdatedAt: t0},
			{Class: "gateway", Name: "wifi", Value: []byte("v2"), UpdatedAt: t0.Add(time.Second)}} {
			if err := s.PutSecret(ctx, sec); err != nil {
				t.Fatal(err)
			}
		}
		got, err := s.Secrets(ctx, "gateway")
		if err != nil || len(got) != 2 || got[0].Name != "api" || got[1].Name != "wifi" || string(got[1].Value) != "v2" || got[1].Kind != fleetapi.KindSecret {
			t.Fatalf("%+v %v", got, err)
		}
		// A key under a secret's name replaces it, kind and all.
		if err := s.PutSecret(ctx, fleet.Secret{Class: "gateway", Name: "wifi", Kind: fleetapi.KindKey, Value: []byte("pkcs8"), UpdatedAt: t0}); err != nil {
			t.Fatal(err)
		}
		got, err = s.Secrets(ctx, "gateway")
		if err != nil || len(got) != 2 || got[1].Kind != fleetapi.KindKey || string(got[1].Value) != "pkcs8" {
			t.Fatalf("%+v %v", got, err)
		}
		if err := s.DeleteSecret(ctx, "gateway", "wifi"); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteSecret(ctx, "gateway", "wifi"); !errors.Is(err, fleet.ErrNotFound) {
			t.Fatalf("delete twice: %v", err)
		}
		if got, err := s.Secrets(ctx, "gateway"); err != nil || len(got) != 1 || got[0].Name != "api" {
			t.Fatalf("after delete: %+v %v", got, err)
		}
		if got, err := s.Secrets(ctx, "camera"); err != nil || len(got) != 1 {
			t.Fatalf("another class's: %+v %v", got, err)
		}
	})
	t.Run("peers", func(t *testing.T) {
		s := open(t, newURL(t))
		p := fleet.Peer{DeviceID: "d1", Identity: []byte(`{"format":1}`), ParentName: "000b01", PKName: "000b02", PKPolicy: "aa", RegisteredAt: t0}
		if err := s.PutPeer(ctx, p); !errors.Is(err, fleet.ErrNotFound) {
			t.Fatalf("a peer for an unknown device: %v", err)
		}
		d := device("d1")
		if err := s.PutPending(ctx, d); err != nil {
			t.Fatal(err)
		}
		if err := s.PutPeer(ctx, p); !errors.Is(err, fleet.ErrNotFound) {
			t.Fatalf("a peer for a pending device: %v", err)
		}
		if _, err := s.Activate(ctx, "d1", d.SecretHash, t0); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Peer(ctx, "d1"); !errors.Is(err, fleet.ErrNotFound) {
			t.Fatalf("no peer yet: %v", err)
		}
		if err := s.PutPeer(ctx, p); err != nil {
			t.Fatal(err)
		}
		p.ParentName, p.RegisteredAt = "000b03", t0.Add(time.Second)
		if err := s.PutPeer(ctx, p); err != nil {
			t.Fatal(err)
		}
		got, err := s.Peer(ctx, "d1")
		if err != nil || got.ParentName != "000b03" || !bytes.Equal(got.Identity, p.Identity) || got.PKName != "000b02" || got.PKPolicy != "aa" || !got.RegisteredAt.Equal(p.RegisteredAt) {
			t.Fatalf("%+v %v", got, err)
		}
		if err := s.Revoke(ctx, "d1", t0); err != nil {
			t.Fatal(err)
		}
		if err := s.PutPeer(ctx, p); !errors.Is(err, fleet.ErrNotFound) {
			t.Fatalf("a peer for a revoked device: %v", err)
		}
	})
	t.Run("replicas", func(t *testing.T) {
		url := newURL(t)
		// Two replicas start at once on one empty database: the schema is
		// made once, both serve.
		var wg sync.WaitGroup
		stores := make([]fleet.Store, 4)
		errs := make([]error, 4)
		for i := range stores {
			wg.Add(1)
			go func() {
				defer wg.Done()
				stores[i], errs[i] = fleet.Open(ctx, url)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("replica %d: %v", i, err)
			}
			t.Cleanup(func() { stores[i].Close() })
		}
		// Replicas share one nonce key, and a nonce used on one is used on
		// all.
		keys := map[string]bool{}
		for _, st := range stores {
			k, err := st.NonceKey(ctx)
			if err != nil {
				t.Fatal(err)
			}
			keys[string(k)] = true
		}
		if len(keys) != 1 {
			t.Fatalf("%d nonce keys among the replicas", len(keys))
		}
		n := fleet.Nonce{Nonce: []byte("shared"), DeviceID: "d1", ExpiresAt: t0.Add(time.Minute)}
		if err := stores[1].UseNonce(ctx, n, t0); err != nil {
			t.Fatalf("a nonce used on one replica: %v", err)
		}
		if err := stores[0].UseNonce(ctx, n, t0); !errors.Is(err, fleet.ErrNonceUnknown) {
			t.Fatalf("the same nonce again, on another replica: %v", err)
		}
	})
	t.Run("record replicas", func(t *testing.T) {
		// One nonce answered at once through two replicas sharing the
		// database, several callers on each: one record is kept.
		url := newURL(t)
		a, b := open(t, url), open(t, url)
		enroll(t, a, "d1")
		for round := range 5 {
			n := fleet.Nonce{Nonce: []byte(fmt.Sprint("replicated-", round)), DeviceID: "d1", ExpiresAt: t0.Add(time.Hour)}
			var wg sync.WaitGroup
			var kept atomic.Int32
			for i := range 16 {
				st := a
				if i%2 == 1 {
					st = b
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					rec := fleet.Appraisal{ID: fmt.Sprintf("r%d-%d", round, i), DeviceID: "d1", Nonce: &n, At: t0, Pass: true, PCRs: map[string]map[int]string{}}
					switch err := st.RecordAppraisal(ctx, rec); {
					case err == nil:
						kept.Add(1)
					case !errors.Is(err, fleet.ErrNonceUnknown):
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			if kept.Load() != 1 {
				t.Fatalf("round %d: %d records kept of one nonce on two replicas", round, kept.Load())
			}
		}
		if h, err := b.Appraisals(ctx, "d1", 100); err != nil || len(h) != 5 {
			t.Fatalf("history of %d: %v", len(h), err)
		}
	})
	t.Run("records only while enrolled", func(t *testing.T) {
		// A pending device, or one revoked while its appraisal ran: the
		// record is refused with nothing kept and its nonce still free.
		s := open(t, newURL(t))
		d := device("d1")
		if err := s.PutPending(ctx, d); err != nil {
			t.Fatal(err)
		}
		rec := func(id string) (*fleet.Nonce, error) {
			n := &fleet.Nonce{Nonce: []byte("nonce " + id), DeviceID: "d1", ExpiresAt: t0.Add(time.Hour)}
			return n, s.RecordAppraisal(ctx, fleet.Appraisal{ID: id, DeviceID: "d1", Nonce: n, At: t0, Pass: true, PCRs: map[string]map[int]string{}})
		}
		refused := func(id, verdict string) {
			t.Helper()
			n, err := rec(id)
			if !errors.Is(err, fleet.ErrNotEnrolled) {
				t.Fatalf("%s: %v, want ErrNotEnrolled", id, err)
			}
			if h, err := s.Appraisals(ctx, "d1", 10); err != nil || slices.ContainsFunc(h, func(a fleet.Appraisal) bool { return a.ID == id }) {
				t.Fatalf("%s: kept (%v)", id, err)
			}
			if got, err := s.Device(ctx, "d1"); err != nil || got.LastVerdict != verdict {
				t.Fatalf("%s: last verdict %q (%v), want %q", id, got.LastVerdict, err, verdict)
			}
			if err := s.UseNonce(ctx, *n, t0); err != nil {
				t.Fatalf("%s: the refused record took its nonce: %v", id, err)
			}
		}
		// The secrets to deliver come with the device's state, in one read.
		secretsFor := func(want int, wantErr error) {
			t.Helper()
			got, err := s.SecretsFor(ctx, "d1")
			if !errors.Is(err, wantErr) || len(got) != want {
				t.Fatalf("SecretsFor: %d secrets, %v; want %d, %v", len(got), err, want, wantErr)
			}
		}
		refused("pending", "")
		secretsFor(0, fleet.ErrNotEnrolled)
		if _, err := s.Activate(ctx, "d1", d.SecretHash, t0); err != nil {
			t.Fatal(err)
		}
		secretsFor(0, nil)
		if err := s.PutSecret(ctx, fleet.Secret{Class: "gateway", Name: "wifi", Value: []byte("v"), UpdatedAt: t0}); err != nil {
			t.Fatal(err)
		}
		secretsFor(1, nil)
		if _, err := rec("enrolled"); err != nil {
			t.Fatal(err)
		}
		if err := s.Revoke(ctx, "d1", t0); err != nil {
			t.Fatal(err)
		}
		refused("revoked", "pass")
		secretsFor(0, fleet.ErrNotEnrolled)
		if got, err := s.SecretsFor(ctx, "nobody"); !errors.Is(err, fleet.ErrNotEnrolled) || got != nil {
			t.Fatalf("SecretsFor an unknown device: %v %v", got, err)
		}
	})
	t.Run("record failures", func(t *testing.T) {
		// A record whose write fails answers an error and leaves nothing:
		// no appraisal, the last verdict as it was, its nonce still free.
		// Two traps: an insert refused by the database, and a constraint
		// checked only at commit (which, in SQLite's group commit, fails
		// every record committed with it).
		url := newURL(t)
		s := open(t, url)
		enroll(t, s, "d1")
		trap(t, url)
		rec := func(id string, n *fleet.Nonce) error {
			return s.RecordAppraisal(ctx, fleet.Appraisal{ID: id, DeviceID: "d1", Nonce: n, At: t0.Add(time.Minute), Pass: true, PCRs: map[string]map[int]string{}})
		}
		nonce := func(v string) *fleet.Nonce {
			return &fleet.Nonce{Nonce: []byte(v), DeviceID: "d1", ExpiresAt: t0.Add(time.Hour)}
		}
		// Kept returns whether record id is in the history (and fails the
		// test when the device's last verdict disagrees).
		kept := func(id string) bool {
			h, err := s.Appraisals(ctx, "d1", 1000)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range h {
				if a.ID == id {
					return true
				}
			}
			return false
		}
		free := func(n *fleet.Nonce) bool {
			err := s.UseNonce(ctx, *n, t0)
			if err != nil && !errors.Is(err, fleet.ErrNonceUnknown) {
				t.Fatal(err)
			}
			return err == nil
		}
		for _, id := range []string{"insert-fails", "commit-fails"} {
			n := nonce(id)
			if err := rec(id, n); err == nil || errors.Is(err, fleet.ErrNonceUnknown) {
				t.Fatalf("%s: %v", id, err)
			}
			if kept(id) {
				t.Fatalf("%s: recorded after an error", id)
			}
			if d, err := s.Device(ctx, "d1"); err != nil || d.LastVerdict != "" {
				t.Fatalf("%s: the last verdict changed: %+v %v", id, d, err)
			}
			if !free(n) {
				t.Fatalf("%s: the nonce was taken by a failed record", id)
			}
		}
		// A caller whose context has ended: an error, nothing kept.
		done, cancel := context.WithCancel(ctx)
		cancel()
		n := nonce("cancelled")
		if err := s.RecordAppraisal(done, fleet.Appraisal{ID: "cancelled", DeviceID: "d1", Nonce: n, At: t0, Pass: true}); err == nil {
			t.Fatal("a record with its context ended")
		}
		if kept("cancelled") || !free(n) {
			t.Fatal("a record with its context ended left something")
		}
		// Many at once, one of them failing at commit: every record
		// answered nil is kept with its nonce taken, every error left
		// nothing.
		for round := range 5 {
			var wg sync.WaitGroup
			errs := make([]error, 16)
			ids := make([]string, 16)
			nonces := make([]*fleet.Nonce, 16)
			for i := range 16 {
				ids[i] = fmt.Sprintf("batch-%d-%d", round, i)
				if i == 7 {
					ids[i] = fmt.Sprintf("commit-fails-%d", round)
				}
				nonces[i] = nonce(ids[i])
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[i] = rec(ids[i], nonces[i])
				}()
			}
			wg.Wait()
			if errs[7] == nil {
				t.Fatal("the trapped record passed")
			}
			for i, err := range errs {
				if errors.Is(err, fleet.ErrNonceUnknown) {
					t.Fatalf("%s: %v", ids[i], err)
				}
				if k := kept(ids[i]); k != (err == nil) {
					t.Fatalf("%s answered %v, kept %v", ids[i], err, k)
				}
				if f := free(nonces[i]); f != (err != nil) {
					t.Fatalf("%s answered %v, its nonce free %v", ids[i], err, f)
				}
			}
		}
	})
}

// trap makes the appraisals table refuse a record whose ID is
// "insert-fails" (at its insert) or starts with "commit-fails" (at the
// transaction's commit), by triggers the test adds to the store's
// database.
func trap(t *testing.T, url string) {
	t.Helper()
	var stmts []string
	var db *sql.DB
	var err error
	switch {
	case strings.HasPrefix(url, "sqlite://"):
		db, err = sql.Open("sqlite", "file:"+strings.TrimPrefix(url, "sqlite://")+"?_pragma=busy_timeout(10000)")
		stmts = []string{
			`CREATE TABLE trap (device_id TEXT REFERENCES devices (id) DEFERRABLE INITIALLY DEFERRED)`,
			`CREATE TRIGGER trap_insert BEFORE INSERT ON appraisals WHEN NEW.id = 'insert-fails' BEGIN SELECT RAISE(ABORT, 'trap'); END`,
			`CREATE TRIGGER trap_commit AFTER INSERT ON appraisals WHEN NEW.id LIKE 'commit-fails%' BEGIN INSERT INTO trap VALUES ('no such device'); END`,
		}
	default:
		db, err = sql.Open("pgx", url)
		stmts = []string{
			`CREATE FUNCTION trap() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'trap'; END $$`,
			`CREATE TRIGGER trap_insert BEFORE INSERT ON appraisals FOR EACH ROW WHEN (NEW.id = 'insert-fails') EXECUTE FUNCTION trap()`,
			`CREATE CONSTRAINT TRIGGER trap_commit AFTER INSERT ON appraisals DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.id LIKE 'commit-fails%') EXECUTE FUNCTION trap()`,
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range stmts {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}
