package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// provdNV lists the NV indices provd defines.
var provdNV = []tpm2.TPMHandle{PolicyCounterHandle, CounterAuthorizerHandle, AuditAnchorHandle}

// Zeroize removes every TPM object and NV index provd created and overwrites
// and removes the state's blob files. The PK's blob gone, the PK is gone: it
// never existed outside the TPM. The zeroization is recorded in the audit
// trail; then the trail's anchor index is removed too and the log is archived
// beside the state (audit-<UTC time>.log), its last line the zeroize record.
//
// Nothing is destroyed unless the trail can take a record first: a
// zeroize-start record is written (and anchored) before anything else, and
// when that fails zeroize is refused (the audit trail's error, exit 14 for a
// tampered trail or a moved anchor) with everything left in place.
func (a *Agent) Zeroize(ctx context.Context, opts api.ZeroizeOptions) (res api.ZeroizeResult, err error) {
	defer a.lock()()
	objects := map[string]string{"srk": fmt.Sprint(opts.SRK)}
	if err := a.record(ctx, "zeroize-start", objects, nil); err != nil {
		return res, fmt.Errorf("zeroize refused, nothing destroyed: %w", err)
	}
	// The last record needs the gate key when the SRK it loads under is
	// already evicted: it is loaded now and survives the flush of leftovers.
	if err := a.holdGate(); err != nil {
		return res, fmt.Errorf("zeroize refused, nothing destroyed: audit gate: %w", err)
	}
	defer func() {
		if ferr := a.t.Flush(a.heldGate.Handle); ferr != nil && err == nil {
			err = ferr
		}
		a.heldGate = nil
	}()
	err = a.zeroizeTPMAndState(ctx, opts, &res)
	if aerr := a.record(ctx, "zeroize", objects, err); aerr != nil && err == nil {
		err = aerr
	}
	if err != nil {
		return res, err
	}
	// After the last record: the anchor and the live log go.
	if a.audit != nil {
		if err := a.audit.Close(); err != nil {
			return res, err
		}
		a.audit = nil
	}
	if err := a.t.UndefineNV(AuditAnchorHandle); err != nil && !errors.Is(err, tpm.ErrNotFound) {
		return res, err
	}
	res.NVIndices = append(res.NVIndices, fmt.Sprintf("0x%08x", uint32(AuditAnchorHandle)))
	// The gate key guarded the anchor only; with the anchor gone it guards
	// nothing, and the next record starts a new trail with a new gate.
	if err := os.Remove(filepath.Join(a.dir, gateFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return res, err
	}
	if fileExists(a.auditPath()) {
		archived := a.archiveName()
		if err := os.Rename(a.auditPath(), archived); err != nil {
			return res, err
		}
		res.AuditLog = archived
	}
	return res, nil
}

// zeroize is Zeroize without the audit trail: provision --force zeroizes
// the old PK, and the trail and its anchor go on.
func (a *Agent) zeroize(ctx context.Context, opts api.ZeroizeOptions) error {
	var res api.ZeroizeResult
	return a.zeroizeTPMAndState(ctx, opts, &res)
}

func (a *Agent) zeroizeTPMAndState(ctx context.Context, opts api.ZeroizeOptions, res *api.ZeroizeResult) error {
	errs := []error{a.keys.Close()}
	// Transient objects and sessions: on a TPM without a resource manager
	// these may be provd's from a crashed run.
	left, err := a.t.Leftovers()
	errs = append(errs, err)
	for _, h := range left {
		if a.heldGate != nil && h == a.heldGate.Handle {
			continue
		}
		if err := a.t.Flush(h); err == nil {
			res.Flushed++
		}
	}
	for _, h := range provdNV {
		if h == AuditAnchorHandle {
			continue // removed after the zeroize record
		}
		err := a.t.UndefineNV(h)
		if err == nil {
			res.NVIndices = append(res.NVIndices, fmt.Sprintf("0x%08x", uint32(h)))
		} else if !errors.Is(err, tpm.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	if opts.SRK {
		if err := a.t.EvictSRK(); err != nil {
			errs = append(errs, err)
		} else {
			res.SRKEvicted = true
		}
	}
	errs = append(errs, a.st.Wipe(ctx, store.WipeOptions{}))
	return errors.Join(errs...)
}

// holdGate loads the audit gate key into a.heldGate, for records written
// while the SRK may be gone.
func (a *Agent) holdGate() error {
	an := a.trailAnchor()
	g, err := an.gate()
	if err != nil {
		return err
	}
	if g == nil {
		return errors.New("the trail has no gate")
	}
	gk, err := an.loadGate(g)
	if err != nil {
		return err
	}
	a.heldGate = &gk
	return nil
}

// archiveName is where an archived audit trail goes: beside the state, named
// by the UTC time to the nanosecond (audit-20261204T172800.123456789Z.log),
// readable and in order when listed.
func (a *Agent) archiveName() string {
	return filepath.Join(a.dir, "audit-"+a.now().UTC().Format("20060102T150405.000000000Z")+".log")
}
