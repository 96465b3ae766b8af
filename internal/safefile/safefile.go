// Package safefile opens the files of provd's state directory the one way
// that a file planted there cannot turn against provd: never through a
// link at the last component, never blocking in open(2), and only a
// regular file, of a bounded size when the caller reads it whole.
//
// It exists because a FIFO planted at a state file (by A4, or in a copy of
// the state an operator restores: tar keeps FIFOs and links) blocked every
// provd process in open(2) under the state's lock for good, a link there
// took a write elsewhere, and a sparse file of gigabytes was read whole
// (found by reviews 62, 63 and 66: the store's manifest and blobs, the
// agent's pending records and gate, the audit trail).
package safefile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// ErrUnsafe marks a state file that is a link, not a regular file, or
// larger than its bound.
var ErrUnsafe = errors.New("not a regular file of provd's")

// NoLimit is a limit that bounds nothing (a file read in pieces).
const NoLimit = -1

// maxPrealloc bounds what ReadFile allocates before it has read.
const maxPrealloc = 64 << 20

// Open opens path with flag (O_RDONLY, O_WRONLY, O_RDWR, O_APPEND,
// O_CREATE with perm), adding O_NOFOLLOW, O_NONBLOCK and O_CLOEXEC, and
// refuses (ErrUnsafe) a link, anything but a regular file, and a file over
// limit bytes (unless limit is NoLimit). It returns the file's size.
func Open(path string, flag int, perm os.FileMode, limit int64) (*os.File, int64, error) {
	// O_NOCTTY: a terminal planted there never becomes the daemon's
	// (review 67's reading).
	f, err := os.OpenFile(path, flag|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_NOCTTY|syscall.O_CLOEXEC, perm)
	if errors.Is(err, syscall.ELOOP) {
		return nil, 0, fmt.Errorf("%w: %s is a symbolic link", ErrUnsafe, filepath.Base(path))
	}
	if errors.Is(err, syscall.ENXIO) { // a FIFO with no reader, opened to write
		return nil, 0, fmt.Errorf("%w: %s is a FIFO", ErrUnsafe, filepath.Base(path))
	}
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	switch {
	case err != nil:
		f.Close()
		return nil, 0, err
	case !fi.Mode().IsRegular():
		f.Close()
		return nil, 0, fmt.Errorf("%w: %s is %v", ErrUnsafe, filepath.Base(path), fi.Mode().Type())
	case limit != NoLimit && fi.Size() > limit:
		f.Close()
		return nil, 0, fmt.Errorf("%w: %s is %d bytes, over %d", ErrUnsafe, filepath.Base(path), fi.Size(), limit)
	}
	return f, fi.Size(), nil
}

// ReadFile reads the regular file at path, of at most limit bytes
// (ErrUnsafe otherwise, also when it grew past limit while read).
func ReadFile(path string, limit int64) ([]byte, error) {
	f, size, err := Open(path, os.O_RDONLY, 0, limit)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := io.Reader(f)
	if limit != NoLimit {
		r = io.LimitReader(f, limit+1)
	}
	// Room for the size the file says, up to a bound: a sparse file's
	// size is no promise (review 67: a 64 GiB one was allocated whole).
	b := make([]byte, 0, min(size, maxPrealloc)+1)
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
	}
	if limit != NoLimit && int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: %s grew over %d bytes", ErrUnsafe, filepath.Base(path), limit)
	}
	return b, nil
}
