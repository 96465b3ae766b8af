package store

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/provd/provd/audit"
)

var bg = context.Background()

// stateDir returns a path for a state directory; t.TempDir itself is 0755,
// which Open rightly refuses.
func stateDir(t testing.TB) string { return filepath.Join(t.TempDir(), "state") }

func mustOpen(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := mustOpen(t, dir)
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("created dir mode %#o, want 0700", fi.Mode().Perm())
	}

	type rec struct {
		Handle uint32 `json:"handle"`
		Label  string `json:"label"`
	}
	blob := bytes.Repeat([]byte{0xA5}, 4096)
	err = s.Update(bg, func(tx *Tx) error {
		if tx.Generation() != 0 {
			t.Errorf("empty store generation %d", tx.Generation())
		}
		if err := tx.Put("pk", rec{0x81000002, "provisioning"}); err != nil {
			return err
		}
		if err := tx.WriteBlob("pk.priv", blob); err != nil {
			return err
		}
		// Reads inside the transaction see its writes.
		got, err := tx.ReadBlob("pk.priv")
		if err != nil || !bytes.Equal(got, blob) {
			t.Errorf("ReadBlob in tx = %v, %v", len(got), err)
		}
		return tx.WriteBlob("empty", nil)
	})
	if err != nil {
		t.Fatalf("Update: %v", err)
	}

	// A second Store (as another process would) sees the committed state.
	s2 := mustOpen(t, dir)
	err = s2.View(bg, func(tx *Tx) error {
		if tx.Generation() != 1 {
			t.Errorf("generation %d, want 1", tx.Generation())
		}
		var r rec
		if err := tx.Get("pk", &r); err != nil || r != (rec{0x81000002, "provisioning"}) {
			t.Errorf("Get = %+v, %v", r, err)
		}
		if got, err := tx.ReadBlob("pk.priv"); err != nil || !bytes.Equal(got, blob) {
			t.Errorf("ReadBlob: %v", err)
		}
		if got, err := tx.ReadBlob("empty"); err != nil || len(got) != 0 {
			t.Errorf("ReadBlob(empty) = %q, %v", got, err)
		}
		if !slices.Equal(tx.Blobs(), []string{"empty", "pk.priv"}) || !slices.Equal(tx.Objects(), []string{"pk"}) {
			t.Errorf("listing %v %v", tx.Blobs(), tx.Objects())
		}
		if err := tx.Get("nope", &r); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(nope) = %v, want ErrNotFound", err)
		}
		if _, err := tx.ReadBlob("nope"); !errors.Is(err, ErrNotFound) {
			t.Errorf("ReadBlob(nope) = %v, want ErrNotFound", err)
		}
		if err := tx.Put("x", 1); !errors.Is(err, ErrReadOnly) {
			t.Errorf("Put in View = %v, want ErrReadOnly", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// A no-op Update does not bump the generation.
	if err := s.Update(bg, func(tx *Tx) error { return tx.Put("pk", rec{0x81000002, "provisioning"}) }); err != nil {
		t.Fatal(err)
	}
	// Removing a blob and an object commits generation 2 and deletes the file.
	if err := s.Update(bg, func(tx *Tx) error {
		if err := tx.Delete("pk"); err != nil {
			return err
		}
		return tx.RemoveBlob("pk.priv")
	}); err != nil {
		t.Fatal(err)
	}
	assertGeneration(t, s, 2)
	assertOnlyLiveFiles(t, s)
}

func TestAbortedUpdateLeavesNothing(t *testing.T) {
	s := mustOpen(t, stateDir(t))
	must(t, s.Update(bg, func(tx *Tx) error { return tx.WriteBlob("a", []byte("one")) }))
	boom := errors.New("boom")
	err := s.Update(bg, func(tx *Tx) error {
		if err := tx.WriteBlob("a", []byte("two")); err != nil {
			return err
		}
		if err := tx.WriteBlob("b", []byte("three")); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v", err)
	}
	assertGeneration(t, s, 1)
	assertOnlyLiveFiles(t, s)
	must(t, s.View(bg, func(tx *Tx) error {
		got, err := tx.ReadBlob("a")
		if err != nil || string(got) != "one" {
			t.Errorf("a = %q, %v", got, err)
		}
		return nil
	}))
}

func TestOpenRefusesInsecureDir(t *testing.T) {
	dir := t.TempDir()
	for _, mode := range []os.FileMode{0o750, 0o705, 0o777, 0o710} {
		must(t, os.Chmod(dir, mode))
		if _, err := Open(dir); !errors.Is(err, ErrInsecureDir) {
			t.Errorf("mode %#o: Open = %v, want ErrInsecureDir", mode, err)
		}
	}
	must(t, os.Chmod(dir, 0o700))
	if os.Getuid() == 0 {
		must(t, os.Chown(dir, 12345, -1))
		if _, err := Open(dir); !errors.Is(err, ErrInsecureDir) {
			t.Errorf("foreign owner: Open = %v, want ErrInsecureDir", err)
		}
		must(t, os.Chown(dir, 0, -1))
	}
	f := filepath.Join(dir, "file")
	must(t, os.WriteFile(f, nil, 0o600))
	if _, err := Open(f); !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("Open(regular file) = %v, want ENOTDIR", err)
	}
}

// seedState writes a manifest and a plausible blob file by hand, returning
// both so tests can check they were left byte-identical.
func seedState(t *testing.T, manifestBytes []byte) (dir string, blobPath string) {
	t.Helper()
	dir = stateDir(t)
	must(t, os.MkdirAll(filepath.Join(dir, BlobDir), 0o700))
	blobPath = filepath.Join(dir, BlobDir, "k~7")
	must(t, os.WriteFile(blobPath, []byte("blob from the future"), 0o600))
	must(t, os.WriteFile(filepath.Join(dir, ManifestFile), manifestBytes, 0o600))
	return dir, blobPath
}

func TestUnknownSchemaRefusedAndUntouched(t *testing.T) {
	future := []byte(`{"schema": 2, "generation": 9, "stuff": {"k": "k~7"}}` + "\n")
	dir, blob := seedState(t, future)
	_, err := Open(dir)
	if !errors.Is(err, ErrUnknownSchema) {
		t.Fatalf("Open = %v, want ErrUnknownSchema", err)
	}
	// A Store opened before the upgrade must refuse too, and Update must not write.
	s := &Store{dir: dir, opts: Options{LockTimeout: time.Second}, sem: make(chan struct{}, 1)}
	err = s.Update(bg, func(tx *Tx) error { return tx.Put("x", 1) })
	if !errors.Is(err, ErrUnknownSchema) {
		t.Fatalf("Update = %v, want ErrUnknownSchema", err)
	}
	assertFile(t, filepath.Join(dir, ManifestFile), future)
	// The unreferenced-looking blob was not garbage collected.
	assertFile(t, blob, []byte("blob from the future"))
}

var corruptManifests = map[string]string{
	"empty":          ``,
	"not json":       `schema=1`,
	"truncated":      `{"schema":1,"generation":3,"objects":{"a":`,
	"no schema":      `{"generation":1,"objects":{},"blobs":{}}`,
	"schema 0":       `{"schema":0,"generation":1}`,
	"schema string":  `{"schema":"1","generation":1}`,
	"schema float":   `{"schema":1.5,"generation":1}`,
	"generation 0":   `{"schema":1,"generation":0}`,
	"unknown field":  `{"schema":1,"generation":1,"extra":true}`,
	"trailing":       `{"schema":1,"generation":1}{}`,
	"bad object":     `{"schema":1,"generation":1,"objects":{"../x":1}}`,
	"traversal blob": `{"schema":1,"generation":1,"blobs":{"k":{"file":"../../etc/passwd","size":1,"sha256":"` + zeros64 + `"}}}`,
	"future blob":    `{"schema":1,"generation":1,"blobs":{"k":{"file":"k~2","size":1,"sha256":"` + zeros64 + `"}}}`,
	"other's file":   `{"schema":1,"generation":3,"blobs":{"k":{"file":"j~2","size":1,"sha256":"` + zeros64 + `"}}}`,
	"bad sha":        `{"schema":1,"generation":3,"blobs":{"k":{"file":"k~2","size":1,"sha256":"XYZ"}}}`,
	"negative size":  `{"schema":1,"generation":3,"blobs":{"k":{"file":"k~2","size":-1,"sha256":"` + zeros64 + `"}}}`,
}

const zeros64 = "0000000000000000000000000000000000000000000000000000000000000000"

func TestCorruptManifestRefusedAndUntouched(t *testing.T) {
	for name, content := range corruptManifests {
		t.Run(name, func(t *testing.T) {
			dir, blob := seedState(t, []byte(content))
			if _, err := Open(dir); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open = %v, want ErrCorrupt", err)
			}
			assertFile(t, filepath.Join(dir, ManifestFile), []byte(content))
			assertFile(t, blob, []byte("blob from the future"))
		})
	}
}

func TestCorruptBlobDetected(t *testing.T) {
	s := mustOpen(t, stateDir(t))
	must(t, s.Update(bg, func(tx *Tx) error { return tx.WriteBlob("k", []byte("wrapped key")) }))
	p := filepath.Join(s.Dir(), BlobDir, blobFileName("k", 1))
	must(t, os.WriteFile(p, []byte("wrapped kez"), 0o600))
	err := s.View(bg, func(tx *Tx) error { _, err := tx.ReadBlob("k"); return err })
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("ReadBlob of altered blob = %v, want ErrCorrupt", err)
	}
	must(t, os.Remove(p))
	err = s.View(bg, func(tx *Tx) error { _, err := tx.ReadBlob("k"); return err })
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("ReadBlob of missing blob = %v, want ErrCorrupt", err)
	}
}

