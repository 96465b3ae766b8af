package server

import (
	"crypto/sha256"
	"net/http"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
)

// A TPM power cut under the idle daemon: it dials again and starts the TPM
// up by itself, and the requests after succeed, cached keys loaded again.
// (A cut with a command in flight fails that one request: the kill test's
// power cuts and tpm's transport tests.)
func TestDaemonSurvivesAPowerCut(t *testing.T) {
	daemonSurvives(t, "power cut", func(ts *tpmServer) { ts.env.PowerCut() })
}

// A TPM reset the daemon's connection survives (TPM_Init on swtpm's control
// channel): the same, with no I/O error to tell the daemon.
func TestDaemonSurvivesAReset(t *testing.T) {
	daemonSurvives(t, "reset", func(ts *tpmServer) { ts.env.Reset() })
}

// swtpm stopped and started again with its volatile state (a VM's TPM
// migrated): the connection breaks, the TPM is not reset; the daemon dials
// again and its loaded keys are still there.
func TestDaemonSurvivesAMigration(t *testing.T) {
	daemonSurvives(t, "migration", func(ts *tpmServer) { ts.env.Migrate() })
}

// A graceful restart under the daemon (TPM2_Shutdown(STATE), swtpm stopped
// and started again), resumed by firmware's TPM2_Startup(STATE) or left for
// the daemon to start up.
func TestDaemonSurvivesAHibernation(t *testing.T) {
	daemonSurvives(t, "hibernation, resumed", func(ts *tpmServer) { ts.env.Hibernate(true) })
	daemonSurvives(t, "hibernation, not resumed", func(ts *tpmServer) { ts.env.Hibernate(false) })
}

func daemonSurvives(t *testing.T, what string, fault func(*tpmServer)) {
	ts := serveTPM(t)
	ts.env.RequireSimulator()
	if code, b := ts.call(t, "POST", "/v1/provision", api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); code != http.StatusOK {
		t.Fatalf("provision: HTTP %d %s", code, b)
	}
	if code, b := ts.call(t, "POST", "/v1/keys/create", api.CreateRequest{Name: "sig", Type: "ecc-p256"}); code != http.StatusOK {
		t.Fatalf("create: HTTP %d %s", code, b)
	}
	d := sha256.Sum256([]byte("m"))
	sign := func() (int, []byte) {
		return ts.call(t, "POST", "/v1/keys/sign", api.SignRequest{Name: "sig", Digest: d[:]})
	}
	if code, b := sign(); code != http.StatusOK {
		t.Fatalf("sign: HTTP %d %s", code, b)
	}
	for cut := range 3 {
		fault(ts)
		// The TPM went away while the daemon was idle: its connection's
		// end is noticed before the next command is written, so not even
		// the first request after the fault fails.
		if code, b := sign(); code != http.StatusOK {
			t.Fatalf("%s %d: the first request after it: HTTP %d %s", what, cut, code, b)
		}
		if code, b := ts.call(t, "POST", "/v1/seal", api.SealRequest{Data: []byte("after the cut")}); code != http.StatusOK {
			t.Fatalf("%s %d: seal: HTTP %d %s", what, cut, code, b)
		}
		if code, b := ts.call(t, "GET", "/v1/audit/verify", nil); code != http.StatusOK {
			t.Fatalf("%s %d: audit verify: HTTP %d %s", what, cut, code, b)
		}
	}
}
