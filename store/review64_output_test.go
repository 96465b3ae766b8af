package store

// Review 64: WriteOutput to a descriptor the process holds (review 63).

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// Held: only the canonical spellings name a held descriptor. "/dev/fd/00",
// "/dev/fd/+1", "/dev/fd/-1", "/dev/fd/ 1", "/dev/fd/1/",
// "/proc/self/fd/1/", "/dev/fd/0x1" and an empty number are not taken
// for a descriptor (the kernel's procfs refuses a leading zero or sign
// as well: ENOENT), so none of them is turned into a write to fd 0/1 the
// caller did not name. Non-canonical spellings of a real descriptor
// ("/dev//stdout", "/proc/thread-self/fd/1", "/proc/<pid>/fd/1") fall to
// the path rules (a regular file is replaced, a pipe refused): a form
// difference, no secret goes elsewhere.
func TestReview64DescriptorSpellings(t *testing.T) {
	for _, p := range []string{
		"/dev/fd/00", "/dev/fd/01", "/dev/fd/+1", "/dev/fd/-1", "/dev/fd/ 1",
		"/dev/fd/1/", "/proc/self/fd/1/", "/dev/fd/0x1", "/dev/fd/", "/proc/self/fd/",
		"/dev//stdout", "/dev/stdout/", "/proc/thread-self/fd/1",
		"/dev/fd/99999999999999999999",
	} {
		if fd, ok := heldDescriptor(p); ok {
			t.Errorf("heldDescriptor(%q) = %d: taken for a descriptor", p, fd)
		}
	}
	for p, want := range map[string]int{"/dev/stdout": 1, "/dev/stderr": 2, "/dev/fd/0": 0, "/dev/fd/7": 7, "/proc/self/fd/12": 12} {
		if fd, ok := heldDescriptor(p); !ok || fd != want {
			t.Errorf("heldDescriptor(%q) = %d, %v; want %d", p, fd, ok, want)
		}
	}
}

// Held: a held descriptor is written as it is, never through the path
// rules: one opened read-only is an error (EBADF), nothing is created or
// replaced at the link's target; one opened for append gets the data
// appended, with Durable, and the caller's descriptor stays open (a dup
// is written and closed). Reachability of provd's own descriptors
// (/dev/fd/N naming the TPM's, the audit log's): WriteOutput is called
// only by the CLI (cmd/provd/cli writeOut), in the caller's own process
// and with the caller's own --out; no api request carries an output
// path, so the daemon never writes to a path a client names, and a
// less-privileged user cannot aim a secret at root's descriptors.
func TestReview64HeldDescriptorAsItIs(t *testing.T) {
	dir := t.TempDir()
	ro := filepath.Join(dir, "ro")
	if err := os.WriteFile(ro, []byte("before"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(ro)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := WriteOutput(fmt.Sprintf("/dev/fd/%d", f.Fd()), []byte("secret"), 0o600, Durable); err == nil {
		t.Errorf("WriteOutput to a read-only descriptor: nil")
	}
	if b, _ := os.ReadFile(ro); string(b) != "before" {
		t.Errorf("the read-only descriptor's file became %q", b)
	}

	ap := filepath.Join(dir, "append")
	if err := os.WriteFile(ap, []byte("log\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a, err := os.OpenFile(ap, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for _, p := range []string{fmt.Sprintf("/dev/fd/%d", a.Fd()), fmt.Sprintf("/proc/self/fd/%d", a.Fd())} {
		if err := WriteOutput(p, []byte("x\n"), 0o600, Durable); err != nil {
			t.Errorf("WriteOutput(%s): %v", p, err)
		}
	}
	if _, err := a.Write([]byte("end\n")); err != nil {
		t.Errorf("the caller's descriptor was closed: %v", err)
	}
	if b, _ := os.ReadFile(ap); !bytes.Equal(b, []byte("log\nx\nx\nend\n")) {
		t.Errorf("append-opened file: %q", b)
	}
}