func TestNamesValidated(t *testing.T) {
	outside := t.TempDir()
	dir := filepath.Join(outside, "state")
	s := mustOpen(t, dir)
	bad := []string{"", ".", "..", "../x", "../../escape", "a/b", "/abs", ".hidden", "-flag", "a~1",
		"a\x00b", "a b", "é", string(make([]byte, 129))}
	for _, name := range bad {
		err := s.Update(bg, func(tx *Tx) error {
			for _, op := range []func() error{
				func() error { return tx.WriteBlob(name, []byte("x")) },
				func() error { _, err := tx.ReadBlob(name); return err },
				func() error { return tx.RemoveBlob(name) },
				func() error { return tx.Put(name, 1) },
				func() error { _, err := tx.GetRaw(name); return err },
				func() error { return tx.Delete(name) },
			} {
				if err := op(); !errors.Is(err, ErrInvalidName) {
					t.Errorf("name %q: err %v, want ErrInvalidName", name, err)
				}
			}
			return nil
		})
		must(t, err)
	}
	ents, _ := os.ReadDir(outside)
	if len(ents) != 1 {
		t.Errorf("files appeared beside the state dir: %v", ents)
	}
	for _, good := range []string{"a", "pk.priv", "K_1-2.3", string(bytes.Repeat([]byte{'z'}, 128))} {
		if !ValidName(good) {
			t.Errorf("ValidName(%q) = false", good)
		}
	}
}

