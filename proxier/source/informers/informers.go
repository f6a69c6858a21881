// Package informers is switchyard's cluster source: client-go shared
// informers for Services, EndpointSlices, this node's Node and the Pods
// scheduled on it, delivering to a proxier.Sink. It filters like
// kube-proxy (see source.Selected), on the server where a selector can
// express it and again on the client.
package informers

import (
	"context"
	"fmt"
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/proxier/source"
)

// probeInterval is how often a failing API server is probed (tests shorten it).
var probeInterval = DefaultProbeInterval

// Run starts informers for the Services and EndpointSlices this proxy is
// responsible for (proxyName, see source.Selected), the Node named
// nodeName and the Pods whose spec.nodeName is nodeName, and delivers
// their events to sink. A list or watch that fails (the API server is away,
// a watch breaks) is logged at WARN once and its recovery at INFO (see
// health). It calls sink.OnSynced once every informer has
// listed and its initial objects have reached the sink. Run blocks until
// ctx ends, stops the informers, and returns nil; it returns an error only
// if it cannot set up the informers.
func Run(ctx context.Context, client kubernetes.Interface, nodeName, proxyName string, sink proxier.Sink, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	log = log.With("source", "informers")
	if nodeName == "" {
		return fmt.Errorf("informers: node name is empty")
	}
	// Cancel the informers before Shutdown, which waits for them to stop.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	selector := source.LabelSelector(proxyName).String()
	services := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(Trim),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = selector }))
	nodes := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(Trim),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", nodeName).String()
		}))
	pods := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(Trim),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", nodeName).String()
		}))
	defer func() {
		cancel()
		services.Shutdown()
		nodes.Shutdown()
		pods.Shutdown()
	}()

	// The selectors run on the server; the same filters run again here
	// because a label selector cannot express every proxy-name rule (and
	// fake clients ignore field selectors).
	regs := make([]cache.ResourceEventHandlerRegistration, 0, 4)
	add := func(what string, inf cache.SharedIndexInformer, h cache.ResourceEventHandler) error {
		reg, err := inf.AddEventHandler(h)
		if err != nil {
			return fmt.Errorf("informers: add %s handler: %w", what, err)
		}
		regs = append(regs, reg)
		return nil
	}
	if err := add("Service", services.Core().V1().Services().Informer(), handler(log,
		func(s *corev1.Service) bool { return source.ServiceSelected(s, proxyName) },
		sink.OnService)); err != nil {
		return err
	}
	if err := add("EndpointSlice", services.Discovery().V1().EndpointSlices().Informer(), handler(log,
		func(s *discoveryv1.EndpointSlice) bool { return source.EndpointSliceSelected(s, proxyName) },
		sink.OnEndpointSlice)); err != nil {
		return err
	}
	if err := add("Node", nodes.Core().V1().Nodes().Informer(), handler(log,
		func(n *corev1.Node) bool { return n.Name == nodeName },
		sink.OnNode)); err != nil {
		return err
	}
	if err := add("Pod", pods.Core().V1().Pods().Informer(), handler(log,
		func(p *corev1.Pod) bool { return p.Spec.NodeName == nodeName },
		sink.OnPod)); err != nil {
		return err
	}

	// Watch failures are logged at WARN once, and their end at INFO.
	h := newHealth(log, func(ctx context.Context) error {
		l, err := client.CoreV1().Services("").List(ctx, metav1.ListOptions{LabelSelector: selector, Limit: 1})
		if err != nil {
			return fmt.Errorf("list services: %w", err)
		}
		timeout := int64(1)
		w, err := client.CoreV1().Services("").Watch(ctx, metav1.ListOptions{LabelSelector: selector,
			ResourceVersion: l.ResourceVersion, TimeoutSeconds: &timeout})
		if err != nil {
			return fmt.Errorf("watch services: %w", err)
		}
		w.Stop()
		return nil
	}, probeInterval)
	for _, inf := range []cache.SharedIndexInformer{
		services.Core().V1().Services().Informer(), services.Discovery().V1().EndpointSlices().Informer(),
		nodes.Core().V1().Nodes().Informer(), pods.Core().V1().Pods().Informer(),
	} {
		if err := inf.SetWatchErrorHandlerWithContext(h.onError); err != nil {
			return fmt.Errorf("informers: set watch error handler: %w", err)
		}
	}
	go h.run(ctx)

	services.StartWithContext(ctx)
	nodes.StartWithContext(ctx)
	pods.StartWithContext(ctx)

	checkers := make([]cache.DoneChecker, len(regs))
	for i, reg := range regs {
		checkers[i] = reg.HasSyncedChecker()
	}
	log.Info("waiting for informer caches", "node", nodeName, "labelSelector", selector)
	if !cache.WaitFor(ctx, "", checkers...) {
		return nil // ctx ended first
	}
	log.Info("informer caches synced")
	sink.OnSynced()
	<-ctx.Done()
	return nil
}

// handler adapts a typed sink method to informer events. Objects for which
// selected is false are not delivered; an update that makes an object
// unselected is delivered as its deletion, one that makes it selected as
// an addition. Deletions unwrap cache.DeletedFinalStateUnknown.
func handler[T interface {
	*E
	metav1.Object
}, E any](log *slog.Logger, selected func(T) bool, deliver func(T, bool)) cache.ResourceEventHandler {
	cast := func(obj any) (T, bool) {
		if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = tomb.Obj
		}
		o, ok := obj.(T)
		if !ok || o == nil {
			log.Error("informer delivered an unexpected object", "type", fmt.Sprintf("%T", obj))
			return nil, false
		}
		return o, true
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if o, ok := cast(obj); ok && selected(o) {
				deliver(o, false)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, ok := cast(oldObj)
			n, ok2 := cast(newObj)
			if !ok || !ok2 {
				return
			}
			if rv := n.GetResourceVersion(); rv != "" && rv == o.GetResourceVersion() {
				return // a relist or resync of an unchanged object
			}
			switch {
			case selected(n):
				deliver(n, false)
			case selected(o):
				deliver(o, true)
			}
		},
		DeleteFunc: func(obj any) {
			if o, ok := cast(obj); ok && selected(o) {
				deliver(o, true)
			}
		},
	}
}

// lastApplied is kubectl's copy of the whole applied manifest.
const lastApplied = "kubectl.kubernetes.io/last-applied-configuration"

// Trim is the informers' transform: it drops what no decision reads and
// what costs memory at scale before an object enters the caches: every
// object's managedFields (as kube-proxy trims them) and kubectl's
// last-applied-configuration annotation (a second copy of the object), and
// an EndpointSlice's owner references and its endpoints' targetRef,
// hostname and deprecated topology (the EndpointSlice controller writes a
// Pod reference per endpoint: about a fifth of a slice's memory). Anything
// that is not an object (a tombstone) is returned as it is.
func Trim(obj any) (any, error) {
	acc, err := apimeta.Accessor(obj)
	if err != nil {
		return obj, nil
	}
	if s, ok := obj.(*discoveryv1.EndpointSlice); ok {
		s.OwnerReferences = nil
		for i := range s.Endpoints {
			e := &s.Endpoints[i]
			e.TargetRef, e.Hostname, e.DeprecatedTopology = nil, nil, nil
		}
	}
	acc.SetManagedFields(nil)
	if a := acc.GetAnnotations(); a != nil {
		if _, ok := a[lastApplied]; ok {
			kept := make(map[string]string, len(a)-1)
			for k, v := range a {
				if k != lastApplied {
					kept[k] = v
				}
			}
			acc.SetAnnotations(kept)
		}
	}
	return obj, nil
}
