package server

import (
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

// countsByUID is refusals by caller uid; its String is "uid 4242: 20, uid
// 4243: 3", by uid.
type countsByUID map[int]int64

func (c countsByUID) String() string {
	var b strings.Builder
	for i, uid := range slices.Sorted(maps.Keys(c)) {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "uid %d: %d", uid, c[uid])
	}
	return b.String()
}