func TestGarbageCollectedOnOpen(t *testing.T) {
	s := mustOpen(t, stateDir(t))
	must(t, s.Update(bg, func(tx *Tx) error { return tx.WriteBlob("k", []byte("live")) }))
	bdir := filepath.Join(s.Dir(), BlobDir)
	for _, f := range []string{"k~2", "other~5", ".tmp-123"} {
		must(t, os.WriteFile(filepath.Join(bdir, f), []byte("leftover"), 0o600))
	}
	must(t, os.WriteFile(filepath.Join(s.Dir(), ".tmp-456"), []byte("leftover"), 0o600))
	// Files that are not ours are left alone.
	must(t, os.WriteFile(filepath.Join(bdir, "README"), []byte("not ours"), 0o600))
	s = mustOpen(t, s.Dir())
	assertOnlyLiveFiles(t, s, "README")
	if _, err := os.Stat(filepath.Join(s.Dir(), ".tmp-456")); !os.IsNotExist(err) {
		t.Errorf("temp manifest not collected: %v", err)
	}
}

// TestRemoveZeroes checks through a hard link that a removed blob's bytes were
// overwritten before the unlink.
func TestRemoveZeroes(t *testing.T) {
	s := mustOpen(t, stateDir(t))
	secret := []byte("TPM-wrapped key material")
	must(t, s.Update(bg, func(tx *Tx) error { return tx.WriteBlob("k", secret) }))
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Link(filepath.Join(s.Dir(), BlobDir, blobFileName("k", 1)), link); err != nil {
		t.Fatalf("hard link: %v", err)
	}
	must(t, s.Update(bg, func(tx *Tx) error { return tx.RemoveBlob("k") }))
	assertFile(t, link, make([]byte, len(secret)))

	// Replacing a blob zeroes the old generation too.
	must(t, s.Update(bg, func(tx *Tx) error { return tx.WriteBlob("k", secret) }))
	must(t, os.Link(filepath.Join(s.Dir(), BlobDir, blobFileName("k", 3)), link+"2"))
	must(t, s.Update(bg, func(tx *Tx) error { return tx.WriteBlob("k", []byte("new")) }))
	assertFile(t, link+"2", make([]byte, len(secret)))
}

