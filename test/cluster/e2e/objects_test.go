package e2e

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

// Names of the Service under test.
const (
	svcNamespace = "e2e"
	svcName      = "web"
	portName     = "http"
	svcPort      = 80
	// svcComment is how switchyard's rule comments name the service port.
	svcComment = svcNamespace + "/" + svcName + ":" + portName
)

// ep is one endpoint of the Service's EndpointSlice: a lab pod, the node
// it runs on and its conditions.
type ep struct {
	pod                         string
	node                        string
	ready, serving, terminating bool
}

// readyOn is a ready endpoint of pod on node.
func readyOn(pod, node string) ep { return ep{pod: pod, node: node, ready: true, serving: true} }

// terminatingOn is a terminating endpoint that still serves (or not).
func terminatingOn(pod, node string, serving bool) ep {
	return ep{pod: pod, node: node, serving: serving, terminating: true}
}

// ensureNode creates the Node with the lab's node IP as its InternalIP.
func ensureNode(ctx context.Context, c kubernetes.Interface, name, ip string) error {
	node, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create node %s: %w", name, err)
	}
	node.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: ip},
		{Type: corev1.NodeHostName, Address: name},
	}
	if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("node %s status: %w", name, err)
	}
	return nil
}

// createService creates the ClusterIP Service (no selector: the test
// writes its EndpointSlice) and returns it as stored.
func createService(ctx context.Context, c kubernetes.Interface) (*corev1.Service, error) {
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: svcNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create namespace %s: %w", svcNamespace, err)
	}
	svc, err := c.CoreV1().Services(svcNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: svcName, Namespace: svcNamespace},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP,
			Ports: []corev1.ServicePort{{
				Name: portName, Protocol: corev1.ProtocolTCP,
				Port: svcPort, TargetPort: intstr.FromInt32(targetPort),
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create service %s/%s: %w", svcNamespace, svcName, err)
	}
	return svc, nil
}

// updateService applies change to the stored Service, retrying on
// conflicts, and returns the result.
func updateService(ctx context.Context, c kubernetes.Interface, change func(*corev1.Service)) (*corev1.Service, error) {
	var out *corev1.Service
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		svc, err := c.CoreV1().Services(svcNamespace).Get(ctx, svcName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		change(svc)
		out, err = c.CoreV1().Services(svcNamespace).Update(ctx, svc, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("update service %s/%s: %w", svcNamespace, svcName, err)
	}
	return out, nil
}

// setEndpoints creates or replaces the Service's EndpointSlice with eps,
// stamped with a last-change-trigger-time of now (what the EndpointSlice
// controller does), so switchyard can report its network programming
// latency.
func setEndpoints(ctx context.Context, c kubernetes.Interface, eps ...ep) error {
	tcp := corev1.ProtocolTCP
	name, port := portName, int32(targetPort)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      svcName + "-e2e",
			Namespace: svcNamespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: svcName,
				discoveryv1.LabelManagedBy:   "switchyard-e2e",
			},
			Annotations: map[string]string{
				"endpoints.kubernetes.io/last-change-trigger-time": time.Now().UTC().Format(time.RFC3339Nano),
			},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &tcp, Port: &port}},
	}
	for _, e := range eps {
		e := e
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{podIPs[e.pod].String()},
			Conditions: discoveryv1.EndpointConditions{
				Ready: &e.ready, Serving: &e.serving, Terminating: &e.terminating,
			},
			NodeName:  &e.node,
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: svcNamespace, Name: e.pod},
		})
	}
	slices := c.DiscoveryV1().EndpointSlices(svcNamespace)
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		old, err := slices.Get(ctx, slice.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = slices.Create(ctx, slice, metav1.CreateOptions{})
		case err == nil:
			slice.ResourceVersion = old.ResourceVersion
			_, err = slices.Update(ctx, slice, metav1.UpdateOptions{})
		}
		if err != nil {
			return fmt.Errorf("endpointslice %s/%s: %w", svcNamespace, slice.Name, err)
		}
		return nil
	})
}
