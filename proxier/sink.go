package proxier

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Sink receives the objects a source watches. Both sources (client-go
// informers and the manifest folder) call the same methods, so nothing
// downstream knows which one is in use. Implementations must be safe for
// concurrent use; the objects passed in must not be modified afterwards.
type Sink interface {
	// OnService records an added or updated Service, or its deletion.
	OnService(svc *corev1.Service, deleted bool)
	// OnEndpointSlice records an added or updated EndpointSlice, or its deletion.
	OnEndpointSlice(slice *discoveryv1.EndpointSlice, deleted bool)
	// OnNode records this node's Node object, or its deletion.
	OnNode(node *corev1.Node, deleted bool)
	// OnPod records a Pod scheduled on this node, or its deletion.
	OnPod(pod *corev1.Pod, deleted bool)
	// OnSynced is called once the source has delivered its initial state;
	// the first sync waits for it so a restart never programs a partial view.
	OnSynced()
}
