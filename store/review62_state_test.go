package store

// Review 62: the state directory (manifest, blobs by generation, the Hold
// lock) attacked by a user who owns the directory above it, by A4/A6
// substituting files, and by a holder of the Hold lock that is killed.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// FLAW (failed before the mend): the state directory is checked once, at Open, and only itself (mode
// 0700, owned by the caller); the directories above it are not. Attacker: a
// local user who owns (or may write, without the sticky bit) the state
// directory's parent: a state_dir configured under a directory of the
// provd group's, a home or build directory, a hand start with --state
// somewhere shared. After provd opened the state, that user renames the
// private directory away and puts one of its own (mode 0777, its files) at
// the name; every later transaction of the same Store (the daemon's, for
// its whole life) reads the attacker's manifest.json and blobs: records
// that decide which key, policy, officer or signer provd uses. systemd.Listen
// refuses exactly this for the daemon's socket (trustedWalk, review 54);
// the state has no such walk. Suggested fix: at Open, walk every directory
// and link on the way as systemd.trustedWalk does (root- or caller-owned, not
// writable by others unless sticky); keep an O_DIRECTORY|O_NOFOLLOW
// descriptor of the state directory and do every open, rename and fsync
// relative to it (openat), or at least re-run checkPrivate (with the walk)
// under the lock at every transaction.
func TestReview62StateDirUnderAnotherUsersDirectory(t *testing.T) {
	parent := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(parent, review62Other, review62Other); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(parent, "state")
	s, err := Open(dir)
	if err == nil {
		t.Errorf("Open accepted a state directory inside a directory owned by uid %d", review62Other)
	} else if !errors.Is(err, ErrInsecureDir) {
		t.Fatalf("Open: %v, want ErrInsecureDir", err)
	}
	if s == nil {
		return // refused, as it should be
	}
	if err := s.Update(bg, func(tx *Tx) error { return tx.Put("pk", map[string]string{"signer": "officer"}) }); err != nil {
		t.Fatal(err)
	}
	// What the parent's owner may do (it owns the parent: rename and mkdir
	// there need no more); done here by the test, which is root.
	if err := os.Rename(dir, filepath.Join(parent, "moved")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	planted := `{"schema":1,"generation":7,"objects":{"pk":{"signer":"attacker"}},"blobs":{}}`
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), []byte(planted), 0o666); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, filepath.Join(dir, ManifestFile)} {
		if err := os.Chown(p, review62Other, review62Other); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	var got []byte
	err = s.View(bg, func(tx *Tx) error {
		var err error
		got, err = tx.GetRaw("pk")
		return err
	})
	if err == nil {
		t.Errorf("after the swap the open Store read the other user's manifest: pk = %s", got)
	}
}

// Held: a blob of an older generation (or any other bytes) put at the
// current generation's file name is refused (ErrCorrupt), and so is one
// put back at its old name while the manifest names the new: the manifest
// names each blob's file, size and SHA-256, and the read checks both.
// Attacker: A4 (root with the state), A6 (a copy of the state taken earlier,
// its old blob files). Not covered, and not claimed: restoring a whole
// older copy (manifest and its blobs together) is an older valid state;
// what stops its use is the TPM (counters, the audit anchor), not the store.
func TestReview62OlderGenerationBlobRefused(t *testing.T) {
	dir := stateDir(t)
	s := mustOpen(t, dir)
	put := func(b string) {
		must(t, s.Update(bg, func(tx *Tx) error { return tx.WriteBlob("k", []byte(b)) }))
	}
	put("generation one: the wrapped key before its rotation")
	old, err := os.ReadFile(filepath.Join(dir, BlobDir, "k~1"))
	must(t, err)
	put("generation two: the rotated key")
	if _, err := os.Stat(filepath.Join(dir, BlobDir, "k~1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("generation 1's file survived the commit of generation 2: %v", err)
	}
	for _, name := range []string{"k~2", "k~1"} {
		must(t, os.WriteFile(filepath.Join(dir, BlobDir, name), old, 0o600))
		err := s.View(bg, func(tx *Tx) error {
			b, err := tx.ReadBlob("k")
			if err == nil && string(b) != "generation two: the rotated key" {
				t.Errorf("with generation 1's bytes at %s, ReadBlob gave %q", name, b)
			}
			return err
		})
		if name == "k~2" && !errors.Is(err, ErrCorrupt) {
			t.Errorf("generation 1's bytes at k~2: %v, want ErrCorrupt", err)
		}
		if name == "k~1" && err != nil {
			// k~2 is still the old bytes: corrupt, as above; nothing reads k~1.
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("with k~1 planted too: %v", err)
			}
		}
	}
}