func TestWipe(t *testing.T) {
	for _, withAudit := range []bool{false, true} {
		t.Run(fmt.Sprint("audit=", withAudit), func(t *testing.T) {
			s := mustOpen(t, stateDir(t))
			must(t, s.Update(bg, func(tx *Tx) error {
				must(t, tx.Put("o", "v"))
				return tx.WriteBlob("k", []byte("secret"))
			}))
			auditPath := filepath.Join(s.Dir(), AuditLogFile)
			must(t, os.WriteFile(auditPath, []byte("{}\n"), 0o600))
			link := filepath.Join(t.TempDir(), "link")
			must(t, os.Link(filepath.Join(s.Dir(), BlobDir, blobFileName("k", 1)), link))

			must(t, s.Wipe(bg, WipeOptions{Audit: withAudit}))

			assertFile(t, link, make([]byte, 6))
			var names []string
			ents, _ := os.ReadDir(s.Dir())
			for _, e := range ents {
				names = append(names, e.Name())
			}
			want := []string{LockFile}
			if !withAudit {
				want = append(want, AuditLogFile)
			}
			slices.Sort(want)
			if !slices.Equal(names, want) {
				t.Errorf("after Wipe: %v, want %v", names, want)
			}
			// The wiped store is an empty, usable store.
			s = mustOpen(t, s.Dir())
			assertGeneration(t, s, 0)
		})
	}
	// Wipe also clears state this build cannot read.
	dir, _ := seedState(t, []byte("garbage"))
	s := &Store{dir: dir, opts: Options{LockTimeout: time.Second}, sem: make(chan struct{}, 1)}
	must(t, s.Wipe(bg, WipeOptions{}))
	mustOpen(t, dir)
}

func TestAuditFileNameAgrees(t *testing.T) {
	if AuditLogFile != audit.FileName {
		t.Fatalf("store.AuditLogFile %q != audit.FileName %q", AuditLogFile, audit.FileName)
	}
}

