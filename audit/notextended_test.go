package audit

import (
	"errors"
	"path/filepath"
	"testing"
)

// refusingAnchor answers its extend number refuse (1-based) with an error
// that says the anchor did not move; forged says whether that is a lie (it
// extended all the same, as someone on the bus who passed the extend on and
// forged the refusal, or who took the session and made the one extend its
// proof allows), moved whether something else extended it meanwhile.
type refusingAnchor struct {
	*MemoryAnchor
	refuse        int
	forged, moved bool
	calls         int
	extends       int
}

func (a *refusingAnchor) Extend(head []byte) error {
	a.calls++
	if a.calls == a.refuse {
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
// else leaves the line unanchored, and verify says so; the first line of
// a new anchor is never extended again (its "nothing before" is an answer
// the bus can forge). The line is never taken back.
func TestRefusedExtendIsMadeOnceMore(t *testing.T) {
	for _, c := range []struct {
		name          string
		first         bool
		forged, moved bool
		anchored      bool
		extends       int
	}{
		{name: "refused", anchored: true, extends: 2},
		{name: "forged refusal", forged: true, anchored: true, extends: 2},
		{name: "moved meanwhile", moved: true, extends: 1},
		{name: "a new anchor's first line refused", first: true, extends: 0},
		{name: "a new anchor's first line, forged refusal", first: true, forged: true, anchored: true, extends: 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), FileName)
			anchor := &refusingAnchor{MemoryAnchor: &MemoryAnchor{}, refuse: 2, forged: c.forged, moved: c.moved}
			if c.first {
				anchor.refuse = 1
			}
			l, err := Open(path, Options{Anchor: anchor})
			if err != nil {
				t.Fatal(err)
			}
			if !c.first {
				if err := l.Append(Record{Op: "key-create", Result: "ok"}); err != nil {
					t.Fatal(err)
				}
			}
			err = l.Append(Record{Op: "key-delete", Result: "ok"})
			l.Close()
			rep, verr := Verify(path, anchor)
			if c.anchored != (err == nil && verr == nil) || anchor.extends != c.extends {
				t.Errorf("append %v, verify %+v %v, %d extends; want anchored %v with %d extends", err, rep, verr, anchor.extends, c.anchored, c.extends)
			}
			if !c.anchored && verr == nil {
				t.Error("verify passes over an unanchored line")
			}
		})
	}
}
