package server

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/provd/provd/api"
)

// A body of up to MaxRequestBody bytes is answered with a refusal the
// client can read, wherever the daemon refuses it: the daemon reads the
// body, to the bound every endpoint has, before its answer leaves. Before,
// an endpoint that takes no body answered after one byte, and a refusal by
// role or route read none; Go's server then closed the connection under a
// client still writing, which saw a broken pipe instead of the refusal
// (found by the flood test on CI, once in many runs). Here the client writes
// the whole request before it reads the answer, so the old way fails every
// time.
func TestARefusedBodyIsReadBeforeTheAnswer(t *testing.T) {
	me := RoleMembers{UIDs: []int{os.Getuid()}}
	hc := serveNoTPM(t, &Roles{Officer: me, User: me})
	dial := hc.Transport.(*http.Transport).DialContext
	for _, tc := range []struct {
		method, path string
		status       int
		says         string
	}{
		{"POST", api.RouteAuditReanchor.Path, 400, "takes no request body"},
		{"POST", api.RoutePeerIdentity.Path, 400, "takes no request body"},
		{"POST", api.RouteAttestIdentity.Path, 400, "takes no request body"},
		{"POST", api.RouteStatus.Path, 405, "the endpoint takes GET"},
		{"POST", "/v1/nothing", 404, "no API endpoint"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			conn, err := dial(context.Background(), "unix", "")
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			postWhole(t, conn, tc.method, tc.path, tc.status, tc.says)
		})
	}
	t.Run("refused by role", func(t *testing.T) {
		ts := serveTPM(t, func(s *Server) {
			s.Reconfigure(&Roles{User: me}, time.Minute, nil)
		})
		conn, err := net.Dial("unix", ts.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		postWhole(t, conn, "POST", api.RouteProvision.Path, 403, "needs the crypto-officer role")
	})
}

// postWhole writes a request with a body of MaxRequestBody bytes, all of it,
// then reads the answer and wants status with says in it; twice on conn,
// which the refusal leaves open.
func postWhole(t *testing.T, conn net.Conn, method, path string, status int, says string) {
	t.Helper()
	body := bytes.Repeat([]byte("a"), MaxRequestBody)
	br := bufio.NewReader(conn)
	for i := range 2 {
		wrote := make(chan error, 1)
		go func() {
			_, err := fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: provd\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
				method, path, len(body), body)
			wrote <- err
		}()
		if err := <-wrote; err != nil {
			t.Fatalf("request %d: writing the body: %v", i, err)
		}
		rsp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: reading the answer: %v", i, err)
		}
		b, _ := io.ReadAll(rsp.Body)
		rsp.Body.Close()
		if rsp.StatusCode != status || !bytes.Contains(b, []byte(says)) {
			t.Fatalf("request %d: %s %s, want %d %q", i, rsp.Status, b, status, says)
		}
	}
}
