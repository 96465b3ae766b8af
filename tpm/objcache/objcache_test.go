package objcache_test

import (
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
	"github.com/provd/provd/tpm/objcache"
)

// eccKey is a signing key template under the SRK.
var eccKey = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true, SignEncrypt: true, NoDA: true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		CurveID: tpm2.TPMECCNistP256,
		Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
	}),
}

// load loads n fresh keys under the SRK; the caller owns them.
func load(t *testing.T, tp *tpm.TPM, n int) []tpm.Object {
	t.Helper()
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	var objs []tpm.Object
	for range n {
		b, err := tp.Create(srk, nil, eccKey, tpm.Sensitive{})
		if err != nil {
			t.Fatal(err)
		}
		o, err := tp.Load(srk, nil, b)
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o)
	}
	return objs
}

// Objects put in the cache come back resident, through ContextLoad once
// evicted; at most MaxResident stay loaded while others are served; a name
// asked for with another id is dropped and its handle flushed; Close leaves
// nothing in the TPM (the harness checks every handle at the end).
func TestCache(t *testing.T) {
	env := swtpmtest.Start(t)
	c := objcache.New(env.TPM, objcache.Options{MaxSaved: 3, MaxResident: 2})
	objs := load(t, env.TPM, 1)
	c.Put("a", "id-a", objs[0])
	if o, ok, err := c.Get("a", "id-a"); err != nil || !ok || o.Handle != objs[0].Handle {
		t.Fatalf("resident get: %v %v %v", o, ok, err)
	}
	if err := c.EvictResident(); err != nil || c.Resident() != 0 {
		t.Fatalf("evict: %v, %d resident", err, c.Resident())
	}
	o, ok, err := c.Get("a", "id-a")
	if err != nil || !ok || !slices.Equal(o.Name.Buffer, objs[0].Name.Buffer) || c.Resident() != 1 {
		t.Fatalf("get from a saved context: %v %v %v (%d resident)", o, ok, err, c.Resident())
	}

	// Another object under the same name: never the old one, and the old
	// handle does not leak.
	if _, ok, err := c.Get("a", "id-other"); ok || err != nil {
		t.Fatalf("stale id served: %v %v", ok, err)
	}
	if left, err := env.TPM.Leftovers(); err != nil || len(left) != 0 {
		t.Fatalf("stale entry's handle left loaded: %x %v", left, err)
	}

	// MaxResident 2: serving a saved object evicts the least recently
	// used resident one only, and an object whose context was saved once
	// is evicted again by its flush alone (its context is kept).
	for _, n := range []string{"b", "c", "d"} {
		c.Put(n, "id-"+n, load(t, env.TPM, 1)[0])
		if err := c.EvictResident(); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"b", "c"} {
		if _, ok, err := c.Get(n, "id-"+n); !ok || err != nil {
			t.Fatalf("get %s: %v %v", n, ok, err)
		}
	}
	before := env.TPM.Stats()
	d, ok, err := c.Get("d", "id-d")
	if !ok || err != nil || c.Resident() != 2 {
		t.Fatalf("get d: %v %v, %d resident", ok, err, c.Resident())
	}
	if n := env.TPM.Stats().Sub(before).Commands; n != 2 {
		t.Errorf("serving d took %d TPM commands, want 2 (FlushContext of b, ContextLoad of d)", n)
	}
	if hs := c.Handles(); !slices.Contains(hs, d.Handle) || len(hs) != 2 {
		t.Errorf("resident %x, want c and d", hs)
	}
	// Trim keeps the most recently used.
	if err := c.Trim(1); err != nil {
		t.Fatal(err)
	}
	if hs := c.Handles(); len(hs) != 1 || hs[0] != d.Handle {
		t.Errorf("after Trim(1) resident %x, want d's %x", hs, d.Handle)
	}
	// MaxSaved (3): a fourth entry pushes out the least recently used
	// saved one (b).
	if err := c.EvictResident(); err != nil {
		t.Fatal(err)
	}
	objs = load(t, env.TPM, 1)
	c.Put("e", "id-e", objs[0])
	if names := c.Names(); !slices.Equal(names, []string{"c", "d", "e"}) {
		t.Errorf("names %v, want c d e", names)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if len(c.Names()) != 0 || c.Resident() != 0 {
		t.Errorf("after Close: %v", c.Names())
	}
}

// Drop flushes a resident object; Forget trusts that its handle is gone.
func TestDropAndForget(t *testing.T) {
	env := swtpmtest.Start(t)
	c := objcache.New(env.TPM, objcache.Options{})
	objs := load(t, env.TPM, 1)
	c.Put("a", "id", objs[0])
	if err := c.Drop("a"); err != nil {
		t.Fatal(err)
	}
	if left, err := env.TPM.Leftovers(); err != nil || len(left) != 0 {
		t.Fatalf("Drop left %x (%v)", left, err)
	}
	objs = load(t, env.TPM, 1)
	c.Put("b", "id", objs[0])
	if err := env.TPM.Flush(objs[0].Handle); err != nil {
		t.Fatal(err)
	}
	c.Forget("b")
	if _, ok, _ := c.Get("b", "id"); ok {
		t.Error("a forgotten object is served")
	}
}
