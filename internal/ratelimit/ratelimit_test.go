package ratelimit

import (
	"strconv"
	"testing"
	"time"
)

func TestBurstThenRate(t *testing.T) {
	now := time.Unix(1000, 0)
	l := New(0.5, 3, func() time.Time { return now })
	for i := range 3 {
		if !l.Allow("a") {
			t.Fatalf("token %d of the burst refused", i)
		}
	}
	if l.Allow("a") {
		t.Fatal("a token past the burst")
	}
	if !l.Allow("b") {
		t.Fatal("another key's bucket is its own")
	}
	now = now.Add(1900 * time.Millisecond)
	if l.Allow("a") {
		t.Fatal("a token before 2 s at 0.5 a second")
	}
	now = now.Add(100 * time.Millisecond)
	if !l.Allow("a") || l.Allow("a") {
		t.Fatal("not one token after 2 s")
	}
	now = now.Add(time.Hour)
	n := 0
	for l.Allow("a") {
		n++
	}
	if n != 3 {
		t.Fatalf("%d tokens after an hour; the burst is 3", n)
	}
	// A clock set back refills nothing, and moving forward again to where
	// it was refills nothing either.
	now = now.Add(-time.Hour)
	if l.Allow("a") {
		t.Fatal("a token after the clock went back")
	}
	now = now.Add(time.Hour)
	if l.Allow("a") {
		t.Fatal("a token for the time the clock went back")
	}
}

func TestBucketsBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	l := New(1, 1, func() time.Time { return now })
	for i := range MaxBuckets {
		if !l.Allow(strconv.Itoa(i)) {
			t.Fatalf("key %d refused", i)
		}
	}
	if l.Allow("new") {
		t.Fatal("a new key while every bucket is in use")
	}
	if l.Allow("0") {
		t.Fatal("key 0's empty bucket reset by a new key")
	}
	now = now.Add(time.Second)
	if !l.Allow("new") {
		t.Fatal("a new key refused once the buckets are full again")
	}
	if len(l.buckets) > MaxBuckets {
		t.Fatalf("%d buckets", len(l.buckets))
	}
}
