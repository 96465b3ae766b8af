package firmware

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// walkBeneath stands in for openat2 where a sandbox answers it with ENOSYS
// (systemd's RestrictSUIDSGID=): it must open and refuse exactly what
// openat2 with RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS does.
func TestWalkBeneathAsOpenat2(t *testing.T) {
	outside := t.TempDir()
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "efi", "boot"), 0o755))
	must(os.WriteFile(filepath.Join(root, "bootloader.bin"), []byte("b"), 0o644))
	must(os.WriteFile(filepath.Join(root, "efi", "boot", "x.efi"), []byte("x"), 0o644))
	must(os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600))
	must(os.Symlink(filepath.Join(outside, "secret"), filepath.Join(root, "abs-link")))
	must(os.Symlink("bootloader.bin", filepath.Join(root, "rel-link")))
	must(os.Symlink(outside, filepath.Join(root, "dir-link")))
	must(os.Symlink("efi", filepath.Join(root, "efi-link")))
	must(unix.Mkfifo(filepath.Join(root, "fifo"), 0o600))

	dir, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(err)
	defer unix.Close(dir)
	for _, tc := range []struct {
		name string
		want error // nil: opens
	}{
		{"bootloader.bin", nil},
		{"efi/boot/x.efi", nil},
		{"./efi//boot/x.efi", nil},
		{"fifo", nil}, // opened as a path; OpenBeneath refuses it by type
		{"efi", nil},
		{"abs-link", unix.ELOOP},
		{"rel-link", unix.ELOOP},
		{"dir-link/secret", unix.ELOOP},
		{"efi-link/boot/x.efi", unix.ELOOP},
		{"../" + filepath.Base(outside) + "/secret", unix.EXDEV},
		{filepath.Join(outside, "secret"), unix.EXDEV},
		{"missing", unix.ENOENT},
		{"bootloader.bin/x", unix.ENOTDIR},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fd2, err2 := unix.Openat2(dir, tc.name, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC,
				Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
			if err2 == nil {
				unix.Close(fd2)
			}
			fd, err := walkBeneath(dir, tc.name)
			if err == nil {
				unix.Close(fd)
			}
			if !errors.Is(err, tc.want) && !(tc.want == nil && err == nil) {
				t.Errorf("walkBeneath: %v, want %v", err, tc.want)
			}
			if errors.Is(err2, unix.ENOSYS) {
				return // no openat2 to compare with here
			}
			if (err == nil) != (err2 == nil) {
				t.Errorf("walkBeneath: %v; openat2: %v", err, err2)
			}
		})
	}
}
