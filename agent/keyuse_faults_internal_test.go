package agent

// Key uses with the guarded PK load (issue 14; the attacks of its second
// review): the daemon's fresh and applied sessions under honest faults,
// between requests and behind the resource manager's session limit, and
// honest faults never called forged.

import (
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
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

// errLost stands for a connection that broke with the command in flight.
var errLost = errors.New("connection lost (test)")

// signCounter counts the TPM2_Sign commands the TPM answered with success.
func countSigns(next transport.TPM, cmd []byte, n *int) ([]byte, error) {
	rsp, err := next.Send(cmd)
	if err == nil && swtpmtest.CommandCode(cmd) == tpm2.TPMCCSign && len(rsp) >= 10 && binary.BigEndian.Uint32(rsp[6:10]) == 0 {
		*n++
	}
	return rsp, err
}

// Honest faults at every command of a sign: the TPM reset (TPM_Init on the
// control channel) right after the command answered, the TPM power-cut
// after it ran (its answer lost), the TPM migrated after it ran (its answer
// lost, its sessions kept). None is the bus's doing, so none may be called
// forged (exit 15); nothing signs twice; nothing stays loaded that the
// daemon does not hold; and the next sign works. Run in a one-shot process
// (the guarded PK load), a daemon with its session kept and the key and PK
// context dropped (a kept session, the PK loaded from its blob), a daemon
// with nothing kept (the guarded load in the daemon), and a warm daemon.
func TestHonestFaultsInASignAreNotForged(t *testing.T) {
	t.Parallel()
	type mode struct {
		name  string
		agent func(t *testing.T, env *swtpmtest.Env) func() (a *Agent, done func())
	}
	daemonMode := func(coldKey, dropSession bool) func(t *testing.T, env *swtpmtest.Env) func() (*Agent, func()) {
		return func(t *testing.T, env *swtpmtest.Env) func() (*Agent, func()) {
			daemon := keptAgent(t, env)
			return func() (*Agent, func()) {
				if _, err := signK(daemon); err != nil {
					t.Fatalf("warm-up sign: %v", err)
				}
				if coldKey {
					if err := daemon.keys.Drop("k"); err != nil {
						t.Fatal(err)
					}
					daemon.pk = nil
				}
				if dropSession {
					if err := daemon.dropOp(); err != nil {
						t.Fatal(err)
					}
				}
				return daemon, func() {}
			}
		}
	}
	modes := []mode{
		{"oneshot", func(t *testing.T, env *swtpmtest.Env) func() (*Agent, func()) {
			newOneShot := oneShotState(t, env)
			return func() (*Agent, func()) {
				a := newOneShot()
				return a, func() { a.Close() }
			}
		}},
		{"daemon-kept-session-cold-key", daemonMode(true, false)},
		{"daemon-nothing-kept", daemonMode(true, true)},
		{"daemon-warm", daemonMode(false, false)},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			bus := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
			next := m.agent(t, env)
			faults := []struct {
				name string
				at   func(next transport.TPM, cmd []byte, signs *int) ([]byte, error)
			}{
				{"reset-after", func(next transport.TPM, cmd []byte, signs *int) ([]byte, error) {
					rsp, err := countSigns(next, cmd, signs)
					env.Reset()
					return rsp, err
				}},
				{"powercut-after", func(next transport.TPM, cmd []byte, signs *int) ([]byte, error) {
					_, _ = countSigns(next, cmd, signs)
					env.PowerCut()
					return nil, errLost
				}},
				{"migrate-after", func(next transport.TPM, cmd []byte, signs *int) ([]byte, error) {
					_, _ = countSigns(next, cmd, signs)
					env.Migrate()
					return nil, errLost
				}},
			}
			// How many commands a clean sign sends in this mode.
			a, done := next()
			n := 0
			bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) { n++; return nil, nil, false })
			if _, err := signK(a); err != nil {
				t.Fatalf("clean sign: %v", err)
			}
			bus.Set(nil)
			done()
			t.Logf("%d commands", n)
			for _, f := range faults {
				for i := 0; i < n; i++ {
					name := fmt.Sprintf("%s/%d", f.name, i)
					a, done := next()
					daemon := a.keepOp
					c, signs, fired, cc := 0, 0, false, tpm2.TPMCC(0)
					bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
						c++
						if c-1 == i && !fired {
							fired, cc = true, swtpmtest.CommandCode(cmd)
							rsp, err := f.at(next, cmd, &signs)
							return rsp, err, true
						}
						rsp, err := countSigns(next, cmd, &signs)
						return rsp, err, true
					})
					_, err := signK(a)
					bus.Set(nil)
					if errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) == 15 {
						t.Errorf("%s (at %v): an honest fault called forged: %v", name, cc, err)
					}
					if signs > 1 {
						t.Errorf("%s (at %v): %d signatures for one request", name, cc, signs)
					}
					// The next sign works: an honest fault costs one
					// request at most.
					if _, err2 := signK(a); err2 != nil {
						t.Errorf("%s (at %v; the faulted sign: %v): the next sign failed: %v", name, cc, err, err2)
					}
					if daemon {
						if extra := unheldLeft(t, a); len(extra) != 0 {
							t.Errorf("%s (at %v): left in the TPM beyond the daemon's own: %x", name, cc, extra)
							for _, h := range extra {
								_ = env.TPM.Flush(h)
							}
						}
					}
					done()
					if !daemon {
						if left, lerr := env.TPM.Leftovers(); lerr != nil || len(left) != 0 {
							t.Errorf("%s (at %v): left in the TPM: %x %v", name, cc, left, lerr)
							for _, h := range left {
								_ = env.TPM.Flush(h)
							}
						}
					}
					t.Logf("%s (at %v, fired %v): %d signatures, err %v", name, cc, fired, signs, err)
				}
			}
		})
	}
}