func TestLockTimeout(t *testing.T) {
	dir := stateDir(t)
	mustOpen(t, dir)
	f, err := os.OpenFile(filepath.Join(dir, LockFile), os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	must(t, syscall.Flock(int(f.Fd()), syscall.LOCK_EX))
	start := time.Now()
	_, err = OpenOptions(dir, Options{LockTimeout: 200 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("Open with lock held = %v, want ErrLocked", err)
	}
	// Generous: only a hang would be a bug; loaded CI machines are slow.
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("bounded wait took %v", d)
	}
	// A cancelled context is reported as such, not as ErrLocked.
	s := &Store{dir: dir, opts: Options{LockTimeout: time.Minute}, sem: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(bg)
	cancel()
	if err := s.View(ctx, func(*Tx) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("View(cancelled) = %v", err)
	}
	must(t, syscall.Flock(int(f.Fd()), syscall.LOCK_UN))
	mustOpen(t, dir)
}

// increment is a read-modify-write that loses updates unless transactions
// are serialised and re-read the manifest under the lock.
func increment(s *Store) error {
	return s.Update(bg, func(tx *Tx) error {
		var n int
		if err := tx.Get("n", &n); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		b, err := tx.ReadBlob("log")
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		if err := tx.Put("n", n+1); err != nil {
			return err
		}
		return tx.WriteBlob("log", append(b, byte(n)))
	})
}

func checkCounter(t *testing.T, dir string, want int) {
	t.Helper()
	s := mustOpen(t, dir)
	must(t, s.View(bg, func(tx *Tx) error {
		var n int
		must(t, tx.Get("n", &n))
		b, err := tx.ReadBlob("log")
		must(t, err)
		if n != want || len(b) != want || tx.Generation() != uint64(want) {
			t.Errorf("n=%d len(log)=%d generation=%d, want %d", n, len(b), tx.Generation(), want)
		}
		for i := range b {
			if b[i] != byte(i) {
				t.Fatalf("log[%d] = %d: interleaved writes", i, b[i])
			}
		}
		return nil
	}))
	assertOnlyLiveFiles(t, s)
}

func TestConcurrentGoroutines(t *testing.T) {
	dir := stateDir(t)
	// This test is about serialisation, not about the timeout: on a loaded
	// machine a worker can lose the flock race for longer than the default.
	patient := Options{LockTimeout: time.Minute}
	shared, err := OpenOptions(dir, patient)
	must(t, err)
	const workers, each = 4, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := shared
			if w%2 == 0 {
				// Separate Stores compete through the flock alone.
				var err error
				if s, err = OpenOptions(dir, patient); err != nil {
					errs <- err
					return
				}
			}
			for range each {
				if err := increment(s); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	checkCounter(t, dir, workers*each)
}

func helperCmd(mode, dir string, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "PROVD_STORE_HELPER="+mode, "PROVD_STORE_DIR="+dir)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stderr = os.Stderr
	return cmd
}

func TestConcurrentProcesses(t *testing.T) {
	dir := stateDir(t)
	mustOpen(t, dir)
	const procs, each = 2, 25
	var cmds []*exec.Cmd
	for range procs {
		cmd := helperCmd("incr", dir, "PROVD_STORE_N="+strconv.Itoa(each))
		must(t, cmd.Start())
		cmds = append(cmds, cmd)
	}
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("child: %v", err)
		}
	}
	checkCounter(t, dir, procs*each)
}

// TestHelperProcess is not a test: it is the child process of the
// multi-process and crash tests, selected by PROVD_STORE_HELPER.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv("PROVD_STORE_HELPER")
	if mode == "" {
		return // not a child: nothing to do
	}
	dir := os.Getenv("PROVD_STORE_DIR")
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(2)
	}
	switch mode {
	case "incr":
		n, _ := strconv.Atoi(os.Getenv("PROVD_STORE_N"))
		s, err := OpenOptions(dir, Options{LockTimeout: time.Minute})
		if err != nil {
			fail(err)
		}
		for range n {
			if err := increment(s); err != nil {
				fail(err)
			}
		}
	case "loop":
		s, err := Open(dir)
		if err != nil {
			fail(err)
		}
		fmt.Println(helperOpened) // the parent's kill timer starts now
		for {
			if err := crashUpdate(s); err != nil {
				fail(err)
			}
		}
	case "step", "wipe-step":
		// Exit abruptly at the k-th durability step of one update, or of a
		// Wipe that also removes the audit log.
		k, _ := strconv.Atoi(os.Getenv("PROVD_STORE_STEP"))
		seen := 0
		s, err := OpenOptions(dir, Options{hook: func(string) {
			if seen++; seen == k {
				os.Exit(3)
			}
		}})
		if err != nil {
			fail(err)
		}
		if mode == "wipe-step" {
			err = s.Wipe(bg, WipeOptions{Audit: true})
		} else {
			err = crashUpdate(s)
		}
		if err != nil {
			fail(err)
		}
	default:
		fail(fmt.Errorf("unknown mode %q", mode))
	}
	os.Exit(0)
}

