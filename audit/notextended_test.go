package audit

import (
	"errors"
	"path/filepath"
	"testing"
)

// refusingAnchor answers its first Extend with an error that says the anchor
// did not move; forged says whether that is a lie (it extended all the same,
// as someone on the bus who passed the extend on and forged the refusal, or
// who took the session and made the one extend its proof allows), moved
// whether something else extended it meanwhile.
type refusingAnchor struct {
	*MemoryAnchor
	forged, moved bool
	refused       int
	extends       int
}

func (a *refusingAnchor) Extend(head []byte) error {
	if a.refused == 0 {
		a.refused++
		if a.moved {
			a.MemoryAnchor.Extend([]byte("someone else"))
		}
		if a.forged {
			a.extends++
			if err := a.MemoryAnchor.Extend(head); err != nil {
				return err
			}
		}
		return errors.New("TPM_RC_REFERENCE_S0")
	}
	a.extends++
	return a.MemoryAnchor.Extend(head)
}

// An extend the TPM refused (after a reset, its session gone) is made once
// more, and the line is anchored with no officer's repair. The anchor is
// read first: a refusal forged while the extend went through (or the
// session's one extend made by whoever took it) leaves it at the line's
// value, and it is not extended twice; an anchor that moved to anything
// else leaves the line unanchored, and verify says so. The line is never
// taken back.
func TestRefusedExtendIsMadeOnceMore(t *testing.T) {
	for _, c := range []struct {
		name          string
		forged, moved bool
	}{{"refused", false, false}, {"forged refusal", true, false}, {"moved meanwhile", false, true}} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), FileName)
			anchor := &refusingAnchor{MemoryAnchor: &MemoryAnchor{}, forged: c.forged, moved: c.moved}
			l, err := Open(path, Options{Anchor: anchor})
			if err != nil {
				t.Fatal(err)
			}
			err = l.Append(Record{Op: "key-delete", Result: "ok"})
			l.Close()
			rep, verr := Verify(path, anchor)
			switch {
			case c.moved:
				if err == nil || !errors.Is(verr, ErrTampered) || anchor.extends != 0 {
					t.Errorf("append %v, verify %v, %d extends; want the line unanchored, seen as tampering, no extend on the moved anchor", err, verr, anchor.extends)
				}
			case err != nil || verr != nil || rep.Lines != 1 || anchor.extends != 1:
				t.Errorf("append %v, verify %+v %v, %d extends; want the line anchored by one extend", err, rep, verr, anchor.extends)
			}
		})
	}
}
