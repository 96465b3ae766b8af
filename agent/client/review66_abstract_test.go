package client_test

// Review 66: the client's refusal of abstract addresses (review 65's mend).

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provd/provd/agent/client"
	"github.com/provd/provd/api"
)

// Held: an abstract address is refused whether or not anything listens
// there, as not permitted (exit 5) and by its name, never taken for
// "nothing answering" (which would have the CLI work in-process beside a
// listener it cannot vet); the shipped provd.socket (ListenStream= a path
// under /run/provd) and no doc name an abstract address, so no legitimate
// configuration is broken; a path socket the caller serves still answers.
func TestReview66AbstractAddressRefusedByName(t *testing.T) {
	name := fmt.Sprintf("@provd-review66-%d", os.Getpid())
	ln, err := net.Listen("unix", name) // root's own listener
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, addr := range []string{name, name + "-nobody"} {
		err := client.Check(context.Background(), addr)
		if !errors.Is(err, api.ErrNotPermitted) {
			t.Errorf("Check(%s): %v, want ErrNotPermitted", addr, err)
		} else if !strings.Contains(err.Error(), addr) {
			t.Errorf("Check(%s): %v does not name the address", addr, err)
		}
		if client.Answers(context.Background(), addr) {
			t.Errorf("Answers(%s) is true", addr)
		}
	}
	p := filepath.Join(t.TempDir(), "provd.sock")
	pl, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	go func() {
		for {
			c, err := pl.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if err := client.Check(context.Background(), p); err != nil {
		t.Errorf("a path socket root serves: %v", err)
	}
}
