// Package trustedpath checks that a path is one only root and this
// process's user can change: every directory and link on the way to it,
// as written and through every link, belongs to root or the effective
// user, and no directory on the way is writable by another unless sticky
// (/tmp: others may not rename or remove what is not theirs).
//
// It exists because a file provd trusts is only as safe as the
// directories above it: a user who owns or may write one of them can
// rename the file's directory away and put one of their own in its place
// after provd checked it (found by review 54 for the daemon's socket, by
// review 62 for the state directory). The daemon's socket (systemd.Listen)
// and the state directory (store.Open) are checked by this one walk; a
// unix socket's other end, by CheckPeer (the daemon's clients, a command's
// output to a socket).
package trustedpath

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// ErrUntrusted means a directory or link on the way can be changed by
// another user than root and this process's.
var ErrUntrusted = errors.New("can be changed by another user than root and this process's")

// maxLinks is the kernel's bound on links followed in one path.
const maxLinks = 40

// Walk walks path (made absolute) component by component, as the kernel
// resolves it, following links (at most 40, as the kernel does), and
// checks each directory and link it meets (Entry); it returns the path
// with every link resolved. The last component is checked too. A link's
// target is walked component by component in front of the rest of the
// path, never cleaned as text: "a/x/../b" goes through x, which the
// kernel follows, and x is checked (found by review 63: filepath.Join
// made it "a/b", and another user's link at x went unchecked).
//
// A relative path is joined to the working directory as text, and no
// path is cleaned as text: its "." and ".." are resolved as the kernel
// resolves them, after the links before them (review 64: "pub/x/../s"
// cleaned to "pub/s" skipped x, which the kernel follows).
func Walk(path string) (string, error) {
	abs, err := absolute(path)
	if err != nil {
		return "", err
	}
	cur := "/" // resolved: no link in it
	if err := Entry(cur); err != nil {
		return "", err
	}
	rest := strings.Split(abs, "/")
	for hops := 0; len(rest) > 0; {
		comp := rest[0]
		rest = rest[1:]
		switch comp {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur) // cur has no link: its parent is the kernel's
			continue
		}
		next := filepath.Join(cur, comp)
		if err := Entry(next); err != nil {
			return "", err
		}
		fi, err := os.Lstat(next)
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		if hops++; hops > maxLinks {
			return "", fmt.Errorf("%s: too many links", path)
		}
		target, err := os.Readlink(next)
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(target) {
			cur = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return cur, nil
}

// Entry checks one directory or link: owned by root or the effective
// user, and, a directory, writable by no other unless sticky.
func Entry(p string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no owner", p)
	}
	if int(st.Uid) != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%w: %s belongs to uid %d", ErrUntrusted, p, st.Uid)
	}
	if fi.IsDir() && fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return fmt.Errorf("%w: %s is %v: another user may write it", ErrUntrusted, p, fi.Mode())
	}
	return nil
}

// Mkdir makes the directories dir lacks (mode perm), one at a time, each
// under one that passed Entry, and each checked once made or found, and
// returns dir resolved (Walk): a refused path leaves nothing behind, and a
// link another user puts at a missing component between the check and
// the make is met by the next check, not followed as os.MkdirAll would
// (reviews 56, 57). The directories it makes are made in the resolved
// path, never at a text of the path cleaned (review 64).
func Mkdir(dir string, perm os.FileMode) (string, error) {
	cur, missing, err := split(dir)
	if err != nil {
		return "", err
	}
	if missing == nil {
		if fi, err := os.Stat(cur); err != nil || !fi.IsDir() {
			return "", &fs.PathError{Op: "mkdir", Path: dir, Err: syscall.ENOTDIR}
		}
		return cur, nil
	}
	for _, comp := range missing {
		cur = filepath.Join(cur, comp) // cur has no link: joining is the kernel's
		if err := os.Mkdir(cur, perm); err != nil && !errors.Is(err, fs.ErrExist) {
			return "", err
		}
		if err := Entry(cur); err != nil {
			return "", err
		}
		if fi, err := os.Lstat(cur); err != nil || !fi.IsDir() {
			return "", fmt.Errorf("%w: %s is not a directory", ErrUntrusted, cur)
		}
	}
	return cur, nil
}

// Resolve is path as the kernel will resolve it once its missing
// directories are made: the part that exists walked (Walk), the rest
// appended (no ".." in it). It makes nothing (review 67: a missing state
// directory's text, cleaned, was another directory than the one the
// store then made).
func Resolve(path string) (string, error) {
	cur, missing, err := split(path)
	if err != nil {
		return "", err
	}
	return filepath.Join(append([]string{cur}, missing...)...), nil
}

// split is dir's longest existing prefix, walked and resolved, and the
// components missing after it (nil when dir exists; "." and "" dropped).
// A ".." among the missing is refused before anything is made (review 65:
// "new/../state" made new, then refused).
func split(dir string) (string, []string, error) {
	abs, err := absolute(dir)
	if err != nil {
		return "", nil, err
	}
	comps := strings.Split(abs, "/")
	k := len(comps) // comps[:k] exists, as the kernel resolves it
	for ; k > 1; k-- {
		_, err := os.Lstat(joined(comps[:k]))
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", nil, err
		}
	}
	cur, err := Walk(joined(comps[:k]))
	if err != nil {
		return "", nil, err
	}
	if slices.Contains(comps[k:], "..") {
		return "", nil, fmt.Errorf("%s: \"..\" after a directory that is missing", dir)
	}
	var missing []string
	for _, comp := range comps[k:] {
		if comp != "" && comp != "." {
			missing = append(missing, comp)
		}
	}
	if k < len(comps) && missing == nil {
		missing = []string{}
	}
	return cur, missing, nil
}

// absolute is path joined to the working directory when it is relative,
// as text and never cleaned.
func absolute(path string) (string, error) {
	if filepath.IsAbs(path) {
		return path, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	return wd + "/" + path, nil
}

// joined is the path of comps (an absolute path split at "/"), never
// cleaned.
func joined(comps []string) string {
	if p := strings.Join(comps, "/"); p != "" {
		return p
	}
	return "/"
}

// CheckPeer refuses a unix socket connection whose other end runs as
// another user than root and this process's, as the kernel reports it
// (SO_PEERCRED, taken at connect): a socket another user serves, at a path
// a secret is sent to, gives that user the secret and every answer (found
// by review 62: the daemon's client sent a seal request's data to another
// user's listener; a command's output went to another user's socket).
func CheckPeer(c net.Conn) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("%w: not a unix socket", ErrUntrusted)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var uid uint32
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		var cred *syscall.Ucred
		if cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED); credErr == nil {
			uid = cred.Uid
		}
	}); err != nil {
		return err
	}
	if credErr != nil {
		return fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	if uid != 0 && int(uid) != os.Geteuid() {
		return fmt.Errorf("%w: the socket is served by uid %d", ErrUntrusted, uid)
	}
	return nil
}
