package agent_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// A daemon caller's duplicate, moved PK, challenge and peer file are held
// to the file readers' rule (api's Check methods): a field that is not hex
// is bad input naming the field, never its text, before the TPM is asked
// (the CLI's parsers had the rule, the daemon's requests did not: review
// 57's reading).
func TestDaemonRequestsHexFields(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag := signingAgent(t, env)
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256", Extractable: true}); err != nil {
		t.Fatal(err)
	}
	const evil = "\x1b[1A\x1b[2K\radopted"
	dup := api.DupFile{Format: api.DupFormat, ParentName: evil}
	pk := api.DupFile{Format: api.DupFormat, Type: api.DupTypePK, PKPolicy: evil}
	peer := api.PeerIdentity{Format: api.PeerFormat, Officer: evil}
	_, e1 := ag.DupImport(ctx, api.DupImportRequest{Name: "k2", Dup: dup})
	_, e2 := ag.ProvisionFrom(ctx, api.PKAdoptRequest{Dup: pk, Force: true})
	_, e3 := ag.PeerProve(ctx, api.PeerChallenge{Format: api.ChallengeFormat, Commitment: evil})
	_, e4 := ag.DupExport(ctx, api.DupExportRequest{Name: "k", Peer: peer})
	for what, err := range map[string]error{"dup import": e1, "provision --from": e2, "peer prove": e3, "dup export": e4} {
		if !errors.Is(err, api.ErrBadInput) || !strings.Contains(err.Error(), "is not hex") || strings.Contains(err.Error(), "adopted") {
			t.Errorf("%s with a field of control characters: %v, want bad input naming the field only", what, err)
		}
	}
}