// crashUpdate moves the store from generation g to g+1 in a way that a test can
// check from the generation alone: object "gen" is g+1, object "expect" maps each
// blob to the generation that wrote it, and blob content is derived from both.
// Blobs are rewritten, kept, removed and re-added across generations.
func crashUpdate(s *Store) error {
	return s.Update(bg, func(tx *Tx) error {
		g := tx.Generation() + 1
		expect := map[string]uint64{}
		if err := tx.Get("expect", &expect); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		for i := range uint64(5) {
			name := fmt.Sprintf("b%d", i)
			switch {
			case (g+i)%4 == 0:
				delete(expect, name)
				if err := tx.RemoveBlob(name); err != nil {
					return err
				}
			case (g+i)%2 == 0 || expect[name] == 0:
				expect[name] = g
				if err := tx.WriteBlob(name, blobContent(name, g)); err != nil {
					return err
				}
			}
		}
		if err := tx.Put("expect", expect); err != nil {
			return err
		}
		return tx.Put("gen", g)
	})
}

func blobContent(name string, gen uint64) []byte {
	return bytes.Repeat([]byte(fmt.Sprintf("%s@%d;", name, gen)), 1000+int(gen%7)*900)
}

// checkConsistent asserts the state is exactly one generation's: its objects
// agree with the generation and every blob it expects is present and intact.
func checkConsistent(t *testing.T, dir string) uint64 {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatalf("Open after crash: %v", err)
	}
	var gen uint64
	must(t, s.View(bg, func(tx *Tx) error {
		gen = tx.Generation()
		if gen == 0 {
			if len(tx.Blobs()) != 0 || len(tx.Objects()) != 0 {
				t.Errorf("generation 0 with content")
			}
			return nil
		}
		var g uint64
		expect := map[string]uint64{}
		must(t, tx.Get("gen", &g))
		must(t, tx.Get("expect", &expect))
		if g != gen {
			t.Errorf("object gen %d in generation %d", g, gen)
		}
		if !slices.Equal(tx.Blobs(), sortedKeys(expect)) {
			t.Errorf("generation %d: blobs %v, expected %v", gen, tx.Blobs(), sortedKeys(expect))
		}
		for name, wg := range expect {
			b, err := tx.ReadBlob(name)
			if err != nil {
				t.Errorf("generation %d: %v", gen, err)
			} else if !bytes.Equal(b, blobContent(name, wg)) {
				t.Errorf("generation %d: blob %s content wrong", gen, name)
			}
		}
		return nil
	}))
	assertOnlyLiveFiles(t, s)
	return gen
}

// helperOpened is the line the "loop" child prints once it has opened the store.
const helperOpened = "store opened"

// waitLine reads r until a line equal to want (true) or its end (false).
func waitLine(r io.Reader, want string) bool {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if sc.Text() == want {
			return true
		}
	}
	return false
}

// TestCrashKill kills a writer with SIGKILL at random moments. The page cache
// survives SIGKILL, so this checks the protocol's ordering and the recovery
// on Open, not power-loss durability (the fsyncs are for that).
func TestCrashKill(t *testing.T) {
	dir := stateDir(t)
	mustOpen(t, dir)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	deadline := time.Now().Add(6 * time.Second)
	var last uint64
	for i := 0; i < 30 && time.Now().Before(deadline); i++ {
		cmd := helperCmd("loop", dir)
		cmd.Stderr = nil
		opened, err := cmd.StdoutPipe()
		must(t, err)
		must(t, cmd.Start())
		// The kill lands at a random moment of the updates, counted from the
		// child's Open: a child built with -race on a loaded machine can
		// take longer to start than any fixed delay.
		if !waitLine(opened, helperOpened) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal("child did not open the store")
		}
		time.Sleep(time.Duration(rng.IntN(60)) * time.Millisecond)
		must(t, cmd.Process.Signal(syscall.SIGKILL))
		err = cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("child ended with %v, not SIGKILL", err)
		}
		gen := checkConsistent(t, dir)
		if gen < last {
			t.Fatalf("generation went back from %d to %d", last, gen)
		}
		last = gen
	}
	t.Logf("reached generation %d", last)
	if last == 0 {
		t.Error("no update ever committed; the test did not exercise anything")
	}
}

