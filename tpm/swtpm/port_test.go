package swtpm

import "testing"

// The ports a swtpm is started on lie below the kernel's ephemeral range,
// where no connection's local end is ever put, and are free.
func TestFreePortPairBelowTheEphemeralRange(t *testing.T) {
	low := ephemeralLow()
	for range 20 {
		port, err := freePortPair()
		if err != nil {
			t.Fatal(err)
		}
		if port < 10000 || port+1 >= low {
			t.Errorf("port %d: not in [10000, %d)", port, low-1)
		}
		if !bothFree(port) {
			t.Errorf("port %d or %d is taken", port, port+1)
		}
	}
}
