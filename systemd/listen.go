package systemd

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/provd/provd/internal/trustedpath"
)

// ErrSocketInUse means another process answers on the socket path: most
// likely a second provd. Listen never takes over a live socket, because
// unlinking it would silently cut that daemon off from its clients.
var ErrSocketInUse = errors.New("socket is in use by another process")

// ErrNotSocket means the socket path exists and is not a socket. Listen
// refuses to remove it: that is a misconfiguration, not a stale leftover.
var ErrNotSocket = errors.New("path exists and is not a socket")

// ErrActivation means systemd passed file descriptors that provd cannot
// serve on. The unit's .socket is wrong; ignoring the descriptors would leave
// clients connecting to a socket nobody accepts on.
var ErrActivation = errors.New("unusable socket-activation file descriptors")

// Listeners returns the unix stream listeners systemd passed to this process
// by socket activation (LISTEN_FDS, LISTEN_PID), in the order of the unit's
// ListenStream= lines. It returns nil, nil when the process was not socket
// activated.
//
// The LISTEN_* variables are unset so that child processes do not mistake
// the descriptors for their own. Any descriptor that is not a unix stream
// listener fails the whole call with ErrActivation, and every descriptor
// is closed then.
func Listeners() ([]net.Listener, error) {
	files := activation.Files(true)
	var ls []net.Listener
	var bad error
	for _, f := range files {
		l, err := net.FileListener(f)
		// net.FileListener dups the descriptor; the original is ours to close.
		f.Close()
		if err != nil {
			bad = errors.Join(bad, fmt.Errorf("%w: %s: %w", ErrActivation, f.Name(), err))
			continue
		}
		// A SOCK_SEQPACKET socket is a *net.UnixListener too, of network
		// "unixpacket" (review 54).
		if _, ok := l.(*net.UnixListener); !ok || l.Addr().Network() != "unix" {
			l.Close()
			bad = errors.Join(bad, fmt.Errorf("%w: %s is %s, want a unix stream socket", ErrActivation, f.Name(), l.Addr().Network()))
			continue
		}
		ls = append(ls, l)
	}
	if bad != nil {
		for _, l := range ls {
			l.Close()
		}
		return nil, fmt.Errorf("systemd: %w", bad)
	}
	return ls, nil
}

// ListenOrActivated prefers the socket systemd passed (provd.socket) and
// otherwise binds path itself with Listen.
//
// Under activation, path, mode and group are ignored: systemd created the
// socket with the .socket unit's ListenStream=, SocketMode= and SocketGroup=,
// and that is what lets the service run with an empty capability bounding
// set. Exactly one socket must be passed; more is an ErrActivation, since
// provd would not know which one clients use.
func ListenOrActivated(path string, mode os.FileMode, group string) (net.Listener, error) {
	ls, err := Listeners()
	if err != nil {
		return nil, err
	}
	switch len(ls) {
	case 0:
		return Listen(path, mode, group)
	case 1:
		return ls[0], nil
	default:
		for _, l := range ls {
			l.Close()
		}
		return nil, fmt.Errorf("systemd: %w: %d sockets passed, want 1", ErrActivation, len(ls))
	}
}

