package tpm

import (
	"time"

	"github.com/google/go-tpm/tpm2"
)

// AgeGatedExtend moves g's session start back by d, as if it had started
// that long ago (PrepareGatedExtendAgain's proof-lifetime bound).
func AgeGatedExtend(g *GatedExtend, d time.Duration) { AgePolicySession(g.s, d) }

// AgePolicySession moves p's start back by d, as if it had started that
// long ago (Spare's proof-lifetime bound).
func AgePolicySession(p *PolicySession, d time.Duration) { p.started = p.started.Add(-d) }

// SpareHandle is the handle of the operation's spare, 0 when none is kept.
func SpareHandle(t *TPM) tpm2.TPMHandle { return t.spareHandle() }
