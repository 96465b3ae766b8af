package audit

import (
	"errors"
	"path/filepath"
	"testing"
)

// refusingAnchor answers its first Extend with an error that says the anchor
// did not move; forged says whether that is a lie (it extended all the same,
// as someone on the bus who passed the extend on and forged the refusal).
type refusingAnchor struct {
	*MemoryAnchor
	forged  bool
	refused int
}

func (a *refusingAnchor) Extend(head []byte) error {
	if a.refused == 0 {
		a.refused++
		if a.forged {
			if err := a.MemoryAnchor.Extend(head); err != nil {
				return err
			}
		}
		return errors.Join(ErrNotExtended, errors.New("TPM_RC_REFERENCE_S0"))
	}
	return a.MemoryAnchor.Extend(head)
}

// An extend the TPM refused (after a reset, its session gone) is made once
// more, and the line is anchored with no officer's repair; a refusal that
// was forged while the extend went through cannot hide anything: the second
// extend shows at the next verify, and the line was never taken back.
func TestRefusedExtendIsMadeOnceMore(t *testing.T) {
	for _, forged := range []bool{false, true} {
		path := filepath.Join(t.TempDir(), FileName)
		anchor := &refusingAnchor{MemoryAnchor: &MemoryAnchor{}, forged: forged}
		l, err := Open(path, Options{Anchor: anchor})
		if err != nil {
			t.Fatal(err)
		}
		err = l.Append(Record{Op: "key-delete", Result: "ok"})
		l.Close()
		rep, verr := Verify(path, anchor)
		switch {
		case !forged && (err != nil || verr != nil || rep.Lines != 1):
			t.Errorf("a refused extend: append %v, verify %+v %v; want the line anchored by the second extend", err, rep, verr)
		case forged && (err != nil || !errors.Is(verr, ErrTampered)):
			t.Errorf("a forged refusal: append %v, verify %v; want the double extend seen as tampering", err, verr)
		}
	}
}
