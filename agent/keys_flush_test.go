package agent

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

var errLostResponse = errors.New("injected: response to TPM2_FlushContext lost")

// flushFault passes every command to the TPM. When armed with n, the n-th
// TPM2_FlushContext after arming (0: the first) still reaches the TPM, so
// the handle is flushed, but its caller gets an error, as if the response
// were lost. Whatever else the failing operation had loaded must then be
// flushed by the agent.
type flushFault struct {
	next  transport.TPM
	mu    sync.Mutex
	n     int // flushes to let through; -1: disarmed
	fired bool
}

func (f *flushFault) Send(cmd []byte) ([]byte, error) {
	rsp, err := f.next.Send(cmd)
	if len(cmd) >= 14 && binary.BigEndian.Uint32(cmd[6:10]) == uint32(tpm2.TPMCCFlushContext) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.n == 0 {
			f.n, f.fired = -1, true
			return nil, errLostResponse
		}
		if f.n > 0 {
			f.n--
		}
	}
	return rsp, err
}

func (f *flushFault) arm(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n, f.fired = n, false
}

// disarm stops injecting and says whether a fault was injected.
func (f *flushFault) disarm() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n = -1
	return f.fired
}

// TestFailedFlushLeaksNothing fails, one run each, every TPM2_FlushContext a
// key operation sends (sessions, D, the PK, cached keys): whichever fails,
// the operation leaves no object or session in the TPM once the cache is
// closed. Before, a lost session flush after TPM2_Load or
// TPM2_CreateLoaded, or a lost flush of D or the PK after the key was
// derived, left the key (or D) loaded.
func TestFailedFlushLeaksNothing(t *testing.T) {
	t.Parallel()
	fault := &flushFault{n: -1}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(func(next transport.TPM) transport.TPM {
		fault.next = next
		return fault
	}))
	ctx := context.Background()
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	if _, err := officertest.Derive(t, ctx, a, api.DeriveRequest{Name: "derived", Label: "d", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "created", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(nil)
	ops := []struct {
		name string
		op   func(i int) error
	}{
		{"sign derived", func(int) error { _, err := a.Sign(ctx, "derived", d[:], api.SignOptions{}); return err }},
		{"sign created", func(int) error { _, err := a.Sign(ctx, "created", d[:], api.SignOptions{}); return err }},
		{"derive", func(i int) error {
			_, err := officertest.Derive(t, ctx, a, api.DeriveRequest{Name: fmt.Sprint("d", i), Label: fmt.Sprint("d", i), Type: "ecc-p256"})
			return err
		}},
		{"import", func(i int) error {
			kf, err := a.ExportKeyBlob(ctx, "created")
			if err != nil {
				return err
			}
			_, err = a.ImportKeyBlob(ctx, fmt.Sprint("i", i), kf)
			return err
		}},
	}
	for _, o := range ops {
		for n := 0; ; n++ {
			if err := a.keys.Close(); err != nil { // start cold: the full load path
				t.Fatal(err)
			}
			fault.arm(n)
			err := o.op(n)
			fired := fault.disarm()
			if !fired {
				if err != nil {
					t.Fatalf("%s: %v", o.name, err)
				}
				t.Logf("%s: %d flushes failed in turn", o.name, n)
				break
			}
			if cerr := a.keys.Close(); cerr != nil && !errors.Is(cerr, errLostResponse) {
				t.Fatal(cerr)
			}
			left, lerr := env.TPM.Leftovers()
			if lerr != nil {
				t.Fatal(lerr)
			}
			if len(left) > 0 {
				t.Errorf("%s, flush %d lost (%v): handles %x left in the TPM", o.name, n, err, left)
				for _, h := range left {
					_ = env.TPM.Flush(h)
				}
			}
		}
	}
}