// Between two requests of the daemon: a TPM reset the channel does not see,
// a power cut, a migration, a hibernation with and without resume. The
// sign after it works, signs once, and the PK's load (when there is one)
// is never guarded by the session kept from before.
func TestDaemonEventsBetweenRequestsSignOnce(t *testing.T) {
	t.Parallel()
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	a := keptAgent(t, env)
	for _, cold := range []bool{false, true} {
		for _, ev := range []struct {
			name string
			do   func()
		}{
			{"reset", env.Reset},
			{"powercut", env.PowerCut},
			{"migrate", env.Migrate},
			{"hibernate-resume", func() { env.Hibernate(true) }},
			{"hibernate-no-resume", func() { env.Hibernate(false) }},
		} {
			name := fmt.Sprintf("%s/cold=%v", ev.name, cold)
			if _, err := signK(a); err != nil {
				t.Fatalf("%s: warm-up: %v", name, err)
			}
			kept := a.opHandle()
			if cold {
				if err := a.keys.Drop("k"); err != nil {
					t.Fatal(err)
				}
				a.pk = nil
			}
			ev.do()
			signs := 0
			var guards [][]tpm2.TPMHandle
			bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if isPKLoad(cmd) {
					guards = append(guards, swtpmtest.Sessions(cmd, 1))
				}
				rsp, err := countSigns(next, cmd, &signs)
				return rsp, err, true
			})
			_, err := signK(a)
			bus.Set(nil)
			if err != nil {
				t.Errorf("%s: sign: %v", name, err)
			}
			if signs != 1 {
				t.Errorf("%s: %d signatures", name, signs)
			}
			t.Logf("%s: kept %x, PK loads' sessions %x, now kept %x", name, kept, guards, a.opHandle())
			if extra := unheldLeft(t, a); len(extra) != 0 {
				t.Errorf("%s: left beyond the daemon's own: %x", name, extra)
				for _, h := range extra {
					_ = env.TPM.Flush(h)
				}
			}
		}
	}
}

