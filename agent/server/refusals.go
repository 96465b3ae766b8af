package server

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
)

// refusalCounts counts refusals by caller uid.
type refusalCounts struct {
	mu    sync.Mutex
	byUID map[int]int64
}

func (r *refusalCounts) add(uid int, n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byUID == nil {
		r.byUID = map[int]int64{}
	}
	r.byUID[uid] += n
}

func (r *refusalCounts) addAll(c countsByUID) {
	for uid, n := range c {
		r.add(uid, n)
	}
}

func (r *refusalCounts) any() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byUID) > 0
}

// take empties the counts and returns them.
func (r *refusalCounts) take() countsByUID {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.byUID
	r.byUID = nil
	return c
}

// countsByUID is refusals by caller uid. Its String lists the callers with
// the most refusals first, at most maxCountsListed of them, then the rest
// as one sum ("uid 4242: 20, uid 4243: 3, and 1,998 more callers: 2,104"):
// a flood from many uids (one user's subordinate ids) makes one record of
// bounded size (review 56: a record over the pending file's bound could
// never be kept while the trail is unwritable, and its count grew).
type countsByUID map[int]int64

// maxCountsListed bounds the callers a refusal count names one by one.
const maxCountsListed = 32

func (c countsByUID) String() string {
	uids := slices.Sorted(maps.Keys(c))
	slices.SortStableFunc(uids, func(a, b int) int { return cmp.Compare(c[b], c[a]) })
	var b strings.Builder
	for i, uid := range uids[:min(len(uids), maxCountsListed)] {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "uid %d: %d", uid, c[uid])
	}
	if rest := uids[min(len(uids), maxCountsListed):]; len(rest) > 0 {
		var n int64
		for _, uid := range rest {
			n += c[uid]
		}
		fmt.Fprintf(&b, ", and %d more callers: %d", len(rest), n)
	}
	return b.String()
}
