package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/internal/safefile"
	"github.com/provd/provd/internal/strictjson"
	"github.com/provd/provd/store"
)

// pendingFile keeps the audit records of operations that ran but whose
// line the trail could not take (its anchor unreachable, or refused on the
// bus twice in a row): found by review, such an operation left no trace and
// `audit verify` passed. The record waits here, and the next audited
// operation writes it into the trail first (marked recorded_late), or is
// refused: an operation whose record cannot be written must not happen.
const pendingFile = "audit.pending"

// maxPending bounds the file: more records than this waiting means the
// trail has been unwritable for long; the file is refused rather than read.
const maxPending = 1 << 20

// zeroizeRoom is kept beyond maxPending for zeroize's last record: the keys
// are destroyed, and while that record waits only zeroize run again moves
// the trail (errZeroizeUnfinished); a file others filled must not lose it
// (found by review 26: refused as full, the record was in no file, and the
// next record of any process made the move and put the SRK back).
const zeroizeRoom = 64 << 10

func (a *Agent) pendingPath() string { return filepath.Join(a.dir, pendingFile) }

// readPendingFile reads the pending records' file at path, of at most the
// bound keepPending writes to (tampered otherwise: a FIFO, a link, a file
// over the bound; review 66: a FIFO there hung every audited operation).
func readPendingFile(path string) ([]byte, error) {
	data, err := safefile.ReadFile(path, maxPending+zeroizeRoom)
	return data, stateFileErr(err)
}

// stateFileErr is err, tampered when the state's file was not a regular
// file of provd's (safefile.ErrUnsafe).
func stateFileErr(err error) error {
	if errors.Is(err, safefile.ErrUnsafe) {
		return fmt.Errorf("%w: %w", api.ErrTampered, err)
	}
	return err
}

// keepPending adds rec to the pending records (fsynced before it returns).
func (a *Agent) keepPending(rec audit.Record) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	f, _, err := safefile.Open(a.pendingPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600, safefile.NoLimit)
	if err != nil {
		return stateFileErr(err)
	}
	limit := int64(maxPending)
	if rec.Op == opZeroize {
		limit += zeroizeRoom
	}
	if fi, err := f.Stat(); err != nil || fi.Size()+int64(len(b))+1 > limit {
		f.Close()
		return fmt.Errorf("%s is full (%d bytes at most): the trail has not taken a record for long", pendingFile, maxPending)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// readPending parses the pending records; a file that does not parse is
// tampered with (provd writes it whole, a line at a time, fsynced).
func readPending(data []byte) ([]audit.Record, error) {
	var recs []audit.Record
	// A last line without its newline is a record whose write a crash cut
	// short: its caller was never told it was kept (keepPending fsyncs
	// before it returns), so it is not one (found by review: a torn line
	// refused every audited operation, zeroize included).
	data = data[:bytes.LastIndexByte(data, '\n')+1]
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), maxPending)
	for sc.Scan() {
		var r audit.Record
		if err := strictjson.Decode(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%w: %s: record %d: %v (provd writes each record whole: read the file, "+
				"and remove it to drop the records waiting there)", api.ErrTampered, pendingFile, len(recs)+1, err)
		}
		if r.Op == "" || r.Op == audit.OpAnchor {
			return nil, fmt.Errorf("%w: %s: record %d: op %q", api.ErrTampered, pendingFile, len(recs)+1, r.Op)
		}
		recs = append(recs, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", api.ErrTampered, pendingFile, err)
	}
	return recs, nil
}

// pendingIn is the pending records of the state directory dir; none when
// the file is missing, larger than writePending takes, or does not parse
// (whoever writes records reports that). It reads no more than that bound
// (found by reread: read whole, whatever its size, under a mark).
func pendingIn(dir string) []audit.Record {
	f, _, err := safefile.Open(filepath.Join(dir, pendingFile), os.O_RDONLY, 0, maxPending+zeroizeRoom)
	if err != nil {
		return nil
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPending+zeroizeRoom+1))
	if err != nil || len(b) > maxPending+zeroizeRoom {
		return nil
	}
	recs, err := readPending(b)
	if err != nil {
		return nil
	}
	return recs
}

// pendingError is audit.ErrUnanchored when records of operations that ran
// wait in the pending file: the trail verifies, but is not the whole story
// yet. nil when none wait.
func (a *Agent) pendingError() error {
	fi, err := os.Stat(a.pendingPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return fmt.Errorf("%w: records of operations that ran wait in %s (%d bytes), not yet in the trail (the TPM did not take their anchor): "+
		"the next audited operation, or audit repair, writes them", audit.ErrUnanchored, pendingFile, fi.Size())
}

// writePending appends the pending records to the open trail, in order,
// each marked recorded_late, and removes the file once all are in; a
// record that fails stays, with those after it.
func (a *Agent) writePending(ctx context.Context) error {
	data, err := readPendingFile(a.pendingPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	// The trail may have no anchor yet: a record kept because its
	// anchor could not be made (found by the power-cut test: the record
	// then waited for ever, and repair could not write it).
	if err := a.ensureGated(ctx, false); err != nil {
		return err
	}
	if len(data) > maxPending+zeroizeRoom {
		return fmt.Errorf("%w: %s: %d bytes", api.ErrTampered, pendingFile, len(data))
	}
	recs, err := readPending(data)
	if err != nil {
		return err
	}
	for i, r := range recs {
		r.Seq, r.Prev = 0, ""
		if r.Objects == nil {
			r.Objects = map[string]string{}
		}
		r.Objects["recorded_late"] = "true"
		if err := a.audit.Append(r); err != nil {
			// What stays pending: this record and those after it, or
			// only those after it when its line reached the log (found
			// by review: kept, a record whose extend answer was lost
			// went into the trail twice). A log that may be out of step
			// with its anchor is opened again by the next operation,
			// as in record.
			from := i
			if !errors.Is(err, audit.ErrNotWritten) {
				from = i + 1
				_ = a.audit.Close()
				a.audit = nil
			}
			rest := data
			for range from {
				rest = rest[bytes.IndexByte(rest, '\n')+1:]
			}
			var werr error
			if len(rest) == 0 {
				werr = os.Remove(a.pendingPath())
			} else {
				werr = store.WriteFile(a.pendingPath(), rest, 0o600)
			}
			return fmt.Errorf("audit trail: %d record(s) of operations that ran wait to be written: %w", len(recs)-from, errors.Join(err, werr))
		}
	}
	return os.Remove(a.pendingPath())
}
