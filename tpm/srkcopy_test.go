package tpm_test

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// transientLoaded reports whether h is among the TPM's transient objects.
func transientLoaded(t *testing.T, tp *tpm.TPM, h tpm2.TPMHandle) bool {
	t.Helper()
	hs, err := tp.Handles(tpm.TransientHandles)
	if err != nil {
		t.Fatal(err)
	}
	return slices.Contains(hs, h)
}

// After TransientSRKOnly, SRK never persists a missing SRK (found by
// review 30: zeroize --srk evicted it, and a role-less caller's refused
// request, or the officer's reanchor, persisted it again): where
// 0x81000001 is empty it makes a transient copy, the same key, which
// DropTransientSRK flushes; a flush of it, or a TPM reset, makes SRK
// forget it (never flushed by its number again); PersistSRK persists the
// copy it holds with one EvictControl, no CreatePrimary; a copy whose name
// is not the pinned SRK's is refused and flushed.
func TestTransientSRKCopy(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	env.RequireSimulator()
	tp := env.TPM
	if _, err := tp.ReadPublic(tpm.SRKHandle); !errors.Is(err, tpm.ErrNotFound) {
		t.Fatalf("not mounted: a fresh TPM with an SRK (%v)", err)
	}
	tp.TransientSRKOnly()
	var log swtpmtest.CommandLog
	b.Set(log.Hook)
	log.Start()
	sent := func() []tpm2.TPMCC { cc := log.Stop(); log.Start(); return cc }

	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	if srk.Handle>>24 != 0x80 || tp.TransientSRK() != srk.Handle || !transientLoaded(t, tp, srk.Handle) {
		t.Fatalf("SRK where 0x81000001 is empty: handle 0x%08x (held 0x%08x), want a transient copy", uint32(srk.Handle), uint32(tp.TransientSRK()))
	}
	if _, err := tp.ReadPublic(tpm.SRKHandle); !errors.Is(err, tpm.ErrNotFound) {
		t.Fatalf("SRK persisted the SRK after TransientSRKOnly (%v)", err)
	}
	if cc := sent(); slices.Contains(cc, tpm2.TPMCCEvictControl) {
		t.Errorf("SRK sent TPM2_EvictControl: %v", cc)
	}
	if _, err := tp.SRK(); err != nil || len(sent()) != 0 {
		t.Errorf("the held copy: %v, or commands sent for it", err)
	}

	// Dropped: flushed, forgotten.
	if err := tp.DropTransientSRK(); err != nil {
		t.Fatal(err)
	}
	if tp.TransientSRK() != 0 || transientLoaded(t, tp, srk.Handle) {
		t.Errorf("DropTransientSRK left the copy 0x%08x", uint32(srk.Handle))
	}

	// Flushed by its handle (zeroize's flush of every transient handle,
	// a sweep): the next SRK makes another.
	srk, err = tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.Flush(srk.Handle); err != nil {
		t.Fatal(err)
	}
	sent()
	again, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	if cc := sent(); !slices.Contains(cc, tpm2.TPMCCCreatePrimary) || !transientLoaded(t, tp, again.Handle) {
		t.Errorf("after a flush of the copy, SRK sent %v (copy 0x%08x loaded %v), want a new copy", cc, uint32(again.Handle), transientLoaded(t, tp, again.Handle))
	}

	// A TPM reset: the copy is gone, and its number is never flushed
	// (another object may hold it).
	env.Reset()
	if _, err := tp.Handles(tpm.TransientHandles); err != nil { // provd sees the reset
		t.Fatal(err)
	}
	sent()
	fresh, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	cc := sent()
	if slices.Contains(cc, tpm2.TPMCCFlushContext) || !slices.Contains(cc, tpm2.TPMCCCreatePrimary) || !transientLoaded(t, tp, fresh.Handle) {
		t.Errorf("after a TPM reset, SRK sent %v, want a new copy and no flush", cc)
	}

	// PersistSRK persists the held copy: EvictControl and the copy's
	// flush, no new CreatePrimary.
	p, err := tp.PersistSRK()
	if err != nil {
		t.Fatal(err)
	}
	cc = sent()
	if p.Handle != tpm.SRKHandle || !bytes.Equal(p.Name.Buffer, fresh.Name.Buffer) || slices.Contains(cc, tpm2.TPMCCCreatePrimary) || !slices.Contains(cc, tpm2.TPMCCEvictControl) {
		t.Errorf("PersistSRK: handle 0x%08x, sent %v", uint32(p.Handle), cc)
	}
	if tp.TransientSRK() != 0 || transientLoaded(t, tp, fresh.Handle) {
		t.Errorf("PersistSRK left the copy loaded")
	}
	if obj, err := tp.ReadPublic(tpm.SRKHandle); err != nil || !bytes.Equal(obj.Name.Buffer, p.Name.Buffer) {
		t.Fatalf("PersistSRK: 0x81000001 holds %v (%v)", obj.Name, err)
	}

	// Pinned: the copy carries the pinned public; a pin the owner
	// hierarchy does not give is refused, nothing left loaded.
	if err := tp.EvictSRK(); err != nil {
		t.Fatal(err)
	}
	if err := tp.PinSRK(p.Public); err != nil {
		t.Fatal(err)
	}
	pinned, err := tp.SRK()
	if err != nil || !bytes.Equal(pinned.Name.Buffer, p.Name.Buffer) || pinned.Handle == tpm.SRKHandle {
		t.Fatalf("a pinned SRK's copy: %+v, %v", pinned.Handle, err)
	}
	if err := tp.DropTransientSRK(); err != nil {
		t.Fatal(err)
	}
	other := p.Public
	other.NameAlg = tpm2.TPMAlgSHA384
	if err := tp.PinSRK(other); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.SRK(); !errors.Is(err, tpm.ErrIdentityMismatch) {
		t.Errorf("a pin the owner hierarchy does not give: %v, want ErrIdentityMismatch", err)
	}
	if hs, err := tp.Handles(tpm.TransientHandles); err != nil || len(hs) != 0 {
		t.Errorf("left loaded: %v (%v)", hs, err)
	}
	if _, err := tp.ReadPublic(tpm.SRKHandle); !errors.Is(err, tpm.ErrNotFound) {
		t.Errorf("the refused copy was persisted (%v)", err)
	}
}

