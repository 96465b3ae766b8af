package trustedpath

// Review 64: Walk's resolution against the kernel's, after review 63's
// mend (a link's target walked component by component).

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

const review64Other = 4242 // another local user, neither root nor the caller

// FLAW (failed before the mend): review 63 stopped cleaning a link's *target* as text, but Walk
// still begins with filepath.Abs, which cleans the *path it is given* as
// text: "pub/x/../s" is walked as "pub/s", x is never lstat'ed, and the
// kernel, handed the same string, goes through x (a link: x/.. is the
// parent of x's target). Here x is uid 4242's link in a sticky
// directory, leading into 4242's own tree; Walk passes the path and
// returns pub/s, a directory the kernel never reaches by that string.
// With no attacker, root's own links: "rel/.." (rel -> d/sub) and
// "root/.." (root -> /) come back as the link's directory, where the
// kernel reaches d and / respectively.
// The consumers: dialDaemon dials Walk's result (safe, it uses what it
// checked); store.Open keeps the raw string, and although most of its
// names go through filepath.Join (cleaned), os.CreateTemp(s.dir, ...) (the
// manifest's commit, Wipe's rename-away), os.ReadDir(s.dir) and
// syncDir(s.dir) do not: see store.TestReview64OpenWithDotDotAfterALink.
// Attacker: the owner of a link met before a ".." in a path a caller
// hands provd (a library caller of store.Open or trustedpath.Walk; the
// CLI and agent.New clean --state-dir with filepath.Abs first, and
// systemd.Listen refuses an unclean path). Suggested fix: in Walk (and
// Mkdir) join a relative path to the working directory without
// cleaning (os.Getwd() + "/" + path) and let the component walk handle
// every "." and ".."; or refuse a path that is not filepath.Clean's, as
// systemd.Listen does.
func TestReview64WalkCleansItsOwnInput(t *testing.T) {
	base := t.TempDir()
	pub := filepath.Join(base, "pub")
	evil := filepath.Join(base, "evil", "sub")
	for _, d := range []string{filepath.Join(pub, "s"), evil} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(pub, os.ModeSticky|0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(base, "evil", "s"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(base, "evil"), evil, filepath.Join(base, "evil", "s")} {
		if err := os.Chown(p, review64Other, review64Other); err != nil {
			t.Fatal(err)
		}
	}
	x := filepath.Join(pub, "x")
	if err := os.Symlink(evil, x); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(x, review64Other, review64Other); err != nil {
		t.Fatal(err)
	}
	path := x + "/../s" // not filepath.Join: that would clean it too
	got, err := Walk(path)
	if err == nil {
		var kst, wst syscall.Stat_t
		if err := syscall.Stat(path, &kst); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Stat(got, &wst); err != nil {
			t.Fatal(err)
		}
		t.Errorf("Walk(%q) = %q, nil: uid %d's link x was never checked; the kernel resolves the same string into uid %d's directory (same file as Walk's answer: %v)",
			path, got, review64Other, kst.Uid, kst.Ino == wst.Ino)
	} else if !errors.Is(err, ErrUntrusted) {
		t.Errorf("Walk(%q): %v; want ErrUntrusted naming x", path, err)
	}
	// No attacker: root's own links, and Walk's answer is not the
	// kernel's file for "link/.." (the kernel: the target's parent).
	if err := os.MkdirAll(filepath.Join(base, "d", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("d/sub", filepath.Join(base, "rel")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/", filepath.Join(base, "root")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{base + "/rel/..", base + "/root/.."} {
		got, err := Walk(p)
		var kst, wst syscall.Stat_t
		if err != nil || syscall.Stat(p, &kst) != nil || syscall.Stat(got, &wst) != nil {
			t.Errorf("Walk(%s) = %q, %v", p, got, err)
			continue
		}
		if kst.Ino != wst.Ino || kst.Dev != wst.Dev {
			t.Errorf("Walk(%s) = %s: the kernel reaches another directory by this string", p, got)
		}
	}
}

// Held: where every link is root's and the path given is clean (its
// ".." are in link targets: see TestReview64WalkCleansItsOwnInput for a
// ".." in the path itself), Walk's answer is the file the kernel reaches
// by the same string: ".." after a link at the start and in the middle
// of a target, "/.." at the root, an absolute target mid-path, a link to
// "/", a chain of relative links with "..", and a loop (refused by both).
// Divergences that do no harm are pinned: a trailing slash or ".." after
// a non-directory ("f/", "f/..") fails in the kernel (ENOTDIR) and is
// accepted by Walk, which returns f (or its directory); dialDaemon then
// dials f (the socket) and store's paths are cleaned by filepath.Join, so
// no caller reaches a different file than it checked. Linux refuses an
// empty link target (ENOENT), so Walk never meets one.
func TestReview64WalkMatchesTheKernel(t *testing.T) {
	base := t.TempDir()
	mk := func(p string) string {
		p = filepath.Join(base, p)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	link := func(target, at string) {
		if err := os.Symlink(target, filepath.Join(base, at)); err != nil {
			t.Fatal(err)
		}
	}
	sub := mk("d/sub")
	mk("e")
	if err := os.WriteFile(filepath.Join(sub, "f"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	link("d/sub", "rel")           // relative
	link(sub, "abs")               // absolute
	link("/", "root")              // the root
	link("../rel/..", "e/up")      // a chain with ".." after a link
	link(sub+"/../sub/f", "e/f")   // absolute, with ".." inside
	link("loop2", "loop1")         // a loop
	link("loop1", "loop2")         //
	link("sub/../../rel", "d/mid") // ".." out of a link's directory
	link("../abs/..", "e/absup")   // ".." after an absolute link, in a target
	link("/..", "rootup")          // "/.." at the root, in a target
	link("../root/"+base[1:]+"/rel", "e/viaroot")
	if err := os.Symlink("../d/sub", filepath.Join(base, "e", "s")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{
		"rel", "rel/f", "abs/f", "root", "root" + base + "/rel/f",
		"e/up", "e/up/sub/f", "e/f", "e/s/f", "d/mid/f", "d/mid",
		"e/absup", "e/absup/sub/f", "rootup", "e/viaroot/f",
	} {
		full := base + "/" + p
		got, err := Walk(full)
		if err != nil {
			t.Errorf("Walk(%s): %v", p, err)
			continue
		}
		var kst, wst syscall.Stat_t
		if err := syscall.Stat(full, &kst); err != nil {
			t.Errorf("kernel %s: %v", p, err)
			continue
		}
		if err := syscall.Stat(got, &wst); err != nil {
			t.Errorf("stat Walk(%s) = %s: %v", p, got, err)
			continue
		}
		if kst.Dev != wst.Dev || kst.Ino != wst.Ino {
			t.Errorf("Walk(%s) = %s: not the file the kernel reaches", p, got)
		}
		if strings.Contains(got, "..") {
			t.Errorf("Walk(%s) = %s: not resolved", p, got)
		}
	}
	if got, err := Walk("/.."); err != nil || got != "/" {
		t.Errorf(`Walk("/..") = %q, %v; want "/"`, got, err)
	}
	if _, err := Walk(base + "/loop1/x"); err == nil || !strings.Contains(err.Error(), "too many links") {
		t.Errorf("Walk(loop1/x): %v; want too many links", err)
	}
	// Pinned divergences: the kernel refuses, Walk resolves to f or its directory.
	f := filepath.Join(sub, "f")
	for p, want := range map[string]string{f + "/": f, f + "/..": sub} {
		if _, err := os.Stat(p); !errors.Is(err, syscall.ENOTDIR) {
			t.Errorf("kernel %s: %v; want ENOTDIR", p, err)
		}
		if got, err := Walk(p); err != nil || got != want {
			t.Errorf("Walk(%s) = %q, %v; pinned: %q", p, got, err, want)
		}
	}
}
