package audit

import (
	"testing"
)

const review68Child = "PROVD_REVIEW68_SPARSE_OPEN"

// FLAW (failed before the mend): review 67 bounded the audit trail's whole reads (readLog,
// MaxLogSize 1 GiB) and safefile's preallocation, but Open, the read every
// audited process makes of the log at start (agent.New, provd serve, every
// audited one-shot command), goes through openVerified's readAll, which
// still does make([]byte, fi.Size()) before a byte is read, with no bound
// at all. The same sparse 64 GiB audit.log review 67 planted (A6: a
// restored copy of the state, tar --sparse keeps it in a few bytes; A4
// with truncate(1)) still makes every start ask the runtime for 64 GiB at
// once: "fatal error: runtime: out of memory", unrecoverable, where Verify
// now answers "tampered". Here the child runs with an 8 GiB address-space
// limit. Attacker: A6, A4. Gain: the daemon and every audited command die
// at start, for good, instead of refusing the log by name. Suggested fix:
// readAll bounded by MaxLogSize (stat first, refuse as tampered before
// allocating), or verify the log streaming, line by line.
func TestReview68SparseAuditLogKillsOpen(t *testing.T) {
	sparseLogChild(t, review68Child, "TestReview68SparseAuditLogKillsOpen", "audit.Open", func(p string) error {
		l, err := Open(p, Options{Anchor: emptyAnchor{}})
		if l != nil {
			l.Close()
		}
		return err
	})
}
