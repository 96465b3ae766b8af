package store

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/provd/provd/internal/trustedpath"
	"golang.org/x/sys/unix"
)

// ErrOutput is a path the CLI will not write its output to: a directory, a
// block device, or a symlink it does not trust. Its message says why.
var ErrOutput = errors.New("output path refused")

// Durability is what a command's output file promises once the command has
// said it is written.
type Durability int

const (
	// Durable: the file and its directory are synced before WriteOutput
	// returns, so a power cut after it loses nothing. For an output that is
	// the only copy of something: a sealed blob, a wrapped backup, an
	// exported key, an unsealed secret (the PCRs may not unseal it again).
	Durable Durability = iota
	// Remakeable: written as atomically (a reader sees the old file or the
	// new, never a part of one), not synced, as openssl and tpm2-tools write
	// their outputs. For an output the same command makes again from what
	// the TPM and the state keep, while the key's policy holds: a
	// signature, a certificate request. A power cut soon after may leave
	// the old file, an empty one or none, and running the command again
	// makes it (after a boot that measures the same; a delivered key's
	// signature, after a new attestation if its PCRs changed). The two
	// syncs cost a one-shot sign 2 ms of its 25 on the benchmark machine's
	// disk (issue 14).
	Remakeable
)

// WriteOutput writes a command's output (an unsealed secret, a signature, a
// key file) to path, as a user who names a path expects, and never by
// replacing something that is not a regular file:
//   - nothing there, or a regular file: WriteFile (atomic, mode set before
//     the first byte; synced unless d is Remakeable);
//   - a character device or a FIFO (/dev/null, /dev/stdout, a pipe) of the
//     caller's or root's: opened and written to, no create, no rename; a
//     short write or an error such as ENOSPC (/dev/full) is reported;
//   - a unix socket of the caller's or root's, served by one of them:
//     connected to and written to; another user's FIFO, socket or device is
//     refused (ErrOutput), as the secret would go to whoever reads it;
//   - a symlink: followed when it belongs to the caller or to root (the way
//     the kernel's protected_symlinks trusts them in sticky directories), and
//     the rules above apply to what it points to; another user's symlink is
//     refused, so it cannot steer a secret elsewhere;
//   - a directory or a block device: refused (ErrOutput);
//   - a descriptor this process holds (/dev/stdout, /dev/stderr, /dev/fd/N,
//     /proc/self/fd/N, as a shell hands over `>(...)`): written to as it
//     is (a pipe, a FIFO, a file opened for append), whoever owns what it
//     leads to, since the caller handed it over (found by review 63: the
//     link's text "pipe:[N]" was taken for a path, and a file opened for
//     append was replaced).
func WriteOutput(path string, data []byte, mode os.FileMode, d Durability) error {
	if fd, ok := heldDescriptor(path); ok {
		return writeDescriptor(fd, path, data, d)
	}
	target, err := outputTarget(path)
	if err != nil {
		return err
	}
	fi, err := os.Stat(target)
	if errors.Is(err, fs.ErrNotExist) {
		return writeFile(target, data, mode, d)
	}
	if err != nil {
		return err
	}
	switch t := fi.Mode().Type(); {
	case t == 0:
		return writeFile(target, data, mode, d)
	case t&fs.ModeDir != 0:
		return fmt.Errorf("%w: %s is a directory", ErrOutput, path)
	case t&fs.ModeDevice != 0 && t&fs.ModeCharDevice == 0:
		return fmt.Errorf("%w: %s is a block device", ErrOutput, path)
	case t&fs.ModeSocket != 0:
		if err := ownedByCallerOrRoot(fi, path); err != nil {
			return err
		}
		c, err := net.Dial("unix", target)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if err := trustedpath.CheckPeer(c); err != nil {
			return errors.Join(fmt.Errorf("%w: %s: %w", ErrOutput, path, err), c.Close())
		}
		_, err = c.Write(data)
		return errors.Join(err, c.Close())
	default: // character device, FIFO
		if err := ownedByCallerOrRoot(fi, path); err != nil {
			return err
		}
		f, err := os.OpenFile(target, os.O_WRONLY|syscall.O_NOFOLLOW, 0)
		if err != nil {
			return err
		}
		if ffi, err := f.Stat(); err != nil || !os.SameFile(fi, ffi) {
			return errors.Join(fmt.Errorf("%w: %s changed while it was opened", ErrOutput, path), f.Close())
		}
		_, err = f.Write(data)
		return errors.Join(err, f.Close())
	}
}

// ownedByCallerOrRoot refuses a FIFO, socket or character device at an
// output path that another user owns (found by review 62: another user's
// FIFO or socket, put where an operator writes a secret, took it, and the
// command reported success): what is written to one goes to whoever reads
// it, and its owner chose that. The caller's own, and root's (/dev/null,
// a terminal), are written to.
func ownedByCallerOrRoot(fi fs.FileInfo, path string) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || (st.Uid != 0 && int(st.Uid) != os.Getuid()) {
		return fmt.Errorf("%w: %s is a %v owned by another user", ErrOutput, path, fi.Mode().Type())
	}
	return nil
}

// outputTarget resolves path when it is a symlink the caller may follow
// (owned by the caller or root, at every step), and returns path otherwise.
func outputTarget(path string) (string, error) {
	for range 40 { // ELOOP's bound
		fi, err := os.Lstat(path)
		if errors.Is(err, fs.ErrNotExist) {
			return path, nil
		}
		if err != nil {
			return "", err
		}
		if fi.Mode().Type()&fs.ModeSymlink == 0 {
			return path, nil
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || (st.Uid != 0 && int(st.Uid) != os.Getuid()) {
			return "", fmt.Errorf("%w: %s is a symlink owned by another user (uid %d)", ErrOutput, path, st.Uid)
		}
		dest, err := os.Readlink(path)
		if err != nil {
			return "", err
		}
		if !filepath.IsAbs(dest) {
			dest = filepath.Join(filepath.Dir(path), dest)
		}
		path = dest
	}
	return "", fmt.Errorf("%s: %w", path, syscall.ELOOP)
}

// heldDescriptor reports the descriptor path names when it names one this
// process holds.
func heldDescriptor(path string) (int, bool) {
	switch path {
	case "/dev/stdout":
		return 1, true
	case "/dev/stderr":
		return 2, true
	}
	for _, dir := range []string{"/dev/fd/", "/proc/self/fd/"} {
		if n, ok := strings.CutPrefix(path, dir); ok {
			fd, err := strconv.Atoi(n)
			return fd, err == nil && fd >= 0 && strconv.Itoa(fd) == n
		}
	}
	return 0, false
}

// writeDescriptor writes data to a duplicate of descriptor fd (closing it
// leaves fd open), synced when d is Durable and fd is a regular file.
func writeDescriptor(fd int, path string, data []byte, d Durability) error {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	f := os.NewFile(uintptr(dup), path)
	_, err = f.Write(data)
	if fi, serr := f.Stat(); err == nil && serr == nil && fi.Mode().IsRegular() && d == Durable {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}
