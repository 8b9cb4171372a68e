package agent

import (
	"net/http"
	"time"

	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the agent's Prometheus series, in a registry of their own.
type Metrics struct {
	reg           *prometheus.Registry
	images        *prometheus.GaugeVec
	pulls         *prometheus.CounterVec
	pullSeconds   prometheus.Histogram
	pullBytes     prometheus.Counter
	lastReconcile prometheus.Gauge
	configLoads   *prometheus.CounterVec
	credExpiry    *prometheus.GaugeVec
	configOK      prometheus.Gauge
	fromFallback  prometheus.Gauge
}

// NewMetrics returns the agent's collectors, registered.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		images: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pull_agent_images",
			Help: "Configured images by state (pending, pulling, warm, failed, stale)."}, []string{"state"}),
		pulls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pull_agent_pulls_total",
			Help: "Pulls by result (success, failure) and error class (empty on success)."}, []string{"result", "class"}),
		pullSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pull_agent_pull_duration_seconds",
			Help: "Duration of pulls, successful or not.", Buckets: []float64{0.1, 0.5, 1, 5, 15, 60, 180, 600, 1800, 3600}}),
		pullBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "pull_agent_pull_bytes_total",
			Help: "Compressed bytes downloaded by pulls."}),
		lastReconcile: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pull_agent_last_reconcile_timestamp_seconds",
			Help: "When the agent last finished a reconcile (nothing in flight, nothing due)."}),
		configLoads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pull_agent_config_loads_total",
			Help: "Configuration loads by result (applied, refused)."}, []string{"result"}),
		credExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pull_agent_credentials_expiry_timestamp_seconds",
			Help: "When the credentials last used for a registry host expire, where known (ECR)."}, []string{"host"}),
		configOK: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pull_agent_config_ok",
			Help: "1 when the last configuration read was applied, 0 while it is refused (the last good one keeps running)."}),
		fromFallback: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pull_agent_images_from_fallback",
			Help: "Configured images whose content came from a fallback prefix (MOLECULE_IMAGE_FALLBACK_REGISTRY), not the primary."}),
	}
	m.reg.MustRegister(m.images, m.pulls, m.pullSeconds, m.pullBytes, m.lastReconcile, m.configLoads, m.credExpiry, m.configOK, m.fromFallback)
	for _, s := range []string{state.Pending, state.Pulling, state.Warm, state.Failed, state.Stale} {
		m.images.WithLabelValues(s).Set(0)
	}
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

func (m *Metrics) observePull(r pull.PullResult) {
	result, class := "success", ""
	if r.Err != nil {
		result, class = "failure", string(pull.ClassOf(r.Err))
	}
	m.pulls.WithLabelValues(result, class).Inc()
	m.pullSeconds.Observe(r.Duration.Seconds())
	m.pullBytes.Add(float64(r.Bytes))
}

func (m *Metrics) reconciled(t time.Time) { m.lastReconcile.Set(float64(t.UnixNano()) / 1e9) }

func (m *Metrics) configLoad(ok bool) {
	if ok {
		m.configLoads.WithLabelValues("applied").Inc()
	} else {
		m.configLoads.WithLabelValues("refused").Inc()
	}
}

func (m *Metrics) setState(doc state.StateDoc) {
	counts := map[string]float64{state.Pending: 0, state.Pulling: 0, state.Warm: 0, state.Failed: 0, state.Stale: 0}
	fallback := 0.0
	for _, i := range doc.Images {
		counts[i.State]++
		if i.FromFallback() {
			fallback++
		}
	}
	m.fromFallback.Set(fallback)
	m.configOK.Set(map[bool]float64{true: 1, false: 0}[doc.Agent.ConfigOK])
	for s, n := range counts {
		m.images.WithLabelValues(s).Set(n)
	}
	// Only the hosts in use: after a flip, the old host's last token
	// would otherwise run out on the page and raise an alert.
	m.credExpiry.Reset()
	for _, h := range doc.Hosts {
		if h.TokenExpiresAt != nil {
			m.credExpiry.WithLabelValues(h.Host).Set(float64(h.TokenExpiresAt.Unix()))
		}
	}
}
