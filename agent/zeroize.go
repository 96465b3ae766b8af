package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/store"
	"github.com/provd/provd/tpm"
)

// ZeroizeOptions says how far zeroize goes.
type ZeroizeOptions struct {
	// SRK also evicts the SRK (it is recreated identically by the next
	// provision: it is derived from the owner seed).
	SRK bool
	// keepAudit keeps the audit anchor (provision --force zeroizes the old PK
	// but the trail goes on).
	keepAudit bool
}

// ZeroizeResult lists what was removed.
type ZeroizeResult struct {
	NVIndices  []string `json:"nv_indices_removed"`
	Flushed    int      `json:"transient_handles_flushed"`
	SRKEvicted bool     `json:"srk_evicted"`
	AuditLog   string   `json:"audit_log_archived,omitempty"`
}

// provdNV lists the NV indices provd defines.
var provdNV = []tpm2.TPMHandle{PolicyCounterHandle, AuditAnchorHandle}

// Zeroize removes every TPM object and NV index provd created and overwrites
// and removes the state's blob files. The PK's blob gone, the PK is gone: it
// never existed outside the TPM. The zeroization is recorded in the audit
// trail; then the trail's anchor index is removed too and the log is archived
// beside the state (audit-<unixnano>.log), its last line the zeroize record.
func (a *Agent) Zeroize(ctx context.Context, opts ZeroizeOptions) (res ZeroizeResult, err error) {
	err = a.zeroizeTPMAndState(ctx, opts, &res)
	if aerr := a.record("zeroize", map[string]string{"srk": fmt.Sprint(opts.SRK)}, err); aerr != nil && err == nil {
		err = aerr
	}
	if err != nil || opts.keepAudit {
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
	if fileExists(a.auditPath()) {
		archived := filepath.Join(a.dir, fmt.Sprintf("audit-%d.log", a.now().UnixNano()))
		if err := os.Rename(a.auditPath(), archived); err != nil {
			return res, err
		}
		res.AuditLog = archived
	}
	return res, nil
}

// zeroize is Zeroize without the audit trail (provision --force).
func (a *Agent) zeroize(ctx context.Context, opts ZeroizeOptions) error {
	var res ZeroizeResult
	return a.zeroizeTPMAndState(ctx, opts, &res)
}

func (a *Agent) zeroizeTPMAndState(ctx context.Context, opts ZeroizeOptions, res *ZeroizeResult) error {
	errs := []error{a.closeKeys()}
	// Transient objects and sessions: on a TPM without a resource manager
	// these may be provd's from a crashed run.
	left, err := a.t.Leftovers()
	errs = append(errs, err)
	for _, h := range left {
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
