package fleet

import (
	"net/http"

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