// A persistent SRK the connection cached and another program evicted
// behind it (found by review 35: a running daemon failed every salted
// request until restarted): the command that names it and meets
// TPM_RC_HANDLE is sent once more, naming the SRK as SRK would make it in
// a new process (a transient copy after TransientSRKOnly, persisted
// otherwise); a TPM_RC_HANDLE forged by A1 while the SRK is there is
// ErrResponseForged, nothing sent again (A1 gets no command run twice),
// the sweep asked for.
func TestEvictedBehindTheConnection(t *testing.T) {
	for _, c := range []struct{ transientOnly, persistNow bool }{{true, false}, {false, false}, {true, true}} {
		transientOnly := c.transientOnly
		persisting := !c.transientOnly || c.persistNow
		t.Run(fmt.Sprintf("transient only %v, PersistMissingSRK %v", c.transientOnly, c.persistNow), func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			tp := env.TPM
			srk, err := tp.SRK() // persisted: the default mode
			if err != nil {
				t.Fatal(err)
			}
			if err := tp.PinSRK(srk.Public); err != nil {
				t.Fatal(err)
			}
			if transientOnly {
				tp.TransientSRKOnly()
			}
			tp.PersistMissingSRK(c.persistNow)
			if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
				t.Fatal(err)
			}
			if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: srk.Named(), PersistentHandle: tpm.SRKHandle}).Execute(b.Next); err != nil {
				t.Fatal(err)
			}
			if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
				t.Fatalf("an authenticated read after the SRK was evicted behind the connection: %v", err)
			}
			_, err = tp.ReadPublic(tpm.SRKHandle)
			if persisted := err == nil; persisted != persisting {
				t.Errorf("after the read: SRK persisted %v, want %v", persisted, persisting)
			}
			// Reported to the one who turns PersistMissingSRK off, once
			// (the agent checks the state then: evictSRKUnowed).
			if got := tp.PersistMissingSRK(false); got != c.persistNow {
				t.Errorf("PersistMissingSRK(false) says persisted %v, want %v", got, c.persistNow)
			}
			if tp.PersistMissingSRK(false) {
				t.Errorf("PersistMissingSRK(false) says persisted twice")
			}
			if err := tp.DropTransientSRK(); err != nil {
				t.Fatal(err)
			}
			if hs, err := tp.Handles(tpm.TransientHandles); err != nil || len(hs) != 0 {
				t.Errorf("left loaded: %v (%v)", hs, err)
			}

			// A1 forging TPM_RC_HANDLE for the SRK once, with the SRK there.
			if _, err := tp.PersistSRK(); err != nil {
				t.Fatal(err)
			}
			sent := 0
			b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if swtpmtest.CommandCode(cmd) != tpm2.TPMCCStartAuthSession {
					return nil, nil, false
				}
				sent++
				if sent == 1 {
					return swtpmtest.ErrorAnswer(tpm2.TPMRCHandle + 0x100), nil, true
				}
				return nil, nil, false
			})
			_, err = tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7})
			b.Set(nil)
			if !errors.Is(err, tpm.ErrResponseForged) || sent != 1 || !tp.NeedsSweep() {
				t.Errorf("a forged TPM_RC_HANDLE for the SRK: %v, StartAuthSession sent %d times, sweep asked %v; want forged, once, true", err, sent, tp.NeedsSweep())
			}
			if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
				t.Errorf("the next read after a forged TPM_RC_HANDLE: %v", err)
			}
			if _, err := tp.ReadPublic(tpm.SRKHandle); err != nil {
				t.Errorf("the SRK after a forged TPM_RC_HANDLE: %v", err)
			}
		})
	}
}
