package tpm

import "testing"

// Every kernel resource manager's device is shared (/dev/tpmrmN, however
// the path is written); everything else provd opens is its alone. Taken
// for exclusive, a resource manager's connection would have provd treat
// handles it does not hold, other clients' sessions among them, as leaks.
func TestExclusiveSpecs(t *testing.T) {
	for spec, want := range map[string]bool{
		"/dev/tpmrm0": false, "/dev/tpmrm1": false, "/dev/tpmrm12": false, "/dev//tpmrm0": false, "/dev/./tpmrm1/": false,
		"/dev/tpm0": true, "/dev/tpm1": true, "/dev/tpmrm": true, "/dev/tpmrmx": true, "/dev/tpmrm0x": true,
		"swtpm://127.0.0.1:2321": true, "unix:///run/swtpm.sock": true, "sim": true, "": true,
	} {
		if got := exclusive(spec); got != want {
			t.Errorf("exclusive(%q) = %v, want %v", spec, got, want)
		}
	}
}
