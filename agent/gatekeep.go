package agent

import (
	"bytes"
	"errors"
	"log/slog"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/tpm"
)

// gateKeep keeps a new trail's audit gate key loaded, and the policy
// session of its first record's extend, for the record that follows it in
// the same Agent.record (ensureGated turns it on; record drops it): that
// record proves the gate again in the same session (
// tpm.TPM.PrepareGatedExtendAgain), where it loaded the gate, started a
// policy session and flushed both again (issue 14: 4 commands fewer for
// provision, whose record follows its new anchor's first).
//
// Nothing is kept across operations or generations of the TPM: each is
// taken only in the generation it was loaded or made in, and drop forgets
// (and asks the sweep for) what a reset, power cut or migration may have
// taken or moved, rather than flush a number another object may hold, on
// a TPM provd has to itself (tpm.TPM.ForgetsStale).
// The kept session holds no proof once its extend is made (the TPM reset
// its policy); the next proof is bound to that record's extend by
// cpHashA, as in a session of its own.
type gateKeep struct {
	on      bool
	gate    *tpm.Gate
	gateGen uint64
	ge      *tpm.GatedExtend
}

// loaded is the kept gate if it is g's, loaded in this generation. A nil
// gateKeep keeps nothing.
func (k *gateKeep) loaded(t *tpm.TPM, g *gateRecord) *tpm.Gate {
	if k == nil || !k.on || k.gate == nil || k.gateGen != t.Generation() {
		return nil
	}
	if want, err := g.name(); err != nil || !bytes.Equal(want, k.gate.Name.Buffer) {
		return nil
	}
	return k.gate
}

// keep keeps gk, loaded in generation gen (read before its load: a
// generation read after it may be one a power cut since has moved, found
// by review), if keeping is on and no gate is kept.
func (k *gateKeep) keep(gk tpm.Gate, gen uint64) bool {
	if k == nil || !k.on || k.gate != nil {
		return false
	}
	k.gate, k.gateGen = &gk, gen
	return true
}

// release is the release of ge's record: ge is kept when its extend was
// made and keeping is on, closed otherwise. It goes on only in the
// generation its session started in (PrepareGatedExtendAgain).
func (k *gateKeep) release(ge *tpm.GatedExtend) func() error {
	return func() error {
		if k != nil && k.on && ge.Done() && k.ge == nil {
			k.ge = ge
			return nil
		}
		return ge.Close()
	}
}

// again prepares the extend of x with head in the kept session with gk,
// the trail's gate (kept loaded, or persistent: withGate)
// (tpm.TPM.PrepareGatedExtendAgain); ok false when there is no session
// to go on with: the caller prepares anew. The kept session is taken
// either way; one that cannot go on is closed (forgotten or flushed as its
// generation says), and a failed flush of it only asks for the sweep, as
// drop's does: the record does not fail for it.
func (k *gateKeep) again(t *tpm.TPM, gk tpm.Gate, x tpm.NVIndex, head []byte) (*tpm.GatedExtend, bool, error) {
	if k == nil || k.ge == nil {
		return nil, false, nil
	}
	prev := k.ge
	k.ge = nil
	if ge, ok, err := t.PrepareGatedExtendAgain(prev, x, gk, head); ok {
		return ge, true, err
	}
	if err := prev.Close(); err != nil {
		t.Unheld()
	}
	return nil, false, nil
}

// handles are the kept gate's and session's handles (the sweep leaves them).
func (k *gateKeep) handles() []tpm2.TPMHandle {
	var hs []tpm2.TPMHandle
	if k.gate != nil {
		hs = append(hs, k.gate.Handle)
	}
	if k.ge != nil {
		hs = append(hs, k.ge.Handle())
	}
	return hs
}

// drop ends keeping: the kept session and gate are flushed, or forgotten
// (the sweep asked for) where ForgetsStale says. A failed flush
// is logged: the record is written, and the sweep takes what is left.
func (k *gateKeep) drop(t *tpm.TPM, log *slog.Logger) {
	var err error
	if k.ge != nil {
		err = k.ge.Close() // forgotten or flushed as its generation says
	}
	if k.gate != nil {
		if t.ForgetsStale(k.gateGen) {
			t.Unheld()
		} else {
			err = errors.Join(err, t.Flush(k.gate.Handle))
		}
	}
	if err != nil {
		t.Unheld()
		log.Debug("flush of the kept audit gate failed", "err", err)
	}
	*k = gateKeep{}
}
