package cli_test

import (
	"strings"
	"testing"
)

// Held: `provd peer identity --help` says what happens to a transfer key
// made before review 74 (replaced by a new one, senders refusing the old
// kind, the old one kept for the keys received under it), and what the
// new one serves (activation, import and load only), as docs/transfer.md
// "Transfer keys made before review 74" does; the command exits 0. Not
// covered in the time: the end-to-end exit codes of peer identity, dup
// export/import and key delete on a device whose state carries a legacy
// transfer key (no helper in this package makes one).
func TestReview82PeerIdentityHelpDescribesTheLegacyTransferKey(t *testing.T) {
	t.Parallel()
	out, stderr, code := run(t, nil, "peer", "identity", "--help")
	if code != 0 {
		t.Fatalf("peer identity --help: exit %d\n%s", code, stderr)
	}
	text := strings.Join(strings.Fields(out+stderr), " ")
	for _, want := range []string{"before review 74", "replaced by a new one", "senders refuse the old kind", "kept for the keys received under it", "importing under it and loading under it"} {
		if !strings.Contains(text, want) {
			t.Errorf("peer identity --help does not say %q:\n%s", want, out)
		}
	}
}
