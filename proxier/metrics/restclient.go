package metrics

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"k8s.io/component-base/metrics/legacyregistry"
	// Registers client-go's metrics adapters (package tools/metrics), as
	// kube-proxy does through component-base's clientgo package: every
	// API request of the informers then counts in upstream's rest_client_*
	// series (requests_total{code,method,host},
	// request_duration_seconds{verb,host}, request/response size,
	// rate limiter duration, retries, transport cache, exec plugin), with
	// upstream's names, buckets, HELP texts and stability markers.
	// component-base's metrics and legacy registry are linked anyway
	// (logging and feature gates use them).
	_ "k8s.io/component-base/metrics/prometheus/restclient"
)

// restClientPrefix selects the client-go families of component-base's
// legacy registry.
const restClientPrefix = "rest_client_"

// restClientGatherer returns the rest_client_* families of component-base's
// legacy registry, where the adapters record; the rest of that registry
// (its own Go and process collectors) is left out, since Metrics' registry
// has them. Like upstream, a series appears once client-go first reports
// into it (the adapters register their metrics on first use).
type restClientGatherer struct{ g prometheus.Gatherer }

// Gather implements prometheus.Gatherer.
func (r restClientGatherer) Gather() ([]*dto.MetricFamily, error) {
	mfs, err := r.g.Gather()
	out := mfs[:0]
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), restClientPrefix) {
			out = append(out, mf)
		}
	}
	return out, err
}

// defaultRestClientGatherer is the gatherer Handler merges in.
var defaultRestClientGatherer prometheus.Gatherer = restClientGatherer{g: legacyregistry.DefaultGatherer}
