// Package pgtest starts a real PostgreSQL server for a test: initdb into the
// test's temp dir as an unprivileged user, postgres listening on a free port
// of 127.0.0.1 (and a unix socket in the temp dir), stopped by pid when the
// test ends. The fleet store's conformance suite and the replica tests run
// against it; nothing is mocked. It fails (never skips) when the server
// binaries are missing: make test installs Debian's postgresql.
package pgtest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Server is one running PostgreSQL.
type Server struct {
	// URL reaches the server's "postgres" database as its superuser
	// "provd" (trust authentication, 127.0.0.1 only).
	URL  string
	Port int
	Pid  int
	dir  string
}

// bin finds a server binary: Debian's /usr/lib/postgresql/N/bin (the newest
// N) first, then PATH.
func bin(name string) (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return exec.LookPath(name)
}

// credential is who runs the server: initdb and postgres refuse root, so a
// root test runs them as "postgres" (Debian's package creates it), else
// "nobody".
func credential(t testing.TB) *syscall.Credential {
	if os.Geteuid() != 0 {
		return nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	t.Fatal("pgtest: running as root and neither a postgres nor a nobody user exists")
	return nil
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start runs initdb and postgres for t, and stops the server (SIGTERM to
// its pid, then SIGKILL after 10 s) when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	initdb, err := bin("initdb")
	if err != nil {
		t.Fatalf("pgtest: initdb not found (apt-get install postgresql): %v", err)
	}
	postgres, err := bin("postgres")
	if err != nil {
		t.Fatalf("pgtest: postgres not found (apt-get install postgresql): %v", err)
	}
	cred := credential(t)
	dir, err := os.MkdirTemp("", "provd-pgtest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	data := filepath.Join(dir, "data")
	run := func(name string, args ...string) *exec.Cmd {
		c := exec.Command(name, args...)
		c.Dir = dir
		c.Env = []string{"LC_ALL=C", "PATH=/usr/bin:/bin"}
		if cred != nil {
			c.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		}
		return c
	}
	var out bytes.Buffer
	c := run(initdb, "-D", data, "-U", "provd", "-A", "trust", "-E", "UTF8", "--no-sync")
	c.Stdout, c.Stderr = &out, &out
	if err := c.Run(); err != nil {
		t.Fatalf("pgtest: initdb: %v\n%s", err, out.String())
	}
	port := freePort(t)
	logf, err := os.Create(filepath.Join(dir, "postgres.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	if cred != nil {
		_ = logf.Chown(int(cred.Uid), int(cred.Gid))
	}
	srv := run(postgres, "-D", data, "-p", strconv.Itoa(port), "-k", dir, "-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=100")
	srv.Stdout, srv.Stderr = logf, logf
	if err := srv.Start(); err != nil {
		t.Fatalf("pgtest: postgres: %v", err)
	}
	s := &Server{URL: fmt.Sprintf("postgres://provd@127.0.0.1:%d/postgres?sslmode=disable", port), Port: port, Pid: srv.Process.Pid, dir: dir}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	t.Cleanup(func() {
		_ = srv.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = srv.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
			conn.Close()
			// The port answers before the server accepts logins: wait for
			// the log line that says so.
			if b, _ := os.ReadFile(filepath.Join(dir, "postgres.log")); bytes.Contains(b, []byte("ready to accept connections")) {
				return s
			}
		}
		select {
		case err := <-exited:
			b, _ := os.ReadFile(filepath.Join(dir, "postgres.log"))
			t.Fatalf("pgtest: postgres exited: %v\n%s", err, b)
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "postgres.log"))
			t.Fatalf("pgtest: postgres did not come up in 30 s\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
