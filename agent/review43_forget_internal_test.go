package agent

// Review 43: forgetStatePK's a.keys.Close() (c7a1802) inside the refused
// operation.
//
// HELD: TestReview43ForgetStatePKFlushesOnlyTheCaches.
// Attack (another local process on the same TPM, its handles not
// virtualized: review8Wire, the daemon opened with ResourceManager, so
// no sweep): a warm daemon O ("k" resident, the PK's context kept) runs an
// operation whose commit is refused (updateUnderPK / updatePinned):
// key create across a zeroize (the state wiped before TPM2_Create), key
// create across a provision --force (before the kept PK's
// TPM2_ContextLoad), and attest identity's AK creation across a zeroize
// (updatePinned; lock's Trim(1) leaves "k" resident there, so Close
// flushes a loaded key). Right after the first successful TPM2_FlushContext
// of a transient object once the state changed, the other process loads an
// object of its own (TPM2_CreatePrimary on its connection), which the TPM
// gives the lowest free handle: the one just flushed. Expected: the
// refused operation flushes no handle twice, so the other's object
// survives with its name; no transient object or session is left held by
// nobody (review42Leftovers, once the other's object is flushed); O's
// cache is empty. Observed: as expected in every mode: every path that
// commits through updateUnderPK either evicted the cache first
// (EvictResident in createKey, importKEK, derive, import, the transfer)
// or holds its own objects outside the cache (l.pk, D, the new key: each
// flushed once by its owner), and a key the cache holds resident
// (attest identity after Trim(1)) is used by nothing else in the
// operation; Close flushes it once and forgets it. The other's object
// took the number just flushed in both key creates (the PK's), a free
// lower number in attest identity (after Close flushed "k"), and survived
// each time; O never flushed it. Aside (not c7a1802's): in the provision
// --force mode the other process's provision flushes the sessions it
// lists, O's included (no virtualization on this wire), and O's own flush
// of that session number then answers TPM_RC_HANDLE: behind a real
// /dev/tpmrm0 the numbers are per connection.
import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

func TestReview43ForgetStatePKFlushesOnlyTheCaches(t *testing.T) {
	t.Parallel()
	type mode struct {
		name    string
		trigger tpm2.TPMCC
		force   bool
		op      func(ctx context.Context, o *Agent) error
	}
	create := func(ctx context.Context, o *Agent) error {
		_, err := o.CreateKey(ctx, review41KeyReq("k2"))
		return err
	}
	modes := []mode{
		{"create-zeroize", tpm2.TPMCCCreate, false, create},
		{"create-provision-force", tpm2.TPMCCContextLoad, true, create},
		{"attest-identity-zeroize", tpm2.TPMCCCreate, false, func(ctx context.Context, o *Agent) error {
			_, err := o.AttestIdentity(ctx)
			return err
		}},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			ctx := context.Background()
			env, bz, o, w, dir := review41Daemon(t)
			ptp, _ := review8Client(t, w)
			resident := o.keys.Handles()
			changed, loaded := false, false
			var other tpm2.TPMHandle
			var otherName tpm2.TPM2BName
			var afterOther []tpm2.TPMHandle
			bz.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				cc := swtpmtest.CommandCode(cmd)
				if !changed && cc == m.trigger {
					changed = true
					if m.force {
						p, err := New(Config{TPM: ptp, StateDir: dir})
						if err != nil {
							t.Errorf("the other process: %v", err)
							return nil, nil, false
						}
						req := review8Req()
						req.Force = true
						if _, err := p.Provision(ctx, req); err != nil {
							t.Errorf("the other process's provision --force: %v", err)
						}
						p.Close()
					} else {
						review40Wipe(t, dir, next, false)
					}
					return nil, nil, false
				}
				if cc != tpm2.TPMCCFlushContext || len(cmd) < 14 {
					return nil, nil, false
				}
				h := tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14]))
				if loaded && h == other {
					afterOther = append(afterOther, h)
				}
				rsp, err := next.Send(cmd)
				rc := uint32(0xffffffff)
				if err == nil && len(rsp) >= 10 {
					rc = binary.BigEndian.Uint32(rsp[6:10])
				}
				t.Logf("FlushContext 0x%08x: rc 0x%x (state changed %v)", uint32(h), rc, changed)
				if changed && !loaded && rc == 0 && h>>24 == 0x80 {
					loaded = true
					rp, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.RSASRKTemplate)}).Execute(w)
					if err != nil {
						t.Errorf("the other process's load: %v", err)
					} else {
						other, otherName = rp.ObjectHandle, rp.Name
						t.Logf("the other process loaded 0x%08x (the number just flushed: %v)", uint32(other), other == h)
					}
				}
				return rsp, err, true
			})
			err := m.op(ctx, o)
			bz.Set(nil)
			if !changed {
				t.Fatalf("not mounted (%v)", err)
			}
			t.Logf("%s: %v (resident before %x; cache now %q, %d resident)", m.name, err, resident, o.keys.Names(), o.keys.Resident())
			if err == nil {
				t.Errorf("not refused")
			}
			if !loaded {
				t.Logf("no transient flush after the change: nothing to race")
			} else {
				rp, rerr := (tpm2.ReadPublic{ObjectHandle: other}).Execute(w)
				if rerr != nil || string(rp.Name.Buffer) != string(otherName.Buffer) {
					t.Errorf("the other process's object 0x%08x is gone or replaced after O's refused %s: %v (O flushed it %d times)", uint32(other), m.name, rerr, len(afterOther))
				}
				if len(afterOther) > 0 {
					t.Errorf("O flushed 0x%08x (the other's object) %d times after the refusal", uint32(other), len(afterOther))
				}
				if _, err := (tpm2.FlushContext{FlushHandle: other}).Execute(w); err != nil {
					t.Errorf("the other's flush of its own object: %v", err)
				}
			}
			if len(o.keys.Names()) != 0 || o.pk != nil {
				t.Errorf("after the refusal O keeps cache entries %q / a PK context %v", o.keys.Names(), o.pk != nil)
			}
			_ = tpm.SRKHandle
			review42Leftovers(t, env, o, m.name)
		})
	}
}