// TestCrashAtEachStep stops a child at every durability step of one update in
// turn and checks the state is the old generation or the new one.
func TestCrashAtEachStep(t *testing.T) {
	base := t.TempDir()
	for k := 1; ; k++ {
		if k > 100 {
			t.Fatal("update never completed")
		}
		dir := filepath.Join(base, strconv.Itoa(k))
		s := mustOpen(t, dir)
		for range 3 {
			must(t, crashUpdate(s))
		}
		err := helperCmd("step", dir, "PROVD_STORE_STEP="+strconv.Itoa(k)).Run()
		gen := checkConsistent(t, dir)
		if err == nil {
			if gen != 4 {
				t.Fatalf("completed update left generation %d", gen)
			}
			t.Logf("%d crash points checked", k-1)
			return
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Fatalf("step %d: child: %v", k, err)
		}
		if gen != 3 && gen != 4 {
			t.Fatalf("step %d: generation %d, want 3 or 4", k, gen)
		}
	}
}

func FuzzManifest(f *testing.F) {
	for _, c := range corruptManifests {
		f.Add([]byte(c))
	}
	good := newManifest()
	good.Generation = 4
	good.Objects["pk"] = json.RawMessage(`{"handle": 2164260866}`)
	good.Blobs["pk.priv"] = blobRef{File: "pk.priv~3", Size: 10, SHA256: zeros64}
	b, _ := good.marshal()
	f.Add(b)
	f.Add([]byte(`{"schema":2}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseManifest(data)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnknownSchema) {
				t.Fatalf("error neither ErrCorrupt nor ErrUnknownSchema: %v", err)
			}
			return
		}
		// Whatever parses must survive our own write/read cycle unchanged.
		out, err := m.marshal()
		if err != nil {
			t.Fatal(err)
		}
		m2, err := parseManifest(out)
		if err != nil {
			t.Fatalf("re-parse of our own output: %v\n%s", err, out)
		}
		out2, _ := m2.marshal()
		if !bytes.Equal(out, out2) {
			t.Fatalf("not stable:\n%s\n%s", out, out2)
		}
	})
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func assertFile(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s changed:\n got %q\nwant %q", path, got, want)
	}
}

func assertGeneration(t *testing.T, s *Store, want uint64) {
	t.Helper()
	must(t, s.View(bg, func(tx *Tx) error {
		if tx.Generation() != want {
			t.Errorf("generation %d, want %d", tx.Generation(), want)
		}
		return nil
	}))
}

// assertOnlyLiveFiles checks blobs/ holds exactly the manifest's files (plus
// the named foreign ones).
func assertOnlyLiveFiles(t *testing.T, s *Store, foreign ...string) {
	t.Helper()
	m, _, err := s.readManifest()
	must(t, err)
	want := slices.Clone(foreign)
	for _, r := range m.Blobs {
		want = append(want, r.File)
	}
	var got []string
	ents, _ := os.ReadDir(filepath.Join(s.Dir(), BlobDir))
	for _, e := range ents {
		got = append(got, e.Name())
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("blobs dir %v, manifest references %v", got, want)
	}
}

// A Wipe interrupted right after its first step (the manifest renamed to a
// temp name) leaves a valid, empty store: the renamed manifest and the
// leftover blob files are collected, never reported as corrupt.
func TestWipeInterruptedAfterManifest(t *testing.T) {
	dir := stateDir(t)
	s := mustOpen(t, dir)
	must(t, s.Update(bg, func(tx *Tx) error {
		if err := tx.Put("pk", map[string]string{"name": "x"}); err != nil {
			return err
		}
		return tx.WriteBlob("pk", []byte("wrapped"))
	}))
	// The state Wipe's first step leaves, then a crash.
	renamed := filepath.Join(dir, tmpPrefix+"wipe")
	must(t, os.Rename(filepath.Join(dir, ManifestFile), renamed))
	s2 := mustOpen(t, dir)
	must(t, s2.View(bg, func(tx *Tx) error {
		if len(tx.Objects()) != 0 || len(tx.Blobs()) != 0 {
			t.Errorf("objects %v blobs %v after an interrupted wipe", tx.Objects(), tx.Blobs())
		}
		return nil
	}))
	if ents, _ := os.ReadDir(filepath.Join(dir, BlobDir)); len(ents) != 0 {
		t.Errorf("blob files left: %v", ents)
	}
	if _, err := os.Stat(renamed); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("renamed manifest not collected: %v", err)
	}
}

// TestWipeCrashAtEachStep stops a child at every step of a Wipe in turn and
// checks that the store opens afterwards, holding the old generation or
// nothing, that no temp file survives the Open, and that the audit log is
// intact or gone, never zeroed.
func TestWipeCrashAtEachStep(t *testing.T) {
	base := t.TempDir()
	auditLine := []byte(`{"seq":1}` + "\n")
	for k := 1; ; k++ {
		if k > 100 {
			t.Fatal("wipe never completed")
		}
		dir := filepath.Join(base, strconv.Itoa(k))
		s := mustOpen(t, dir)
		for range 3 {
			must(t, crashUpdate(s))
		}
		auditPath := filepath.Join(dir, AuditLogFile)
		must(t, os.WriteFile(auditPath, auditLine, 0o600))
		err := helperCmd("wipe-step", dir, "PROVD_STORE_STEP="+strconv.Itoa(k)).Run()
		gen := checkConsistent(t, dir)
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), tmpPrefix) {
				t.Errorf("step %d: %s left after Open", k, e.Name())
			}
		}
		if b, rerr := os.ReadFile(auditPath); rerr == nil && !bytes.Equal(b, auditLine) {
			t.Errorf("step %d: audit log is %q, want intact or absent", k, b)
		} else if rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			t.Fatal(rerr)
		}
		if err == nil {
			if gen != 0 {
				t.Fatalf("completed wipe left generation %d", gen)
			}
			t.Logf("%d crash points checked", k-1)
			return
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Fatalf("step %d: child: %v", k, err)
		}
		if gen != 3 && gen != 0 {
			t.Fatalf("step %d: generation %d, want 3 or 0", k, gen)
		}
	}
}

// TestManifestCacheSeesEveryChange (issue 14): reads on an unchanged
// manifest use the one parsed last, but a commit by another process, and
// a change written in place with its modification time set back (as only
// the file's owner can), are read again: the cache never hides a change.
func TestManifestCacheSeesEveryChange(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := mustOpen(t, dir)
	put := func(st *Store, v string) {
		t.Helper()
		must(t, st.Update(bg, func(tx *Tx) error { return tx.Put("k", v) }))
	}
	get := func() (string, error) {
		var v string
		err := s.View(bg, func(tx *Tx) error { return tx.Get("k", &v) })
		return v, err
	}
	put(s, "aaaa")
	for range 3 {
		if v, err := get(); err != nil || v != "aaaa" {
			t.Fatalf("%q %v", v, err)
		}
	}
	put(mustOpen(t, dir), "bbbb") // another process's commit
	if v, err := get(); err != nil || v != "bbbb" {
		t.Fatalf("after another store's commit: %q %v", v, err)
	}
	path := filepath.Join(dir, ManifestFile)
	fi, err := os.Stat(path)
	must(t, err)
	b, err := os.ReadFile(path)
	must(t, err)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteAt(bytes.Replace(b, []byte(`"bbbb"`), []byte(`"cccc"`), 1), 0)
	must(t, err)
	must(t, f.Close())
	must(t, os.Chtimes(path, fi.ModTime(), fi.ModTime()))
	if v, err := get(); err != nil || v != "cccc" {
		t.Fatalf("after a change in place, mtime set back: %q %v", v, err)
	}
	// A read-only transaction cannot change what later ones read.
	must(t, s.View(bg, func(tx *Tx) error {
		if err := tx.Put("k", "dddd"); !errors.Is(err, ErrReadOnly) {
			t.Errorf("Put in a View: %v", err)
		}
		return nil
	}))
	if v, err := get(); err != nil || v != "cccc" {
		t.Fatalf("%q %v", v, err)
	}
}
