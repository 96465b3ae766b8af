package tpm

// Review 9's views into a policy session's secret (the authValue a spare
// was keyed with), for tpm_test.

// PolicySessionAuth is p's own copy of the authValue it is keyed with
// (the slice itself: what Close and asGate clear).
func PolicySessionAuth(p *PolicySession) []byte { return p.auth }

// GatedExtendAuth is the authValue g's session keys its auth role with,
// in its own copy and in its keyed session (nil when it has none), and
// the direction it encrypts in.
func GatedExtendAuth(g *GatedExtend) (own, keyed []byte, dir Direction) {
	if g.s.keyed != nil {
		keyed, dir = g.s.keyed.auth, g.s.keyed.dir
	}
	return g.s.auth, keyed, dir
}