// The daemon behind the resource manager's session limit
// (swtpmtest.SessionLimit: a fourth session fails the device's write, and
// the kernel flushes the connection's every session) through a mix of key
// uses, each cold (the key and the PK's context dropped, so the PK is
// loaded, guarded or beside the kept session) and warm, normal keys
// between extractable ones (their own authValue: their own sessions beside
// the kept one), derived keys (D, CreateLoaded's encryption session), and
// secrets out (HMAC, ECDH, decryption, data encryption). No refusal, no
// failure, nothing loaded beyond what the daemon holds.
func TestDaemonKeyUsesBehindTheSessionLimit(t *testing.T) {
	t.Parallel()
	l := &swtpmtest.SessionLimit{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(l.Wrap))
	a := keptAgent(t, env)
	ctx := context.Background()
	for _, r := range []api.CreateRequest{
		{Name: "xs", Type: "ecc-p256", Extractable: true},
		{Name: "xdh", Type: "ecc-p256", Usage: "ecdh", Extractable: true},
		{Name: "xrsa", Type: "rsa-2048", Usage: "decrypt", Extractable: true},
		{Name: "rsa", Type: "rsa-2048", Usage: "decrypt"},
	} {
		if _, err := a.CreateKey(ctx, r); err != nil {
			t.Fatalf("create %s: %v", r.Name, err)
		}
	}
	for _, r := range []api.DeriveRequest{
		{Name: "mac", Label: "mac", Type: "hmac-sha256"},
		{Name: "aes", Label: "aes", Type: "aes-256"},
		{Name: "dh", Label: "dh", Type: "ecc-p256", Usage: "ecdh"},
	} {
		if _, err := officertest.Derive(t, ctx, a, r); err != nil {
			t.Fatalf("derive %s: %v", r.Name, err)
		}
	}
	peer, _ := ecdh.P256().GenerateKey(rand.Reader)
	d := sha256.Sum256([]byte("x"))
	ctX, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, rsaPubOf(t, a, "xrsa"), []byte("secret"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctR, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, rsaPubOf(t, a, "rsa"), []byte("secret"), nil)
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 8192)
	uses := []struct {
		name, key string
		fn        func() error
	}{
		{"sign k", "k", func() error { _, err := signK(a); return err }},
		{"sign xs", "xs", func() error { _, err := a.Sign(ctx, "xs", d[:], api.SignOptions{}); return err }},
		{"ecdh xdh", "xdh", func() error { _, err := a.ECDH(ctx, "xdh", peer.PublicKey()); return err }},
		{"decrypt xrsa", "xrsa", func() error { _, err := a.Decrypt(ctx, "xrsa", ctX, crypto.SHA256); return err }},
		{"decrypt rsa", "rsa", func() error { _, err := a.Decrypt(ctx, "rsa", ctR, crypto.SHA256); return err }},
		{"hmac mac", "mac", func() error { _, err := a.HMAC(ctx, "mac", []byte("x")); return err }},
		{"hmac mac sequence", "mac", func() error { _, err := a.HMAC(ctx, "mac", big); return err }},
		{"encrypt aes", "aes", func() error {
			e, err := a.EncryptData(ctx, "aes", big)
			if err != nil {
				return err
			}
			_, err = a.DecryptData(ctx, "aes", e)
			return err
		}},
		{"ecdh dh", "dh", func() error { _, err := a.ECDH(ctx, "dh", peer.PublicKey()); return err }},
	}
	l.Take()
	for round, state := range []string{"cold, session kept", "cold, nothing kept", "warm", "cold after sign k"} {
		for _, u := range uses {
			switch state {
			case "cold, session kept", "cold, nothing kept":
				if err := a.keys.Drop(u.key); err != nil {
					t.Fatal(err)
				}
				a.pk = nil
				if state == "cold, nothing kept" {
					if err := a.dropOp(); err != nil {
						t.Fatal(err)
					}
				}
			case "cold after sign k":
				if _, err := signK(a); err != nil {
					t.Fatal(err)
				}
				if err := a.keys.EvictResident(); err != nil {
					t.Fatal(err)
				}
				a.pk = nil
			}
			l.Take()
			err := u.fn()
			refused, cmds := l.Take()
			if err != nil {
				t.Errorf("round %d (%s) %s: %v", round, state, u.name, err)
			}
			if refused > 0 {
				t.Errorf("round %d (%s) %s: %d refusals for want of a slot: %v", round, state, u.name, refused, cmds)
			}
			if extra := unheldLeft(t, a); len(extra) != 0 {
				t.Errorf("round %d (%s) %s: left beyond the daemon's own: %x", round, state, u.name, extra)
				for _, h := range extra {
					_ = env.TPM.Flush(h)
				}
			}
		}
	}
}

// Concurrent requests to the daemon: signs with a normal and an
// extractable key, HMACs with a derived key, and a status (an operation
// that flushes the kept session first) from several goroutines. The agent
// serializes them: every request works, each sign signs once, and nothing
// is left beyond the daemon's own. Run with -race.
func TestDaemonConcurrentKeyUses(t *testing.T) {
	l := &swtpmtest.SessionLimit{}
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(l.Wrap), swtpmtest.WithBus(bus))
	a := keptAgent(t, env)
	ctx := context.Background()
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "xs", Type: "ecc-p256", Extractable: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := officertest.Derive(t, ctx, a, api.DeriveRequest{Name: "mac", Label: "mac", Type: "hmac-sha256"}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	signs := 0
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		rsp, err := countSigns(next, cmd, &signs)
		return rsp, err, true
	})
	l.Take()
	const workers, each = 4, 6
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	requests := 0
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := sha256.Sum256([]byte{byte(w)})
			for i := range each {
				var err error
				switch (w + i) % 4 {
				case 0:
					_, err = a.Sign(ctx, "k", d[:], api.SignOptions{})
				case 1:
					_, err = a.Sign(ctx, "xs", d[:], api.SignOptions{})
				case 2:
					_, err = a.HMAC(ctx, "mac", d[:])
				case 3:
					_, err = a.Status(ctx)
				}
				if err != nil {
					errs <- fmt.Errorf("worker %d request %d: %w", w, i, err)
				}
			}
		}()
		requests += each
	}
	wg.Wait()
	close(errs)
	bus.Set(nil)
	for err := range errs {
		t.Error(err)
	}
	wantSigns := 0
	for w := range workers {
		for i := range each {
			if m := (w + i) % 4; m == 0 || m == 1 {
				wantSigns++
			}
		}
	}
	if signs != wantSigns {
		t.Errorf("%d signatures for %d sign requests", signs, wantSigns)
	}
	if refused, cmds := l.Take(); refused > 0 {
		t.Errorf("%d refusals for want of a slot in %d commands", refused, len(cmds))
	}
	if extra := unheldLeft(t, a); len(extra) != 0 {
		t.Errorf("left beyond the daemon's own: %x", extra)
	}
}
