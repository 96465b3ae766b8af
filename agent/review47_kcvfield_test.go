package agent_test

// Review 47: review 45's mend of the KCV field (no error repeats it) and
// of components that cancel, attacked through every error of
// CheckComponent, CombineComponents and ImportKEK, and the daemon's audit
// record of a refused kek-import.

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/keywrap"
	"github.com/provd/provd/test/swtpmtest"
)

// review47Windows are the 12-character pieces of s (lower case, spaces and
// dashes dropped): what must appear nowhere.
func review47Windows(s string) []string {
	s = strings.ToLower(strings.NewReplacer(" ", "", "-", "", "\t", "").Replace(s))
	if len(s) <= 12 {
		return []string{s}
	}
	var w []string
	for i := 0; i+12 <= len(s); i++ {
		w = append(w, s[i:i+12])
	}
	return w
}

// review47Repeats says which piece of a secret out holds.
func review47Repeats(out string, secrets ...string) string {
	low := strings.ToLower(strings.NewReplacer(" ", "", "-", "").Replace(out))
	for _, s := range secrets {
		for _, w := range review47Windows(s) {
			if strings.Contains(low, w) {
				return w
			}
		}
	}
	return ""
}

// review47Fields are what a custodian's slip puts where a KCV goes: the
// component (whole, halves, upper case, grouped as sheets print it, with a
// stray character), and a well-formed KCV that is someone else's.
func review47Fields(comp []byte, other string) map[string]string {
	h := hex.EncodeToString(comp)
	var grouped []string
	for i := 0; i < len(h); i += 4 {
		grouped = append(grouped, h[i:i+4])
	}
	return map[string]string{
		"the component":              h,
		"its first line":             h[:len(h)/2],
		"its second line":            h[len(h)/2:],
		"upper case":                 strings.ToUpper(h),
		"grouped by spaces":          strings.Join(grouped, " "),
		"grouped by dashes":          strings.Join(grouped, "-"),
		"with a stray character":     h + "g",
		"padded with spaces":         "  " + h[len(h)/2:] + "\t",
		"7 digits":                   h[:7],
		"another custodian's KCV":    other,
		"a KCV and the component":    other + " " + h,
		"the component then the KCV": h + "\n" + other,
	}
}

// Held: no error of CheckComponent or CombineComponents repeats what was
// typed in a KCV field (a component's, or the combined key's), nor a
// component, whatever the slip; a well-formed KCV that does not match is
// not repeated either (the mismatch names the component's number); and
// components that cancel are refused as bad_input naming none.
func TestReview47KCVErrorsNeverRepeatTheField(t *testing.T) {
	for _, size := range []int{16, 32} {
		c1, k1 := review45Component(t, size)
		c2, k2 := review45Component(t, size)
		key, err := keywrap.Combine([][]byte{c1, c2})
		if err != nil {
			t.Fatal(err)
		}
		kcv := review45KCV(t, key)
		_, wrong := review45Component(t, size)
		for what, field := range review47Fields(c2, wrong) {
			errs := map[string]error{
				"CheckComponent": agent.CheckComponent(1, c2, field),
				"component 1's KCV": func() error {
					_, err := agent.CombineComponents([][]byte{c1, c2}, []string{field, k2}, kcv)
					return err
				}(),
				"component 2's KCV": func() error {
					_, err := agent.CombineComponents([][]byte{c1, c2}, []string{k1, field}, kcv)
					return err
				}(),
				"the combined KCV": func() error { _, err := agent.CombineComponents([][]byte{c1, c2}, []string{k1, k2}, field); return err }(),
				"the KCV with a count mismatch": func() error {
					_, err := agent.CombineComponents([][]byte{c1, c2}, []string{k1, k2, field}, kcv)
					return err
				}(),
				"17 components, the last's KCV": func() error {
					cs := make([][]byte, 17)
					for i := range cs {
						cs[i] = c1
					}
					ks := make([]string, 17)
					for i := range ks {
						ks[i] = k1
					}
					ks[16] = field
					_, err := agent.CombineComponents(cs, ks, field)
					return err
				}(),
			}
			for where, err := range errs {
				if err == nil {
					t.Errorf("%d bytes, %s in %s: taken", size, what, where)
					continue
				}
				if w := review47Repeats(err.Error(), field, hex.EncodeToString(c1), hex.EncodeToString(c2)); w != "" {
					t.Errorf("%d bytes, %s in %s: the error repeats %q: %v", size, what, where, w, err)
				}
			}
		}
		// Components that cancel: a copied sheet, zeros, three that cancel.
		c3, _ := review45Component(t, size)
		zero := make([]byte, size)
		x := make([]byte, size)
		subtle.XORBytes(x, c1, c2)
		for what, set := range map[string][][]byte{
			"a copied sheet":  {c1, c3, c1},
			"zeros":           {c3, zero},
			"three cancel":    {c1, c2, x, c3},
			"the last two":    {c3, c2, c2},
			"sixteen, a pair": append(append([][]byte{}, review47Independent(t, 14, size)...), c3, c3),
		} {
			var kcvs []string
			k := make([]byte, size)
			for _, c := range set {
				kcvs = append(kcvs, review45KCV(t, c))
				subtle.XORBytes(k, k, c)
			}
			combined := "000000"
			if !bytes.Equal(k, zero) {
				combined = review45KCV(t, k)
			}
			got, err := agent.CombineComponents(set, kcvs, combined)
			if err == nil {
				t.Errorf("%d bytes, %s: combined into %x", size, what, got)
				continue
			}
			if !errors.Is(err, api.ErrBadInput) || !errors.Is(err, keywrap.ErrComponents) {
				t.Errorf("%d bytes, %s: %v, want bad_input and keywrap.ErrComponents", size, what, err)
			}
			for _, c := range set {
				if w := review47Repeats(err.Error(), hex.EncodeToString(c)); w != "" && !bytes.Equal(c, zero) {
					t.Errorf("%d bytes, %s: the error repeats %q: %v", size, what, w, err)
				}
			}
		}
	}
}

