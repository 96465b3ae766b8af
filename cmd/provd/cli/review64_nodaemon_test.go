package cli_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/provd/provd/api"
)

// FLAW (a regression of 826592f; failed before the mend): with no daemon running (nothing at --socket, or at the default
// /run/provd/provd.sock on a host without provd.socket), every command
// that would run in-process is refused, exit 5, naming the socket: the
// walk's ENOENT comes back from client.Check wrapped in
// api.ErrNotPermitted, and daemon() (review 63) refuses on that kind.
// Attacker: none; every daemon-less use of the CLI (the documented
// in-process mode, a stopped daemon, CI, first provisioning before
// provd.socket is enabled) is broken. Suggested fix: in dialDaemon wrap
// only trustedpath.ErrUntrusted (and CheckPeer's refusal) in
// api.ErrNotPermitted; a missing path is "nothing answers".
func TestReview64NoDaemonWorksInProcess(t *testing.T) {
	base := t.TempDir()
	sock := filepath.Join(base, "provd.sock") // nothing listens: no daemon
	state := filepath.Join(base, "state")
	_, stderr, code := run(t, nil, "--socket", sock, "--state-dir", state, "status")
	if code == api.ExitNotPermitted || strings.Contains(stderr, "daemon's socket") {
		t.Errorf("status with no daemon at --socket: exit %d, %q; want the in-process run (any exit but the socket's refusal)", code, stderr)
	}
}
