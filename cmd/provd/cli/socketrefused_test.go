package cli_test

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provd/provd/api"
)

// A socket at the daemon's path that is not provd's to use (another
// user's) is named in a refusal, exit 5, and nothing runs in-process
// beside it (review 63: the CLI went in-process without a word, and a
// user without the state's rights saw only the state directory's error).
func TestAnotherUsersSocketIsRefusedByName(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "provd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := os.Chown(sock, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "state")
	_, stderr, code := run(t, nil, "--socket", sock, "--state-dir", state, "status")
	if code != api.ExitNotPermitted || !strings.Contains(stderr, sock) || !strings.Contains(stderr, "uid 4242") {
		t.Errorf("status with another user's socket at --socket: exit %d, %q; want %d naming the socket and its owner", code, stderr, api.ExitNotPermitted)
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("the state directory was made beside the refused socket: %v", err)
	}
}
