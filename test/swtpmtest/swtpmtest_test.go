package swtpmtest

import "testing"

// A test whose name puts a comma in its temp dir still gets a TPM (swtpm
// reads commas in --tpmstate as option separators): found when a subtest
// named "power cut, another client first" broke every TPM test after it.
func TestCommaInTestName(t *testing.T) {
	for _, name := range []string{"a, b", "after it"} {
		t.Run(name, func(t *testing.T) {
			env := Start(t)
			if _, err := env.TPM.Info(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