// Listen binds a unix stream socket at path for when the daemon is not socket
// activated (run from a shell, or a unit without provd.socket).
//
// It creates the parent directory with mode 0755 if missing (/run/provd);
// removes an existing socket at path only if nothing answers on it (a
// leftover from a crash), returning ErrSocketInUse if something does and
// ErrNotSocket if path is not a socket at all; and gives the socket mode
// (normally 0660) and, when group is not empty, that group (normally provd).
// A group that does not exist is an error, not a silent fallback to root's
// group, since the socket's group is how users get to their role.
//
// The socket is bound under a temporary name, given its mode and group, then
// renamed over path, so clients never see it with the umask's permissions
// and a stale socket is replaced without a moment where path is missing.
// Closing the listener removes path only if it is still this socket.
//
// Changing the group needs CAP_CHOWN unless the process is a member of it;
// the unit grants no capabilities and relies on provd.socket instead.
func Listen(path string, mode os.FileMode, group string) (net.Listener, error) {
	gid := -1
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return nil, fmt.Errorf("systemd: socket group %q: %w (create it, e.g. with systemd-sysusers, or configure another)", group, err)
		}
		if gid, err = strconv.Atoi(g.Gid); err != nil {
			return nil, fmt.Errorf("systemd: socket group %q: gid %q: %w", group, g.Gid, err)
		}
	}
	// A path the kernel and filepath.Clean would read differently ("..",
	// ".", "//": after a link, ".." climbs from where the link led) is not
	// checked as written: refused (review 56).
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return nil, fmt.Errorf("systemd: %w: socket path %q: want an absolute path with no \".\", \"..\" or \"//\" in it", ErrUnsafeDir, path)
	}
	if _, err := trustedpath.Mkdir(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("systemd: socket directory: %w", err)
	}
	if err := checkSocketDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if err := checkStale(path); err != nil {
		return nil, err
	}

	tmp := filepath.Join(filepath.Dir(path), fmt.Sprintf(".%s.%d.tmp", filepath.Base(path), os.Getpid()))
	_ = os.Remove(tmp) // a leftover of this very pid can only be from a crashed earlier run
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("systemd: listen %s: %w", path, err)
	}
	ul.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		ul.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("systemd: listen %s: %w", path, err)
	}
	if err := os.Chmod(tmp, mode.Perm()); err != nil {
		return fail(err)
	}
	if gid >= 0 {
		if err := os.Lchown(tmp, -1, gid); err != nil {
			return fail(err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(err)
	}
	return &unixListener{UnixListener: ul, path: path, fi: fi}, nil
}

// ErrUnsafeDir means the socket's directory, or one above it, can be
// changed by another user than root and the daemon's (internal/trustedpath).
var ErrUnsafeDir = trustedpath.ErrUntrusted

// checkSocketDir refuses a socket directory that another user could change
// (review 54: in a directory another user owns or may write, that user can
// replace the daemon's socket with one of theirs and take its clients'
// seal and unseal traffic, or put a symlink at the temporary name between
// bind and chmod, which follows it). Every directory and link on the way
// to dir, as written and through every link (review 55: a link owned by
// another user, in their directory, checked only where it led, was
// changed after the bind and sent the daemon's clients to that user's
// socket), must belong to root or the daemon's user, and no directory may
// be writable by another unless sticky (/tmp: others may not rename or
// remove what is not theirs); dir itself not even then.
func checkSocketDir(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("systemd: socket directory: %w", err)
	}
	resolved, err := trustedpath.Walk(abs)
	if err != nil {
		return fmt.Errorf("systemd: socket directory: %w", err)
	}
	fi, err := os.Stat(resolved)
	if err != nil {
		return fmt.Errorf("systemd: socket directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("systemd: socket directory %s is not a directory", resolved)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("systemd: %w: %s is %v: another user may write it", ErrUnsafeDir, resolved, fi.Mode())
	}
	return nil
}

// checkStale makes path free for a new socket or explains why it is not.
func checkStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("systemd: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("systemd: %s: %w", path, ErrNotSocket)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("systemd: %s: %w", path, ErrSocketInUse)
	}
	// Only "connection refused" proves nobody listens; a timeout (full
	// backlog) or a permission error may well be a live daemon.
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("systemd: probing %s: %w", path, err)
	}
	// Renaming the new socket over path replaces it; nothing to do here.
	return nil
}

// unixListener reports the final path as its address and removes it on
// Close only while it is still this socket, so a daemon shutting down never
// deletes the socket of the one that replaced it.
type unixListener struct {
	*net.UnixListener
	path string
	fi   fs.FileInfo
}

func (l *unixListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *unixListener) Close() error {
	if fi, err := os.Lstat(l.path); err == nil && os.SameFile(fi, l.fi) {
		os.Remove(l.path)
	}
	return l.UnixListener.Close()
}
