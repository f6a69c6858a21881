// Package source holds what switchyard's two object sources (client-go
// informers and the manifest folder) share: which objects this proxy is
// responsible for, the label selector that narrows the API server's lists,
// and the API server's defaults and validation for objects read from disk
// (Default*, Validate*).
package source

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
)

const (
	// LabelServiceProxyName names the proxy that should handle a Service
	// (and its EndpointSlices, which inherit the Service's labels). Default
	// proxies like kube-proxy ignore objects that carry it.
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	// LabelHeadless marks the EndpointSlices (and Endpoints) of headless
	// services. kube-proxy ignores objects that carry it.
	LabelHeadless = corev1.IsHeadlessService
)

// Selected reports whether an object with the given labels is this proxy's
// to handle. It follows kube-proxy: objects labelled headless are ignored,
// and objects carrying LabelServiceProxyName are ignored unless the label's
// value equals proxyName. With proxyName "" only objects without the label
// are selected. The same rule is applied to Services and EndpointSlices, as
// kube-proxy applies one label selector to both.
func Selected(objLabels map[string]string, proxyName string) bool {
	if _, ok := objLabels[LabelHeadless]; ok {
		return false
	}
	name, ok := objLabels[LabelServiceProxyName]
	if !ok {
		return true
	}
	return proxyName != "" && name == proxyName
}

// ServiceSelected reports whether svc is this proxy's to handle (see Selected).
// Headless and ExternalName services are still selected: skipping them is the
// planner's decision.
func ServiceSelected(svc *corev1.Service, proxyName string) bool {
	return Selected(svc.Labels, proxyName)
}

// EndpointSliceSelected reports whether slice is this proxy's to handle (see
// Selected).
func EndpointSliceSelected(slice *discoveryv1.EndpointSlice, proxyName string) bool {
	return Selected(slice.Labels, proxyName)
}

// LabelSelector returns the label selector to list and watch Services and
// EndpointSlices with. For proxyName "" it is kube-proxy's exact selector
// ("!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name").
// A label selector cannot say "absent or equal to proxyName", so for a
// non-empty proxyName it only excludes headless objects and callers must
// still filter with Selected; the selector is always a superset of Selected.
func LabelSelector(proxyName string) labels.Selector {
	sel := labels.NewSelector()
	sel = sel.Add(mustRequirement(LabelHeadless, selection.DoesNotExist))
	if proxyName == "" {
		sel = sel.Add(mustRequirement(LabelServiceProxyName, selection.DoesNotExist))
	}
	return sel
}

func mustRequirement(key string, op selection.Operator) labels.Requirement {
	r, err := labels.NewRequirement(key, op, nil)
	if err != nil {
		// The keys are constants; an error here is a programming error.
		panic(fmt.Sprintf("label requirement %s %s: %v", key, op, err))
	}
	return *r
}
