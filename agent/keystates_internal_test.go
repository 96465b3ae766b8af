package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
)

// The attacks on keyStates (issue 14: what key uses read from the state is
// kept per committed state). Each warms the cache with a sign first, so
// that a stale entry would be used if anything trusted it.

// After DeleteKey returns, no TPM2_Sign is sent, whatever the signers that
// raced it had read: signers run in a loop while the key is deleted, and
// the bus fails the test on any Sign after the delete returned.
func TestNoSignAfterDeleteReturns(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	a := keptAgent(t, env)
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	var deleted atomic.Bool
	var late atomic.Int64
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if isSign(cmd) && deleted.Load() {
			late.Add(1)
		}
		return nil, nil, false
	})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var signed atomic.Int64
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := signK(a); err == nil {
					signed.Add(1)
				} else if !errors.Is(err, api.ErrNotFound) {
					t.Errorf("sign: %v", err)
					return
				}
			}
		}()
	}
	for deadline := time.Now().Add(20 * time.Second); signed.Load() < 20; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			close(stop)
			wg.Wait()
			t.Fatalf("%d signs in 20 s before the delete", signed.Load())
		}
	}
	if err := a.DeleteKey(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	deleted.Store(true)
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()
	if n := late.Load(); n != 0 {
		t.Fatalf("%d TPM2_Sign sent after key delete returned", n)
	}
	if _, err := signK(a); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("sign after delete: %v, want ErrNotFound", err)
	}
}

// Another process's change on disk is seen by the next request: the key's
// record is deleted through a store of its own (another process's view of
// the directory, with its own caches), and the agent that just signed with
// the key refuses the next sign.
func TestOtherProcessChangeSeen(t *testing.T) {
	env := swtpmtest.Start(t)
	a := keptAgent(t, env)
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	other, err := store.Open(a.dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Update(context.Background(), func(tx *store.Tx) error {
		if err := tx.Delete(keyRecName("k")); err != nil {
			return err
		}
		return tx.RemoveBlob(keyRecName("k"))
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := signK(a); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("sign after another process deleted the key: %v, want ErrNotFound", err)
	}
}

// A manifest replaced in place by a different one of the same size, its
// modification time put back, on the same inode (so that only the bytes
// differ; with a coarse clock its ctime may not): the next request reads
// the new one. Here the key's record is renamed from "k" to "j".
func TestSameSizeSameMtimeManifestSeen(t *testing.T) {
	env := swtpmtest.Start(t)
	a := keptAgent(t, env)
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(a.dir, store.ManifestFile)
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	from, to := []byte(`"`+keyRecName("k")+`"`), []byte(`"`+keyRecName("j")+`"`)
	if bytes.Count(old, from) != 2 { // the record and its blob
		t.Fatalf("the manifest names %s %d times", from, bytes.Count(old, from))
	}
	replaced := bytes.ReplaceAll(old, from, to)
	replaced = bytes.ReplaceAll(replaced, []byte(keyRecName("k")+"~"), []byte(keyRecName("j")+"~"))
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(replaced, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// The blob file follows its new name, as a commit would have it.
	blobs, _ := filepath.Glob(filepath.Join(a.dir, store.BlobDir, keyRecName("k")+"~*"))
	for _, bf := range blobs {
		if err := os.Rename(bf, filepath.Join(filepath.Dir(bf), keyRecName("j")+filepath.Base(bf)[len(keyRecName("k")):])); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chtimes(p, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if nfi, err := os.Stat(p); err != nil || nfi.Size() != fi.Size() || !nfi.ModTime().Equal(fi.ModTime()) {
		t.Fatalf("the replaced manifest: %v, size %d mtime %v; want %d %v", err, nfi.Size(), nfi.ModTime(), fi.Size(), fi.ModTime())
	}
	if _, err := signK(a); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("sign of k after its record became j's: %v, want ErrNotFound", err)
	}
	d := sha256.Sum256([]byte("kept"))
	if _, err := a.Sign(context.Background(), "j", d[:], api.SignOptions{}); err != nil {
		t.Fatalf("sign with j, the same key under its new record: %v", err)
	}
}

// A kept state is never a load's: a key the TPM no longer holds is loaded
// from blobs read and checked in that operation. The key's blob file is
// corrupted under an unchanged manifest and the key evicted: the next sign
// reads the blob again and refuses it (ErrCorrupt), as it did before
// anything was kept, rather than load the copy kept from the last read.
func TestKeptStateNeverLoads(t *testing.T) {
	env := swtpmtest.Start(t)
	a := keptAgent(t, env)
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	blobs, err := filepath.Glob(filepath.Join(a.dir, store.BlobDir, keyRecName("k")+"~*"))
	if err != nil || len(blobs) != 1 {
		t.Fatalf("the key's blob file: %v %v", blobs, err)
	}
	b, err := os.ReadFile(blobs[0])
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 1
	if err := os.WriteFile(blobs[0], b, 0o600); err != nil {
		t.Fatal(err)
	}
	// The key still resident: the kept state serves, the blob is not needed.
	if _, err := signK(a); err != nil {
		t.Fatalf("warm sign, the key resident: %v", err)
	}
	a.mu.Lock()
	err = a.keys.Drop("k")
	a.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := signK(a); !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("sign that must load the key from a corrupted blob: %v, want ErrCorrupt", err)
	}
}