// FLAW (failed before the mend): the manifest and the blobs are read with no bound and no check of
// what they are. A FIFO at manifest.json or at a blob's file blocks the
// read in open(2) for ever, with the store's flock and the process's
// transaction slot held, so every later transaction of every provd process
// fails ErrLocked (the daemon answers nothing that touches the state, and no
// context or timeout ends it: the open is not cancellable); a sparse file
// of any size at manifest.json or a blob is read whole (allocated) before
// its size is compared with the manifest's (a 64 MiB manifest.json costs
// about 375 MiB of allocation: readFile grows its buffer a byte past full,
// by a quarter each time, and every step copies). Attacker: A4 (root with the
// state directory) or anything running as the daemon's user, and whatever
// restores or syncs the state directory from elsewhere (A6's copy coming
// back). Gain: a daemon wedged for good under its lock, or driven out of
// memory, by one file; review 48 held the same plants (a FIFO, a device)
// at .hold.lock. Suggested fix: open every state file with
// O_NOFOLLOW|O_NONBLOCK, fstat the descriptor and refuse what is not a
// regular file (ErrCorrupt); refuse a blob whose size differs from the
// manifest's before reading it, and read at most ref.Size+1 bytes; bound
// manifest.json (16 MiB is far above any real state).
func TestReview62StateFilesReadWithoutBounds(t *testing.T) {
	setup := func(t *testing.T) (string, *Store) {
		dir := stateDir(t)
		s := mustOpen(t, dir)
		must(t, s.Update(bg, func(tx *Tx) error { return tx.WriteBlob("k", []byte("wrapped key")) }))
		return dir, s
	}
	// within runs fn and reports whether it returned within d; unblock is
	// called if not, and fn is then waited for (bounded) so nothing leaks.
	within := func(t *testing.T, d time.Duration, fn func() error, unblock func()) (bool, error) {
		done := make(chan error, 1)
		go func() { done <- fn() }()
		select {
		case err := <-done:
			return true, err
		case <-time.After(d):
			unblock()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("the blocked read did not end after its FIFO was opened for writing")
			}
			return false, nil
		}
	}
	openWriterOnce := func(p string) func() {
		return func() {
			if f, err := os.OpenFile(p, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
				f.Close()
			}
		}
	}

	t.Run("fifo at manifest.json", func(t *testing.T) {
		dir, s := setup(t)
		p := filepath.Join(dir, ManifestFile)
		must(t, os.Remove(p))
		must(t, syscall.Mkfifo(p, 0o600))
		ok, err := within(t, 3*time.Second, func() error { return s.View(bg, func(*Tx) error { return nil }) }, openWriterOnce(p))
		if !ok {
			t.Errorf("View blocked (over 3s, under the state lock) on a FIFO at %s", ManifestFile)
		} else if !errors.Is(err, ErrCorrupt) {
			t.Errorf("View with a FIFO at %s: %v, want ErrCorrupt", ManifestFile, err)
		}
	})

	t.Run("fifo at a blob", func(t *testing.T) {
		dir, s := setup(t)
		p := filepath.Join(dir, BlobDir, "k~1")
		must(t, os.Remove(p))
		must(t, syscall.Mkfifo(p, 0o600))
		ok, err := within(t, 3*time.Second, func() error {
			return s.View(bg, func(tx *Tx) error { _, err := tx.ReadBlob("k"); return err })
		}, openWriterOnce(p))
		if !ok {
			t.Errorf("ReadBlob blocked (over 3s, under the state lock) on a FIFO at the blob's file")
		} else if !errors.Is(err, ErrCorrupt) {
			t.Errorf("ReadBlob of a FIFO: %v, want ErrCorrupt", err)
		}
	})

	const huge = 64 << 20
	allocated := func(fn func()) uint64 {
		var a, b runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&a)
		fn()
		runtime.ReadMemStats(&b)
		return b.TotalAlloc - a.TotalAlloc
	}
	t.Run("sparse blob of 64 MiB", func(t *testing.T) {
		dir, s := setup(t)
		must(t, os.Truncate(filepath.Join(dir, BlobDir, "k~1"), huge))
		var err error
		n := allocated(func() {
			err = s.View(bg, func(tx *Tx) error { _, err := tx.ReadBlob("k"); return err })
		})
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("ReadBlob of a 64 MiB file named as 11 bytes: %v, want ErrCorrupt", err)
		}
		if n > 16<<20 {
			t.Errorf("refusing a blob the manifest names as 11 bytes allocated %d MiB", n>>20)
		}
	})
	t.Run("sparse manifest of 64 MiB", func(t *testing.T) {
		dir, s := setup(t)
		must(t, os.Truncate(filepath.Join(dir, ManifestFile), huge))
		var err error
		n := allocated(func() { err = s.View(bg, func(*Tx) error { return nil }) })
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("View of a 64 MiB manifest: %v, want ErrCorrupt", err)
		}
		if n > 32<<20 {
			t.Errorf("refusing a 64 MiB manifest allocated %d MiB", n>>20)
		}
	})
}

