package cli

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/provd/provd/internal/trustedpath"
	"github.com/provd/provd/store"
)

// FLAW (failed before the mend): resolvedStateDir takes fs.ErrPermission from trustedpath.Resolve
// as "a state the caller may not search is none of the caller's" and
// returns the raw --state-dir, unchecked. That reasoning holds for a user
// who is not root, but provd's own units run root WITHOUT any capability
// (systemd/provd.service, provd-attest.service, provd-fw-verify.service:
// User=root, CapabilityBoundingSet=): such a root has no CAP_DAC_OVERRIDE
// or CAP_DAC_READ_SEARCH and gets EACCES on another user's 0700
// directory. Resolve's first step, the lstat of the whole path, then fails
// with EACCES before any Entry check, so a state path that runs through
// another user's directory, which the store refuses (ErrUntrusted, or the
// same EACCES), is handed back as the state directory with no error. The
// owner of that directory makes it 0700 while the command resolves, and
// 0755 with their files in it when it reads or writes: `attest now` reads
// attest.json from there (its endpoint URL and device id), `attest
// enroll` writes attest.json there, pcr read trusts the pinned identity
// found there. Here a capability-less root thread resolves
// base/evil/state (evil: uid 4321, 0700): resolvedStateDir answers the
// raw path and nil while store.MakeStateDir refuses it; then evil becomes
// 0755 with an attest.json of its owner's, which the same thread reads
// through the path it was given. Attacker: the owner of a directory on
// the state path (the threat model's "owner of a directory above the
// state directory"). Gain: the trust walk is skipped entirely for
// provd's own capability-less units; the attestation endpoint and device
// id are the attacker's. Suggested fix: fall back to the raw path only
// for a caller that is not root (os.Geteuid() != 0) and only where the
// command needs no state file; otherwise return the error (or
// trustedpath.ErrUntrusted), and never write through a path not walked.
func TestReview68CaplessRootEACCESSkipsTheWalk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the test runs as root")
	}
	base := t.TempDir()
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	evil := filepath.Join(base, "evil")
	if err := os.Mkdir(evil, 0o700); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(evil, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{evil, state} {
		if err := os.Chown(p, 4321, 4321); err != nil {
			t.Fatal(err)
		}
	}

	type result struct {
		dir           string
		err, storeErr error
		read          []byte
		readErr       error
	}
	flip := make(chan struct{})
	flipped := make(chan struct{})
	done := make(chan result)
	go func() {
		// This thread only: root without a capability, as the units run
		// provd. The thread is never unlocked, so it dies with the
		// goroutine and no other test runs on it.
		runtime.LockOSThread()
		var r result
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			r.err = err
			close(flip)
			<-flipped
			done <- r
			return
		}
		a := &app{stateDir: state}
		r.dir, r.err = a.resolvedStateDir()
		_, r.storeErr = store.MakeStateDir(state)
		close(flip)
		<-flipped
		if r.err == nil {
			r.read, r.readErr = os.ReadFile(filepath.Join(r.dir, attestStateFile))
		}
		done <- r
	}()
	<-flip
	// The owner of evil, after the check: searchable, with their file.
	if err := os.Chmod(evil, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(state, 0o755); err != nil {
		t.Fatal(err)
	}
	planted := []byte(`{"endpoint":"https://attacker.example","device_id":"theirs"}` + "\n")
	if err := os.WriteFile(filepath.Join(state, attestStateFile), planted, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(state, attestStateFile), 4321, 4321); err != nil {
		t.Fatal(err)
	}
	close(flipped)
	r := <-done
	t.Logf("capless root: resolvedStateDir = %q, %v; store.MakeStateDir: %v; then read %s: %q, %v",
		r.dir, r.err, r.storeErr, attestStateFile, r.read, r.readErr)
	if r.storeErr == nil {
		t.Errorf("store.MakeStateDir accepted a state under another user's directory")
	}
	if r.err == nil {
		t.Errorf("resolvedStateDir, as root without capabilities, returned %q unchecked for a state under uid 4321's directory (the store refuses it: %v); the command then reads %q from there", r.dir, r.storeErr, r.read)
	} else if !errors.Is(r.err, trustedpath.ErrUntrusted) {
		t.Logf("refused: %v", r.err)
	}
}
