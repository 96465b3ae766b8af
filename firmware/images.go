package firmware

import (
	"context"
	"crypto"
	_ "crypto/sha256" // the image hashes
	_ "crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// readBuffer is the read size: large enough that the hash, not the
// system calls, sets the pace (docs/benchmarks.md).
const readBuffer = 1 << 20

// HashImages lists every regular file under dir (recursively, by name) as
// an image hashed with hash ("sha256" or "sha384"): what fw sign signs.
func HashImages(dir, hash string) ([]Image, error) {
	h, err := imageHash(hash)
	if err != nil {
		return nil, err
	}
	var images []Image
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s: not a regular file (an image directory holds images only)", path)
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if err := checkName(name); err != nil {
			return err
		}
		f, _, err := OpenBeneath(dir, name)
		if err != nil {
			return err
		}
		defer f.Close()
		sum, n, err := digestReader(f, h, -1)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		images = append(images, Image{Name: name, Size: n, Hash: hash, Digest: hex.EncodeToString(sum)})
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(images) == 0 {
		return nil, fmt.Errorf("%s: no images", dir)
	}
	sort.Slice(images, func(i, j int) bool { return images[i].Name < images[j].Name })
	return images, nil
}

// VerifyImages checks every image of m under root in one streaming pass
// each: present (ErrMissingImage), of its size and digest (ErrDigest).
// Files under root the manifest does not list are not looked at. Once ctx
// is done it stops at the next read and returns ctx's error: the boot hook
// hashes while the TPM reads the anchor, and stops when the anchor refuses
// the manifest.
func (m Manifest) VerifyImages(ctx context.Context, root string) error {
	for _, im := range m.Images {
		if err := verifyImage(ctx, root, im); err != nil {
			return err
		}
	}
	return nil
}

func verifyImage(ctx context.Context, root string, im Image) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := imageHash(im.Hash)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadManifest, err)
	}
	f, st, err := OpenBeneath(root, im.Name)
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, unix.ENOTDIR):
		return fmt.Errorf("%w: %s", ErrMissingImage, im.Name)
	case errors.Is(err, errNotRegular), errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
		return fmt.Errorf("%w: %s is not a regular file inside the image root (a symbolic link, a device, a FIFO)", ErrDigest, im.Name)
	case err != nil:
		return fmt.Errorf("%s: %w", im.Name, err)
	}
	defer f.Close()
	if st.Size() != im.Size {
		return fmt.Errorf("%w: %s is %d bytes, the manifest says %d", ErrDigest, im.Name, st.Size(), im.Size)
	}
	sum, n, err := digestReader(ctxReader{ctx, f}, h, im.Size)
	if err != nil {
		return fmt.Errorf("%s: %w", im.Name, err)
	}
	if n != im.Size || hex.EncodeToString(sum) != im.Digest {
		return fmt.Errorf("%w: %s: its digest is not the manifest's", ErrDigest, im.Name)
	}
	return nil
}

// errNotRegular: what OpenBeneath found is not a regular file.
var errNotRegular = errors.New("not a regular file")

// OpenBeneath opens name under root for reading (found by review:
// a symbolic link in the root, or on the way, led out of it, and opening a
// device can act, /dev/watchdog arms a reboot): resolved beneath root with
// no symbolic link at any step (openat2, Linux 5.6), first as a path only,
// whose type must be a regular file, then reopened through that very
// descriptor, so nothing swapped in between is opened. The boot hook opens
// its own files (the manifest, the measurement log, the counter's
// authorization) the same way.
func OpenBeneath(root, name string) (*os.File, fs.FileInfo, error) {
	dir, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, &fs.PathError{Op: "open", Path: root, Err: err}
	}
	defer unix.Close(dir)
	pfd, err := unix.Openat2(dir, name, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
	if errors.Is(err, unix.ENOSYS) {
		// systemd's RestrictSUIDSGID=, which provd's units set, answers
		// openat2 with ENOSYS (seccomp cannot look inside its struct
		// for a set-id mode), and so may other sandboxes: walk the
		// name one component at a time to the same rules (found by the
		// VM test bed: the boot hook failed on its manifest at boot).
		pfd, err = walkBeneath(dir, name)
	}
	if err != nil {
		return nil, nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return nil, nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, nil, fmt.Errorf("%s: %w", name, errNotRegular)
	}
	fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", pfd), unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: reopen: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", name, errNotRegular)
	}
	return f, fi, nil
}

// walkBeneath opens name under the directory dir as O_PATH, as openat2 with
// RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS does, for kernels or sandboxes
// without openat2: one openat(O_PATH|O_NOFOLLOW) per component, each
// checked before the next is opened from it. An absolute name or a ".."
// component is EXDEV (not beneath), a symbolic link at any step ELOOP, a
// non-directory on the way ENOTDIR. The caller closes the descriptor.
func walkBeneath(dir int, name string) (int, error) {
	if name == "" || filepath.IsAbs(name) {
		return -1, unix.EXDEV
	}
	var parts []string
	for _, c := range strings.Split(name, "/") {
		switch c {
		case "", ".":
		case "..":
			return -1, unix.EXDEV
		default:
			parts = append(parts, c)
		}
	}
	cur, err := unix.Dup(dir)
	if err != nil {
		return -1, err
	}
	if len(parts) == 0 {
		return cur, nil
	}
	for i, c := range parts {
		fd, err := unix.Openat(cur, c, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(cur)
		if err != nil {
			return -1, err
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return -1, err
		}
		switch {
		case st.Mode&unix.S_IFMT == unix.S_IFLNK:
			unix.Close(fd)
			return -1, unix.ELOOP
		case i < len(parts)-1 && st.Mode&unix.S_IFMT != unix.S_IFDIR:
			unix.Close(fd)
			return -1, unix.ENOTDIR
		}
		cur = fd
	}
	return cur, nil
}

// ctxReader reads r until ctx is done, then fails with ctx's error.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// digestReader hashes r to its end, or, with limit >= 0, its first
// limit+1 bytes at most (so that a file grown since its size was read is
// seen as longer); it returns the digest and the bytes read.
func digestReader(r io.Reader, h crypto.Hash, limit int64) ([]byte, int64, error) {
	d := h.New()
	if limit >= 0 {
		r = io.LimitReader(r, limit+1)
	}
	r = struct{ io.Reader }{r} // our buffer, not *os.File's WriteTo and its 32 KiB
	n, err := io.CopyBuffer(d, r, make([]byte, readBuffer))
	return d.Sum(nil), n, err
}
