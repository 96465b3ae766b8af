package agent_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// signBus notes the key handle of the last TPM2_Sign on provd's channel.
type signBus struct {
	next  transport.TPM
	mu    sync.Mutex
	signH tpm2.TPMHandle
}

func (b *signBus) Send(cmd []byte) ([]byte, error) {
	if len(cmd) >= 14 && tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) == tpm2.TPMCCSign {
		b.mu.Lock()
		b.signH = tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14]))
		b.mu.Unlock()
	}
	return b.next.Send(cmd)
}

// plant loads, through tp, objects counting toward lockout with provd's
// key's public policy (pub) and another authValue, until one lands at the
// handle number want; it flushes the others.
func plant(t *testing.T, tp transport.TPM, pub tpm2.TPMTPublic, want tpm2.TPMHandle) {
	t.Helper()
	pub.ObjectAttributes.NoDA = false
	var filler []tpm2.TPMHandle
	defer func() {
		for _, h := range filler {
			_, _ = (tpm2.FlushContext{FlushHandle: h}).Execute(tp)
		}
	}()
	for range 3 {
		r, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner,
			InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{UserAuth: tpm2.TPM2BAuth{Buffer: []byte("a2-secret")}}},
			InPublic:    tpm2.New2B(pub)}).Execute(tp)
		if err != nil {
			t.Fatal(err)
		}
		if r.ObjectHandle == want {
			return
		}
		filler = append(filler, r.ObjectHandle)
	}
	t.Fatalf("could not plant an object at 0x%08x", uint32(want))
}

// A handle in provd's key cache that names another object (found by review:
// someone put a DA-protected object with the key's public policy at the
// number of provd's resident key; every later sign failed that object's
// authorization, counted toward lockout until the TPM locked out, and provd
// never recovered):
//   - "power-cut-then-another-client": the TPM restarts, another client
//     connects before provd dials again, starts it up and plants its object
//     (A2 where swtpm's socket is reachable): provd's new connection moves
//     the TPM's generation, its cache reads its handles back and forgets
//     the one that names another object; not one authorization fails;
//   - "on-provds-own-connection" (what only the bus, A1, can do: a TPM
//     without a resource manager serves one client at a time, and a
//     resource manager gives each its own handles): the first sign fails
//     that object's authorization once, provd forgets the handle and loads
//     its key again, and that sign and every later one succeed.
func TestStaleHandleNeverStopsProvd(t *testing.T) {
	for _, how := range []string{"power-cut-then-another-client", "on-provds-own-connection"} {
		t.Run(how, func(t *testing.T) {
			b := &signBus{}
			env := swtpmtest.Start(t, swtpmtest.WithWrap(func(next transport.TPM) transport.TPM { b.next = next; return b }))
			env.RequireSimulator()
			env.NoLeakCheck() // the planted object is not provd's to flush
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
			pub, err := rp.OutPublic.Contents()
			if err != nil {
				t.Fatal(err)
			}
			if how == "on-provds-own-connection" {
				if _, err := (tpm2.FlushContext{FlushHandle: stale}).Execute(b.next); err != nil {
					t.Fatal(err)
				}
				plant(t, b.next, *pub, stale)
			} else {
				env.PowerCut()
				a2, err := tpm.Open(ctx, tpm.Options{Spec: env.Spec})
				if err != nil {
					t.Fatal(err)
				}
				plant(t, a2, *pub, stale)
				if err := a2.Close(); err != nil {
					t.Fatal(err)
				}
			}
			for i := range 4 {
				if _, err := ag.Sign(ctx, "sig", d[:], api.SignOptions{}); err != nil {
					t.Fatalf("sign %d after the object was planted: %v", i, err)
				}
			}
			info, err := env.TPM.Info()
			if err != nil {
				t.Fatal(err)
			}
			want := uint32(0)
			if how == "on-provds-own-connection" {
				want = 1
			}
			if info.Lockout.Counter != want {
				t.Fatalf("lockout counter %d after four signs, want %d", info.Lockout.Counter, want)
			}
		})
	}
}

// initForger answers one command of code cc, once armed, with a forged
// TPM_RC_INITIALIZE after passing it on: the TPM made the session or object,
// provd is told it did not.
type initForger struct {
	next transport.TPM
	mu   sync.Mutex
	cc   tpm2.TPMCC
	n    int
}

func (f *initForger) Send(cmd []byte) ([]byte, error) {
	rsp, err := f.next.Send(cmd)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil && f.n > 0 && tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) == f.cc {
		f.n--
		return []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x00}, nil
	}
	return rsp, err
}

// Errors forged on the bus after the TPM made a session or object (found by
// review: a forged TPM_RC_INITIALIZE was answered with a Startup and the
// command resent, so each forgery left the first session or object loaded;
// eight filled the slots and provd failed until restart). Now the command
// is resent only when provd's Startup shows the TPM needed one, and after
// an operation in which a command that makes a handle failed, provd flushes
// every handle it does not hold: the forged operations fail, nothing is left
// behind, and the next operation succeeds.
func TestForgedErrorsLeaveNothingLoaded(t *testing.T) {
	t.Parallel()
	for _, cc := range []tpm2.TPMCC{tpm2.TPMCCStartAuthSession, tpm2.TPMCCLoad, tpm2.TPMCCContextLoad} {
		t.Run(fmt.Sprintf("%v", cc), func(t *testing.T) {
			f := &initForger{}
			env := swtpmtest.Start(t, swtpmtest.WithWrap(func(next transport.TPM) transport.TPM { f.next = next; return f }))
			ctx := context.Background()
			ag := newAgent(t, env, stateDir(t))
			if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"a", "b"} {
				if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: k, Type: "ecc-p256"}); err != nil {
					t.Fatal(err)
				}
			}
			d := sha256.Sum256([]byte("m"))
			for i := range 8 {
				f.mu.Lock()
				f.cc, f.n = cc, 1
				f.mu.Unlock()
				_, _ = ag.Sign(ctx, []string{"a", "b"}[i%2], d[:], api.SignOptions{}) // a context load, a load
			}
			f.mu.Lock()
			f.n = 0
			f.mu.Unlock()
			if _, err := ag.Sign(ctx, "a", d[:], api.SignOptions{}); err != nil {
				t.Fatalf("sign once the forgeries stop: %v", err)
			}
			// What is left is the cache's one resident key; Close
			// flushes it, and the harness checks that nothing stays.
			if err := ag.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
