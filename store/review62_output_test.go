package store

// Review 62: the CLI's output files (WriteOutput), attacked by another local
// user who can create entries in the output's directory (/tmp, a shared
// work directory): a FIFO or a socket of its own at the path the operator
// names, a hard link to a file it wants overwritten, a file of its own with
// a loose mode.

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

const review62Other = 4242 // another local user, not root and not the caller

// FLAW (failed before the mend): another user's FIFO or unix socket at the output path takes the
// secret. Attacker: any local user who can create a name in the directory
// the operator writes to (`provd unseal --out /tmp/secret`, a shared work
// directory; the kernel's protected_fifos applies to O_CREAT opens only, and
// WriteOutput opens without O_CREAT). The user makes a FIFO (or binds a
// socket) at the predictable path and reads from it. Gain: the unsealed
// secret, an ECDH secret or a wrapped key's plaintext written with mode 0600
// lands in the attacker's reader instead of a private file; the operator
// sees success. WriteOutput refuses another user's symlink for exactly this
// reason, but not another user's FIFO or socket (and the check of a symlink
// is Lstat, then a later Stat/Open that follow links, so a link planted
// between them is followed too). Suggested fix: open a non-regular target
// with O_NOFOLLOW|O_NONBLOCK (O_PATH for a socket), fstat the descriptor,
// and refuse a FIFO, socket or device not owned by the caller or root, as
// for symlinks; dial a socket only after checking its owner (and the peer's
// SO_PEERCRED).
func TestReview62OutputToAnotherUsersFIFOOrSocket(t *testing.T) {
	secret := []byte("review62 unsealed secret")

	t.Run("fifo", func(t *testing.T) {
		dir := t.TempDir()
		p := filepath.Join(dir, "secret")
		if err := syscall.Mkfifo(p, 0o666); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, review62Other, review62Other); err != nil {
			t.Fatal(err)
		}
		// The attacker's reader, waiting (non-blocking open, so the test
		// never hangs whatever WriteOutput does).
		r, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		werr := WriteOutput(p, secret, 0o600, Durable)
		r.SetReadDeadline(time.Now().Add(2 * time.Second))
		got, _ := io.ReadAll(r)
		if bytes.Contains(got, secret) {
			t.Errorf("the secret went to a FIFO owned by uid %d (WriteOutput: %v)", review62Other, werr)
		}
		if !errors.Is(werr, ErrOutput) {
			t.Errorf("WriteOutput to another user's FIFO: %v, want ErrOutput", werr)
		}
	})

	t.Run("socket", func(t *testing.T) {
		dir := t.TempDir()
		p := filepath.Join(dir, "secret")
		l, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if err := os.Chown(p, review62Other, review62Other); err != nil {
			t.Fatal(err)
		}
		got := make(chan []byte, 1)
		go func() {
			c, err := l.Accept()
			if err != nil {
				got <- nil
				return
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			b, _ := io.ReadAll(c)
			got <- b
		}()
		werr := WriteOutput(p, secret, 0o600, Durable)
		if werr == nil {
			select {
			case b := <-got:
				if bytes.Contains(b, secret) {
					t.Errorf("the secret went to a socket owned by uid %d", review62Other)
				}
			case <-time.After(3 * time.Second):
				t.Errorf("WriteOutput succeeded but the listener read nothing within 3s")
			}
		}
		if !errors.Is(werr, ErrOutput) {
			t.Errorf("WriteOutput to another user's socket: %v, want ErrOutput", werr)
		}
	})
}

// Held: an output path that is a hard link to a file the attacker wants
// overwritten (a file of the caller's it cannot write itself, modelled by a
// victim file in the test's directory), or a file of another user's with
// mode 0666, is replaced, never written through: the victim keeps its bytes,
// the path becomes a fresh file of the caller's with exactly the mode asked
// (the umask neither loosens nor tightens it: the mode is set on the
// descriptor before the first byte), one link. Attacker: a local user with
// write access to the output's directory.
func TestReview62OutputReplacesLinksAndForeignFiles(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	secret := []byte("review62 secret")
	for _, tc := range []struct {
		name string
		mode os.FileMode
		mask int
	}{
		{"umask 0, mode 0600", 0o600, 0},
		{"umask 077, mode 0644", 0o644, 0o077},
	} {
		t.Run(tc.name, func(t *testing.T) {
			syscall.Umask(tc.mask)
			dir := t.TempDir()
			victim := filepath.Join(dir, "victim")
			if err := os.WriteFile(victim, []byte("victim bytes"), 0o644); err != nil {
				t.Fatal(err)
			}
			linked := filepath.Join(dir, "linked")
			if err := os.Link(victim, linked); err != nil {
				t.Fatal(err)
			}
			foreign := filepath.Join(dir, "foreign")
			if err := os.WriteFile(foreign, []byte("attacker"), 0o666); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(foreign, 0o666); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(foreign, review62Other, review62Other); err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{linked, foreign} {
				for _, d := range []Durability{Durable, Remakeable} {
					if err := WriteOutput(p, secret, tc.mode, d); err != nil {
						t.Fatalf("%s: %v", p, err)
					}
					fi, err := os.Lstat(p)
					if err != nil {
						t.Fatal(err)
					}
					st := fi.Sys().(*syscall.Stat_t)
					if fi.Mode() != tc.mode || int(st.Uid) != os.Getuid() || st.Nlink != 1 {
						t.Errorf("%s: mode %v uid %d links %d, want %v uid %d links 1", p, fi.Mode(), st.Uid, st.Nlink, tc.mode, os.Getuid())
					}
					if b, _ := os.ReadFile(p); !bytes.Equal(b, secret) {
						t.Errorf("%s holds %q", p, b)
					}
				}
			}
			if b, _ := os.ReadFile(victim); string(b) != "victim bytes" {
				t.Errorf("the hard link's other name was written through: %q", b)
			}
		})
	}
}
