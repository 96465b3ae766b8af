package keywrap

// Review 47: Combine's refusal of components that cancel (review 45's
// mend), attacked for subsets it might miss, its bounds and its timing.

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"sort"
	"testing"
	"time"
)

func review47Random(t testing.TB, n, size int) [][]byte {
	t.Helper()
	cs := make([][]byte, n)
	for i := range cs {
		cs[i] = make([]byte, size)
		if _, err := rand.Read(cs[i]); err != nil {
			t.Fatal(err)
		}
	}
	return cs
}

// review47Cancelling makes the components of mask XOR to zero: the highest
// one becomes the XOR of the others in mask (zeros for a single one).
func review47Cancelling(cs [][]byte, mask uint) {
	top := 0
	for i := range cs {
		if mask&(1<<i) != 0 {
			top = i
		}
	}
	clear(cs[top])
	for i := range cs {
		if i != top && mask&(1<<i) != 0 {
			subtle.XORBytes(cs[top], cs[top], cs[i])
		}
	}
}

// Held: the Gray-code walk reaches every non-empty subset. For every n up
// to 10 and every non-empty subset of n random components, the subset made
// to cancel (one of them the XOR of the rest) is found, by cancel and by
// Combine (ErrComponents, no key); for n = 16 the full set, the last
// component alone, the first and last, and the upper half; independent
// components are never refused.
func TestReview47CancelVisitsEverySubset(t *testing.T) {
	for n := 1; n <= 10; n++ {
		if cancel(review47Random(t, n, 16)) {
			t.Fatalf("n=%d: independent random components reported cancelling", n)
		}
		for mask := uint(1); mask < 1<<n; mask++ {
			cs := review47Random(t, n, 16)
			review47Cancelling(cs, mask)
			if !cancel(cs) {
				t.Errorf("n=%d: the subset %b XORs to zero, not found", n, mask)
			}
			if n >= 2 {
				if k, err := Combine(cs); !errors.Is(err, ErrComponents) || k != nil {
					t.Errorf("n=%d: the subset %b XORs to zero: Combine gave %x, %v", n, mask, k, err)
				}
			}
		}
	}
	for _, mask := range []uint{1<<16 - 1, 1 << 15, 1<<15 | 1, 0xff00, 0x8421} {
		for _, size := range []int{16, 32} {
			cs := review47Random(t, 16, size)
			review47Cancelling(cs, mask)
			if k, err := Combine(cs); !errors.Is(err, ErrComponents) || k != nil {
				t.Errorf("n=16, %d bytes: the subset %016b XORs to zero: Combine gave %x, %v", size, mask, k, err)
			}
		}
	}
}

// Held: n = 16 independent components (one bit each) are taken and give
// their XOR; n = 17 is refused (ErrSize) before any work, independent or
// not; a size that differs anywhere, and 24-byte components, are ErrSize.
func TestReview47SixteenAndSeventeen(t *testing.T) {
	var cs [][]byte
	want := make([]byte, 32)
	for i := range 16 {
		c := make([]byte, 32)
		c[i] = 1 << (i % 8)
		cs = append(cs, c)
		want[i] = c[i]
	}
	k, err := Combine(cs)
	if err != nil || !bytes.Equal(k, want) {
		t.Fatalf("16 independent components: %x, %v", k, err)
	}
	for _, seventeen := range [][][]byte{append(cs, bytes.Repeat([]byte{0xff}, 32)), review47Random(t, 17, 16), review47Random(t, 64, 16)} {
		if k, err := Combine(seventeen); !errors.Is(err, ErrSize) || k != nil {
			t.Errorf("%d components: %x, %v", len(seventeen), k, err)
		}
	}
	odd := review47Random(t, 5, 32)
	odd[3] = odd[3][:16]
	if k, err := Combine(odd); !errors.Is(err, ErrSize) || k != nil {
		t.Errorf("a 16-byte component among 32-byte ones: %x, %v", k, err)
	}
	if k, err := Combine(review47Random(t, 3, 24)); !errors.Is(err, ErrSize) || k != nil {
		t.Errorf("24-byte components: %x, %v", k, err)
	}
}

// review47Time is the time of one Combine of cs.
func review47Time(cs [][]byte) time.Duration {
	start := time.Now()
	Combine(cs)
	return time.Since(start)
}

// Held: Combine's time for 16 AES-256 components does not depend on their
// bytes: independent components, a first component of zeros (a check that
// stopped early would stop at the first step), and a cancellation only of
// the full set, and the last two equal, take the same
// time, within a factor of 1.5 of one another (medians of interleaved runs,
// under -race too). And the check is quick: well under a second for n = 16.
func TestReview47CombineTimeDoesNotDependOnTheBytes(t *testing.T) {
	sets := map[string][][]byte{"independent": review47Random(t, 16, 32)}
	z := review47Random(t, 16, 32)
	clear(z[0])
	sets["first component zeros"] = z
	full := review47Random(t, 16, 32)
	review47Cancelling(full, 1<<16-1)
	sets["only the full set cancels"] = full
	last := review47Random(t, 16, 32)
	review47Cancelling(last, 1<<15|1<<14)
	sets["the last two equal"] = last
	names := []string{"independent", "first component zeros", "only the full set cancels", "the last two equal"}
	times := map[string][]time.Duration{}
	for range 15 {
		for _, name := range names {
			times[name] = append(times[name], review47Time(sets[name]))
		}
	}
	var lo, hi time.Duration
	for i, name := range names {
		d := times[name]
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		m := d[len(d)/2]
		t.Logf("n=16, 32 bytes, %s: median %v (fastest %v)", name, m, d[0])
		if i == 0 || m < lo {
			lo = m
		}
		if m > hi {
			hi = m
		}
	}
	if float64(hi) > 1.5*float64(lo) {
		t.Errorf("Combine's time depends on the components: medians from %v to %v", lo, hi)
	}
	if hi > time.Second {
		t.Errorf("Combine of 16 components takes %v", hi)
	}
}
