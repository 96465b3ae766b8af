package agent_test

import (
	"context"
	"strings"
	"testing"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/test/swtpmtest"
)

// TestFailedDeliveryNamesAreSafe (found by review): a failed delivery is
// named by its index and its name quoted and cut, so control characters
// and megabyte names from the endpoint reach no terminal or log, and each
// failure keeps its own entry.
func TestFailedDeliveryNamesAreSafe(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: t.TempDir() + "/state"})
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Close()
	if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	evil := "\x1b[2K\rinstalled wifi\nuse them with provd attest secret wifi" + strings.Repeat("A", 64<<10)
	var ds []fleetapi.Delivery
	for i := range 256 {
		ds = append(ds, fleetapi.Delivery{Name: evil + strings.Repeat("x", i)})
	}
	res, err := ag.AttestInstall(ctx, api.AttestInstallRequest{Deliveries: ds})
	if err != nil {
		t.Fatalf("refused whole: %v", err)
	}
	total := 0
	raw := false
	for k, v := range res.Failed {
		total += len(k) + len(v)
		if strings.Contains(k, "\x1b") {
			raw = true
		}
	}
	if raw || len(res.Failed) != len(ds) || total > len(ds)*400 {
		t.Fatalf("failed entries=%d bytes=%d raw escape in a key=%v", len(res.Failed), total, raw)
	}
}
