package agent

// Review 41: tpm.PersistSRKAgain in provision's commit (agent/provision.go,
// under the store's lock).
//
// HELD: TestReview41CommitForgedEmptySRK.
// Attack (bus interposer, A1): the commit's TPM2_ReadPublic of 0x81000001
// is the bus's word. A1 answers every ReadPublic of the SRK sent while
// the store's lock is held (the commit; the test sees the flock taken)
// with TPM_RC_HANDLE (empty), in a one-shot process and in a daemon
// (KeepSession), plain and with --force over a provisioned state. Wanted:
// provd persists nothing but the pinned SRK, leaves no handle loaded that
// it does not hold, does not hang (srkMu is held across the ReadPublic and
// the pinned SRK's CreatePrimary and EvictControl: none of them is a
// command srkAgain takes, tpm.srkGone), keeps the SRK at 0x81000001 with
// the pinned name, and commits nothing when it fails; a provision again
// with A1 gone succeeds. Observed: the forged "empty" makes provd create
// the SRK again (the pinned name is checked) and send TPM2_EvictControl,
// which the real TPM refuses (0x81000001 is taken): provision fails at its
// commit with nothing committed (for --force: the old state was zeroized
// first, as any failure after provision --force's zeroize leaves it,
// docs), the SRK stays, nothing is left loaded, and the next provision
// works. A1 gains a refusal it could have forged anyway.
//
// HELD: TestReview41CommitForgedEmptyOnceOnly.
// A1 forges only the first ReadPublic of the commit: pinnedSRK reads the
// handle again (the real TPM: there, the pinned name) and persists
// nothing; provision succeeds, one ReadPublic more.
import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review41StoreLocked reports whether some transaction holds the store
// lock of dir (a flock of its own on the lock file would block).
func review41StoreLocked(dir string) bool {
	f, err := os.OpenFile(filepath.Join(dir, store.LockFile), os.O_RDWR, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return errors.Is(err, syscall.EWOULDBLOCK)
	}
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}

// review41IsSRKRead says whether cmd is TPM2_ReadPublic(0x81000001).
func review41IsSRKRead(cmd []byte) bool {
	return swtpmtest.CommandCode(cmd) == tpm2.TPMCCReadPublic && review8IsReadPublicOf(cmd, tpm.SRKHandle)
}

// review41SRKName is the name of what 0x81000001 holds (the real TPM), or
// nil.
func review41SRKName(env *swtpmtest.Env) []byte {
	o, err := env.TPM.ReadPublic(tpm.SRKHandle)
	if err != nil {
		return nil
	}
	return o.Name.Buffer
}

func TestReview41CommitForgedEmptySRK(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name          string
		daemon, force bool
	}{{"one-shot", false, false}, {"daemon", true, false}, {"one-shot-force", false, true}, {"daemon-force", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			s := &review32Steps{t: t, env: env, b: b, dir: t.TempDir() + "/state", daemon: tc.daemon}
			s.open()
			req := review8Req()
			if tc.force {
				if _, err := s.a.Provision(ctx, req); err != nil {
					t.Fatal(err)
				}
				req.Force = true
			}
			forged, evicts := 0, 0
			b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if !review41StoreLocked(s.dir) {
					return nil, nil, false
				}
				if swtpmtest.CommandCode(cmd) == tpm2.TPMCCEvictControl {
					evicts++
				}
				if review41IsSRKRead(cmd) {
					forged++
					return swtpmtest.ErrorAnswer(tpm2.TPMRCHandle + 0x100), nil, true
				}
				return nil, nil, false
			})
			done := make(chan error, 1)
			go func() {
				_, err := s.a.Provision(ctx, req)
				done <- err
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(90 * time.Second):
				t.Fatal("provision hangs with the commit's ReadPublic forged (srkMu deadlock?)")
			}
			b.Set(nil)
			t.Logf("provision with every SRK ReadPublic under the store lock forged empty: %v (forged %d, EvictControl under the lock %d)", err, forged, evicts)
			if forged == 0 {
				t.Fatalf("not mounted: no ReadPublic of the SRK under the store lock (%v)", err)
			}
			if got, pin := review41SRKName(env), s.a.t.PinnedSRKName(); len(pin) == 0 || string(got) != string(pin) {
				t.Errorf("0x81000001 holds %x after the forged commit read, the pinned SRK is %x", got, pin)
			}
			review32Unheld(t, env, s.a, "provision with the commit's SRK read forged")
			if err != nil && review40Provisioned(t, s.dir) && !tc.force {
				t.Errorf("provision failed (%v) but the state reads as provisioned", err)
			}
			if err == nil && !review40Provisioned(t, s.dir) {
				t.Errorf("provision succeeded but the state is not provisioned")
			}
			// A1 gone: a provision again works.
			req.Force = review40Provisioned(t, s.dir)
			if _, err := s.a.Provision(ctx, req); err != nil {
				t.Errorf("provision again, A1 gone: %v", err)
			}
			review32Unheld(t, env, s.a, "provision again")
			if !review26SRKThere(env) {
				t.Errorf("provisioned, and 0x81000001 is empty")
			}
		})
	}
}

func TestReview41CommitForgedEmptyOnceOnly(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	dir := t.TempDir() + "/state"
	a := review8Agent(t, env.TPM, dir)
	forged, reads := false, 0
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if !review41StoreLocked(dir) || !review41IsSRKRead(cmd) {
			return nil, nil, false
		}
		reads++
		if forged {
			return nil, nil, false
		}
		forged = true
		return swtpmtest.ErrorAnswer(tpm2.TPMRCHandle + 0x100), nil, true
	})
	_, err := a.Provision(ctx, review8Req())
	b.Set(nil)
	t.Logf("provision with the commit's first SRK read forged empty: %v (SRK reads under the lock: %d)", err, reads)
	if !forged {
		t.Fatalf("not mounted (%v)", err)
	}
	if err != nil {
		t.Errorf("provision with one forged SRK read: %v", err)
	}
	if !review26SRKThere(env) || !review40Provisioned(t, dir) {
		t.Errorf("SRK there %v, provisioned %v", review26SRKThere(env), review40Provisioned(t, dir))
	}
	review32Unheld(t, env, a, "provision")
}
