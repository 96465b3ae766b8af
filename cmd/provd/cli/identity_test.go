package cli_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/provd/provd/api"
)

// `provd tpm identity`: exit 15 with nothing to verify the EK with, the
// verified identity with the manufacturer's certificates, and trust on
// first use said in the output.
func TestTPMIdentityCommand(t *testing.T) {
	c := newCLIEnv(t)
	var bundle []byte
	for _, f := range c.swtpm.CABundle {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		bundle = append(bundle, b...)
	}
	ca := filepath.Join(t.TempDir(), "ek-ca.pem")
	if err := os.WriteFile(ca, bundle, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := c.run("tpm", "identity"); code != api.ExitIdentity {
		t.Errorf("without --ek-ca: exit %d (%s), want %d", code, stderr, api.ExitIdentity)
	}
	for _, tc := range []struct {
		args  []string
		trust string
	}{
		{[]string{"--ek-ca", ca}, api.TrustManufacturer},
		{[]string{"--trust-on-first-use"}, api.TrustOnFirstUse},
	} {
		var id api.Identity
		out := c.must(append([]string{"tpm", "identity", "-o", "json"}, tc.args...)...)
		if err := json.Unmarshal([]byte(out), &id); err != nil || id.Trust != tc.trust || id.SRKName == "" {
			t.Errorf("%v: %s (%v)", tc.args, out, err)
		}
	}
	if _, _, code := c.run("tpm", "identity", "--ek-ca", filepath.Join(t.TempDir(), "missing.pem")); code != api.ExitUsage {
		t.Errorf("a missing --ek-ca file: exit %d, want 2", code)
	}
}
