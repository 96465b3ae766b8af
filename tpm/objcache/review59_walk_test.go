package objcache_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
	"github.com/provd/provd/tpm/objcache"
)

// Held: callers taking turns on one cache (the daemon's: one name per key,
// many callers' keys), in an order chosen to make one evict another's
// object (each miss evicts every resident object, a key named with another
// id is dropped, Trim and EvictResident between operations), across a
// connection lost with the TPM's objects kept (Migrate) and a power cut
// after which another client (A2, first on the TPM's socket) loads an
// object of its own at the number the cache held. Attacker: another local
// caller of the daemon trying to grow the cache past its bounds or evict
// another's key for good, and A2 trying to have its object served (and
// then flushed) as provd's. Every Get that serves an object serves the one
// its name and id were Put with (read back from the TPM); the cache never
// holds more than MaxResident loaded nor more than MaxSaved names; the TPM
// holds no transient object but the cache's and A2's; A2's object is never
// flushed; every name evicted is served again (from its context or a new
// load), never refused for good.
func TestReview59EvictionWalkServesOnlyWhatWasPut(t *testing.T) {
	env := swtpmtest.Start(t)
	env.RequireSimulator()
	env.NoLeakCheck() // A2's object is not the cache's to flush
	tp := env.TPM
	const maxRes, maxSaved, keys = 2, 4, 6
	c := objcache.New(tp, objcache.Options{MaxResident: maxRes, MaxSaved: maxSaved})
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	var blobs []tpm.Blob
	var names [][]byte
	for range keys {
		b, err := tp.Create(srk, nil, eccKey, tpm.Sensitive{})
		if err != nil {
			t.Fatal(err)
		}
		o, err := tp.Load(srk, nil, b)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, o.Name.Buffer)
		if err := tp.Flush(o.Handle); err != nil {
			t.Fatal(err)
		}
		blobs = append(blobs, b)
	}
	var plant tpm2.TPMHandle
	check := func(step int) {
		t.Helper()
		if r := c.Resident(); r > maxRes {
			t.Fatalf("step %d: %d resident, bound %d", step, r, maxRes)
		}
		if n := len(c.Names()); n > maxSaved {
			t.Fatalf("step %d: %d names kept, bound %d", step, n, maxSaved)
		}
		hs, err := tp.Handles(tpm.TransientHandles)
		if err != nil {
			t.Fatal(err)
		}
		want := c.Handles()
		if plant != 0 {
			if !slices.Contains(hs, plant) {
				t.Fatalf("step %d: A2's object at 0x%08x was flushed", step, uint32(plant))
			}
			want = append(want, plant)
		}
		slices.Sort(hs)
		slices.Sort(want)
		if !slices.Equal(hs, want) {
			t.Fatalf("step %d: TPM holds %x, the cache (and A2) %x", step, hs, want)
		}
	}
	use := func(step, i int) {
		t.Helper()
		name, id := fmt.Sprintf("key%d", i), fmt.Sprintf("id%d", i)
		o, ok, err := c.Get(name, id)
		if err != nil {
			t.Fatalf("step %d: get %s: %v", step, name, err)
		}
		if ok {
			if string(o.Name.Buffer) != string(names[i]) {
				t.Fatalf("step %d: %s served with another name", step, name)
			}
			rp, err := tp.ReadPublic(o.Handle)
			if err != nil || string(rp.Name.Buffer) != string(names[i]) {
				t.Fatalf("step %d: %s served at 0x%08x, which holds another object (%v)", step, name, uint32(o.Handle), err)
			}
			return
		}
		if err := c.EvictResident(); err != nil {
			t.Fatalf("step %d: evict: %v", step, err)
		}
		o, err = tp.Load(srk, nil, blobs[i])
		if err != nil {
			t.Fatalf("step %d: load %s: %v", step, name, err)
		}
		c.Put(name, id, o)
	}
	rng := rand.New(rand.NewPCG(59, 59))
	for step := range 160 {
		switch {
		case step == 60:
			env.Migrate() // the connection breaks, the objects stay
		case step == 110:
			// A power cut; A2 connects first and loads an object of its
			// own (another key) at the number the cache last held.
			held := c.Handles()
			env.PowerCut()
			a2, err := tpm.Open(context.Background(), tpm.Options{Spec: env.Spec})
			if err != nil {
				t.Fatal(err)
			}
			a2srk, err := a2.SRK()
			if err != nil {
				t.Fatal(err)
			}
			b, err := a2.Create(a2srk, nil, eccKey, tpm.Sensitive{})
			if err != nil {
				t.Fatal(err)
			}
			o, err := a2.Load(a2srk, nil, b)
			if err != nil {
				t.Fatal(err)
			}
			plant = o.Handle
			if err := a2.Close(); err != nil {
				t.Fatal(err)
			}
			if len(held) > 0 && !slices.Contains(held, plant) {
				t.Logf("A2's object is at 0x%08x, the cache held %x", uint32(plant), held)
			}
		}
		switch r := rng.IntN(20); {
		case r == 0:
			if err := c.Trim(1); err != nil {
				t.Fatalf("step %d: trim: %v", step, err)
			}
		case r == 1:
			if err := c.EvictResident(); err != nil {
				t.Fatalf("step %d: evict: %v", step, err)
			}
		case r == 2:
			// A name asked for with another id (a key replaced under
			// it): never served, its handle flushed.
			i := rng.IntN(keys)
			if _, ok, err := c.Get(fmt.Sprintf("key%d", i), "replaced"); ok || err != nil {
				t.Fatalf("step %d: key%d served for another id (%v)", step, i, err)
			}
		default:
			use(step, rng.IntN(keys))
		}
		check(step)
	}
	// Every key is served again, whoever evicted it.
	for i := range keys {
		use(1000+i, i)
		check(1000 + i)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	hs, err := tp.Handles(tpm.TransientHandles)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(hs, []tpm2.TPMHandle{plant}) {
		t.Fatalf("after Close the TPM holds %x, want A2's 0x%08x only", hs, uint32(plant))
	}
	if err := tp.Flush(plant); err != nil { // the test's own cleanup
		t.Fatal(err)
	}
}
