package firmware

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// BenchmarkVerifyImages: fw verify's image pass against sha256sum over the
// same files (4 images; PROVD_BENCH_MIB sets the total, default 256 MiB;
// the figure is 1024). Both read from the page cache after the
// first round: the hash sets the pace, which is what "at disk speed" asks
// of the code.
func BenchmarkVerifyImages(b *testing.B) {
	total := int64(256)
	if n, err := strconv.ParseInt(os.Getenv("PROVD_BENCH_MIB"), 10, 64); err == nil && n > 0 {
		total = n
	}
	dir := b.TempDir()
	per := total << 20 / 4
	var paths []string
	for i := range 4 {
		p := filepath.Join(dir, "image"+strconv.Itoa(i))
		f, err := os.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 1<<20)
		for w := int64(0); w < per; w += int64(len(buf)) {
			rand.Read(buf)
			if _, err := f.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		f.Close()
		paths = append(paths, p)
	}
	images, err := HashImages(dir, "sha256")
	if err != nil {
		b.Fatal(err)
	}
	m := Manifest{Format: Format, Class: "bench", Version: 1, Images: images}
	b.Run("provd", func(b *testing.B) {
		b.SetBytes(total << 20)
		for range b.N {
			if err := m.VerifyImages(context.Background(), dir); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sha256sum", func(b *testing.B) {
		if _, err := exec.LookPath("sha256sum"); err != nil {
			b.Skip("no sha256sum")
		}
		b.SetBytes(total << 20)
		for range b.N {
			if out, err := exec.Command("sha256sum", paths...).CombinedOutput(); err != nil {
				b.Fatalf("%v: %s", err, out)
			}
		}
	})
}
