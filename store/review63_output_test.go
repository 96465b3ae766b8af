package store

// Review 63: WriteOutput after review 62's mend (a FIFO, socket or
// character device is written to only when the caller or root owns it),
// attacked for the legitimate outputs it should still take: the standard
// output a shell gives the command as /dev/stdout, /dev/fd/N or
// /proc/self/fd/N (a pipe, a process substitution >(...)), and the same
// under sudo, where the pipe belongs to the invoking user.

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

const review63Other = 4242 // another local user, not root and not the caller

// FLAW (failed before the mend): an output path that names a descriptor the command already holds
// (/dev/stdout, /dev/fd/N, /proc/self/fd/N) fails when that descriptor is
// a pipe: `provd unseal --out /dev/stdout | consumer`, `--out >(gpg -e)`
// (bash hands /dev/fd/63). outputTarget follows /proc/self/fd/N's link,
// whose text is "pipe:[12345]", as a relative path and writes to
// "/proc/self/fd/pipe:[12345]": ENOENT, the command fails. The README
// promises "a character device, FIFO or unix socket of yours or root's
// that is already there is written to", the code's own comment names
// /dev/stdout and "a pipe". Under sudo it fails a second way: the pipe the
// invoking user's shell made is that user's (review 62's owner check),
// though the descriptor was handed to this process by its invoker and no
// one planted it. And a descriptor opened for append (`--out /dev/stdout
// >> keys.pem`) has its file replaced by a fresh one (the link's text is
// the file's path), the lines already in it lost. Attacker: none (a legitimate use refused); gain: none,
// but operators pushed to `-o json` and shell redirections of secrets.
// Suggested fix: recognise /dev/stdout, /dev/stderr, /dev/fd/N and
// /proc/self/fd/N (after resolving root's links) and write to descriptor N
// itself (fstat it: a pipe, a FIFO, a device or a socket this process
// already holds is its invoker's choice; a regular file, write where it
// is), never resolving the link's text as a path.
func TestReview63OutputToADescriptorAlreadyHeld(t *testing.T) {
	secret := []byte("review63 secret to stdout")
	for _, tc := range []struct {
		name  string
		path  func(fd uintptr) string
		owner int // the pipe's owner: -1 the caller's own
	}{
		{"proc-self-fd pipe", func(fd uintptr) string { return fmt.Sprintf("/proc/self/fd/%d", fd) }, -1},
		{"dev-fd pipe (process substitution)", func(fd uintptr) string { return fmt.Sprintf("/dev/fd/%d", fd) }, -1},
		{"sudo: the invoking user's pipe", func(fd uintptr) string { return fmt.Sprintf("/proc/self/fd/%d", fd) }, review63Other},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			defer w.Close()
			if tc.owner >= 0 {
				if err := syscall.Fchown(int(w.Fd()), tc.owner, tc.owner); err != nil {
					t.Fatal(err)
				}
			}
			p := tc.path(w.Fd())
			werr := WriteOutput(p, secret, 0o600, Durable)
			w.Close()
			r.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, _ := io.ReadAll(r)
			if werr != nil || !bytes.Equal(got, secret) {
				t.Errorf("WriteOutput(%s) to a pipe this process holds: %v; the pipe got %q", p, werr, got)
			}
		})
	}

	// provd key pub --out /dev/stdout >> keys.pem: the shell's descriptor
	// appends; the link's text names the file, which is replaced by a fresh
	// one (rename), the lines already there lost.
	t.Run("append redirection (>>)", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "keys.pem")
		if err := os.WriteFile(p, []byte("kept line\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		w, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		werr := WriteOutput(fmt.Sprintf("/proc/self/fd/%d", w.Fd()), secret, 0o600, Durable)
		got, _ := os.ReadFile(p)
		if werr != nil || !bytes.Equal(got, append([]byte("kept line\n"), secret...)) {
			t.Errorf("WriteOutput to a descriptor opened for append: %v; the file holds %q", werr, got)
		}
	})

	// sudo provd ... --out /dev/stdout > fifo, the FIFO the invoking user
	// made and reads: the descriptor is this process's, handed to it by its
	// invoker, yet refused as "another user's FIFO".
	t.Run("sudo: stdout redirected to the invoking user's FIFO", func(t *testing.T) {
		fifo := filepath.Join(t.TempDir(), "fifo")
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(fifo, review63Other, review63Other); err != nil {
			t.Fatal(err)
		}
		r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		w, err := os.OpenFile(fifo, os.O_WRONLY, 0) // the shell's redirection
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		p := fmt.Sprintf("/proc/self/fd/%d", w.Fd())
		werr := WriteOutput(p, secret, 0o600, Durable)
		w.Close()
		r.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, _ := io.ReadAll(r)
		if werr != nil || !bytes.Equal(got, secret) {
			t.Errorf("WriteOutput(%s), stdout redirected to the invoker's FIFO: %v; the FIFO got %q", p, werr, got)
		}
	})
}
