package cli

import "testing"

// audit show prints objects as sorted key=value pairs, not a Go map.
func TestObjectsText(t *testing.T) {
	got := objectsText(map[string]string{"key": "tls", "context": "", "reason": "new trail", "a": `q"x`})
	if want := ` a="q\"x" context="" key=tls reason="new trail"`; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}