// Held: the Hold lock is the kernel's flock, so it dies with its holder: a
// provd killed (SIGKILL, OOM) while holding it leaves no stale lock, and
// the next Hold takes it at once; a process the holder started (a helper it
// execs) does not inherit it (O_CLOEXEC), so once the holder releases it,
// another process takes it although that child still runs. Attacker: none,
// a crash; and a long-lived child keeping a sequence's lock.
func TestReview62HoldDiesWithItsHolder(t *testing.T) {
	start := func(t *testing.T, dir string, spawn bool) (*exec.Cmd, *bufio.Scanner, io.WriteCloser) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestReview62HoldHelper$", "-test.count=1")
		cmd.Env = append(os.Environ(), "PROVD_R62_HOLD="+dir, fmt.Sprintf("PROVD_R62_SPAWN=%t", spawn))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		must(t, err)
		in, err := cmd.StdinPipe()
		must(t, err)
		must(t, cmd.Start())
		t.Cleanup(func() { in.Close(); cmd.Process.Kill(); cmd.Wait() })
		return cmd, bufio.NewScanner(out), in
	}
	await := func(t *testing.T, sc *bufio.Scanner, want string) {
		t.Helper()
		got := make(chan bool, 1)
		go func() {
			for sc.Scan() {
				if sc.Text() == want {
					got <- true
					return
				}
			}
			got <- false
		}()
		select {
		case ok := <-got:
			if !ok {
				t.Fatalf("the child ended before %q", want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("the child did not say %q within 30s", want)
		}
	}

	t.Run("holder killed", func(t *testing.T) {
		dir := stateDir(t)
		mustOpen(t, dir)
		cmd, sc, _ := start(t, dir, false)
		await(t, sc, "held")
		s, err := OpenOptions(dir, Options{LockTimeout: 200 * time.Millisecond})
		must(t, err)
		if _, err := s.Hold(context.Background()); !errors.Is(err, ErrLocked) {
			t.Fatalf("Hold while the child holds it: %v, want ErrLocked", err)
		}
		must(t, cmd.Process.Signal(syscall.SIGKILL))
		cmd.Wait()
		s, err = OpenOptions(dir, Options{LockTimeout: 5 * time.Second})
		must(t, err)
		un, err := s.Hold(context.Background())
		if err != nil {
			t.Fatalf("Hold after its holder was killed: %v", err)
		}
		un()
	})

	t.Run("child of the holder", func(t *testing.T) {
		dir := stateDir(t)
		mustOpen(t, dir)
		_, sc, _ := start(t, dir, true)
		await(t, sc, "released") // the grandchild runs on
		s, err := OpenOptions(dir, Options{LockTimeout: 2 * time.Second})
		must(t, err)
		un, err := s.Hold(context.Background())
		if err != nil {
			t.Fatalf("Hold after the holder released it, its child still running: %v", err)
		}
		un()
	})
}

// TestReview62HoldHelper is not a test: it is the child process of
// TestReview62HoldDiesWithItsHolder, selected by PROVD_R62_HOLD (and the
// grandchild, by PROVD_R62_BLOCK). Each ends when its stdin closes.
func TestReview62HoldHelper(t *testing.T) {
	if os.Getenv("PROVD_R62_BLOCK") != "" {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}
	dir := os.Getenv("PROVD_R62_HOLD")
	if dir == "" {
		return // not a child: nothing to do
	}
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(2)
	}
	s, err := Open(dir)
	if err != nil {
		fail(err)
	}
	un, err := s.Hold(context.Background())
	if err != nil {
		fail(err)
	}
	fmt.Println("held")
	if os.Getenv("PROVD_R62_SPAWN") == "true" {
		gc := exec.Command(os.Args[0], "-test.run=^TestReview62HoldHelper$", "-test.count=1")
		gc.Env = append(os.Environ(), "PROVD_R62_HOLD=", "PROVD_R62_BLOCK=1")
		gc.Stdin = os.Stdin // ends with ours
		if err := gc.Start(); err != nil {
			fail(err)
		}
		un()
		fmt.Println("released")
	}
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}
