package fleet

import (
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the endpoint's Prometheus metrics (/metrics): counts and
// latencies, never a device ID or anything a device sent.
type Metrics struct {
	reg         *prometheus.Registry
	enrollments *prometheus.CounterVec
	appraisals  *prometheus.CounterVec
	latency     prometheus.Histogram
	limited     *prometheus.CounterVec
}

// NewMetrics registers the endpoint's metrics in a registry of their own.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		enrollments: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "provd_fleet_enrollments_total",
			Help: "Enrollment requests, by result (enrolled: activated; pending: credential sent; rejected)."}, []string{"result"}),
		appraisals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "provd_fleet_appraisals_total",
			Help: "Appraisals, by result (pass, fail) and the first reason's code."}, []string{"result", "reason"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "provd_fleet_appraisal_seconds",
			Help: "Time to appraise one attestation, store included.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "provd_fleet_rate_limited_total",
			Help: "Requests refused by a rate limit, by route."}, []string{"route"}),
	}
	m.reg.MustRegister(m.enrollments, m.appraisals, m.latency, m.limited,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// limiter is a token bucket per key (a device ID, a client address): rate
// per second, burst at most. In memory, per replica: a fleet of N replicas
// allows N times the rate to a client spread over them.
type limiter struct {
	mu      sync.Mutex
	rate    float64
	burst   float64
	buckets map[string]*bucket
	now     func() time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(rate, burst float64, now func() time.Time) *limiter {
	return &limiter{rate: rate, burst: burst, buckets: map[string]*bucket{}, now: now}
}

// allow takes a token for key, false when it has none left.
func (l *limiter) allow(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= maxBuckets {
			l.sweep(now)
			if len(l.buckets) >= maxBuckets {
				// Full of active buckets: a new key waits rather than
				// everyone's limits being reset (found by review).
				return false
			}
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// maxBuckets bounds the limiter's memory: full buckets are dropped first.
const maxBuckets = 1 << 16

func (l *limiter) sweep(now time.Time) {
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.buckets, k)
		}
	}
}
