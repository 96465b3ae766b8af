package tpm

import "time"

// AgeGatedExtend moves g's session start back by d, as if it had started
// that long ago (PrepareGatedExtendAgain's proof-lifetime bound).
func AgeGatedExtend(g *GatedExtend, d time.Duration) { g.started = g.started.Add(-d) }