// review47Independent is n random components.
func review47Independent(t *testing.T, n, size int) [][]byte {
	var cs [][]byte
	for range n {
		c, _ := review45Component(t, size)
		cs = append(cs, c)
	}
	return cs
}

// Held: the daemon's agent records a refused kek-import without any
// KCV-field string or component: each slip of review47Fields in a
// component's KCV field and in the combined one, components that cancel,
// and 17 components; the records (as JSON, the result included) and every
// file of the state directory hold none of them, and no key was made.
func TestReview47KEKImportAuditHoldsNoFieldString(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag, dir := signingState(t, env)
	before := keyNames(t, ag)
	c1, k1 := review45Component(t, 32)
	c2, k2 := review45Component(t, 32)
	key, err := keywrap.Combine([][]byte{c1, c2})
	if err != nil {
		t.Fatal(err)
	}
	kcv := review45KCV(t, key)
	_, wrong := review45Component(t, 32)
	var secrets []string
	n := 0
	try := func(what string, req api.KEKImportRequest) {
		t.Helper()
		n++
		req.Name = fmt.Sprintf("kek%d", n)
		if _, err := ag.ImportKEK(ctx, req); err == nil {
			t.Errorf("%s: imported", what)
		} else if w := review47Repeats(err.Error(), secrets...); w != "" {
			t.Errorf("%s: the error repeats %q: %v", what, w, err)
		}
	}
	for what, field := range review47Fields(c2, wrong) {
		if field != wrong {
			secrets = append(secrets, field)
		}
		try(what+" as component 2's KCV", api.KEKImportRequest{Components: [][]byte{bytes.Clone(c1), bytes.Clone(c2)}, KCVs: []string{k1, field}, KCV: kcv})
		try(what+" as the combined KCV", api.KEKImportRequest{Components: [][]byte{bytes.Clone(c1), bytes.Clone(c2)}, KCVs: []string{k1, k2}, KCV: field})
	}
	secrets = append(secrets, hex.EncodeToString(c1), hex.EncodeToString(c2))
	try("a copied sheet", api.KEKImportRequest{Components: [][]byte{bytes.Clone(c1), bytes.Clone(c2), bytes.Clone(c1)}, KCVs: []string{k1, k2, k1}, KCV: review45KCV(t, c2)})
	var cs [][]byte
	var ks []string
	for range 17 {
		cs = append(cs, bytes.Clone(c1))
		ks = append(ks, hex.EncodeToString(c2))
	}
	try("17 components, each KCV a component", api.KEKImportRequest{Components: cs, KCVs: ks, KCV: hex.EncodeToString(c2)})
	recs, err := ag.AuditRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(recs)
	if w := review47Repeats(string(js), secrets...); w != "" {
		t.Errorf("the audit records hold %q", w)
	}
	for _, s := range secrets {
		for _, w := range review47Windows(s) {
			if p := review45StateHolds(t, dir, []byte(w), []byte(strings.ToUpper(w))); p != "" {
				t.Errorf("the state directory holds %q: %s", w, p)
				break
			}
		}
	}
	if got := keyNames(t, ag); len(got) != len(before) {
		t.Errorf("keys %v after refused imports, before %v", got, before)
	}
	var refused int
	for _, r := range recs {
		if r.Op == "kek-import" {
			refused++
		}
	}
	if refused != n {
		t.Errorf("%d kek-import records for %d refused imports", refused, n)
	}
}
