// Package demo holds what `make demo` needs besides shell: the Kubernetes
// objects of the demo (one Node, one NodePort Service, one EndpointSlice
// over the backend pods), written either to the API server with client-go
// or to a manifest folder, and a traffic counter that tells which pod
// answered each request (the echo protocol of package test/echo).
package demo

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

// Pod is one backend pod of the demo service.
type Pod struct {
	// Name is the pod's name; its echo server answers with it.
	Name string
	// IP is the pod's address.
	IP netip.Addr
	// Ready is the endpoint's ready condition.
	Ready bool
}

// Spec describes the demo's objects.
type Spec struct {
	// Namespace and Service name the Service (and its EndpointSlice).
	Namespace, Service string
	// Node is the node's name; every pod runs on it.
	Node string
	// NodeIP is the node's InternalIP.
	NodeIP netip.Addr
	// ClusterIP is the Service's cluster IP.
	ClusterIP netip.Addr
	// Port, TargetPort and NodePort are the Service's TCP port numbers.
	Port, TargetPort, NodePort int32
	// Pods are the endpoints.
	Pods []Pod
}

// PortName is the name of the Service's only port.
const PortName = "http"

// Objects returns the Node, Namespace, Service and EndpointSlice of s.
// Node carries its addresses in Status, which the API server only takes
// through the status sub-resource.
func (s Spec) Objects() (*corev1.Node, *corev1.Namespace, *corev1.Service, *discoveryv1.EndpointSlice) {
	node := &corev1.Node{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{Name: s.Node},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: s.NodeIP.String()},
			{Type: corev1.NodeHostName, Address: s.Node},
		}},
	}
	ns := &corev1.Namespace{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
		ObjectMeta: metav1.ObjectMeta{Name: s.Namespace},
	}
	svc := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: s.Service, Namespace: s.Namespace},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeNodePort,
			ClusterIP:  s.ClusterIP.String(),
			ClusterIPs: []string{s.ClusterIP.String()},
			Selector:   map[string]string{"app": s.Service},
			Ports: []corev1.ServicePort{{
				Name:       PortName,
				Protocol:   corev1.ProtocolTCP,
				Port:       s.Port,
				TargetPort: intstr.FromInt32(s.TargetPort),
				NodePort:   s.NodePort,
			}},
		},
	}
	tcp := corev1.ProtocolTCP
	name := PortName
	port := s.TargetPort
	slice := &discoveryv1.EndpointSlice{
		TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
		ObjectMeta: metav1.ObjectMeta{
			Name:      s.Service + "-demo",
			Namespace: s.Namespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: s.Service,
				discoveryv1.LabelManagedBy:   "swy-demo",
			},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &tcp, Port: &port}},
	}
	for _, p := range s.Pods {
		ready, serving, terminating := p.Ready, p.Ready, false
		nodeName := s.Node
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{p.IP.String()},
			Conditions: discoveryv1.EndpointConditions{
				Ready: &ready, Serving: &serving, Terminating: &terminating,
			},
			NodeName:  &nodeName,
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: s.Namespace, Name: p.Name},
		})
	}
	return node, ns, svc, slice
}

// WriteManifests writes the objects of s into dir as one YAML file, for
// switchyard's --manifests mode. The file is replaced atomically, so a
// watching switchyard never reads half of it.
func WriteManifests(dir string, s Spec) error {
	node, _, svc, slice := s.Objects()
	var out []byte
	for i, obj := range []any{node, svc, slice} {
		b, err := yaml.Marshal(obj)
		if err != nil {
			return fmt.Errorf("encode object %d: %w", i, err)
		}
		if i > 0 {
			out = append(out, "---\n"...)
		}
		out = append(out, b...)
	}
	tmp, err := os.CreateTemp(dir, ".demo-*.tmp")
	if err != nil {
		return fmt.Errorf("write manifests: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(out); err != nil {
		tmp.Close()
		return fmt.Errorf("write manifests: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write manifests: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, "demo.yaml")); err != nil {
		return fmt.Errorf("write manifests: %w", err)
	}
	return nil
}

// Apply creates the objects of s through the API server, or updates them
// when they exist (the Service only on creation: its spec never changes).
func Apply(ctx context.Context, c kubernetes.Interface, s Spec) error {
	node, ns, svc, slice := s.Objects()

	got, err := c.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		got, err = c.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	}
	if err != nil {
		return fmt.Errorf("node %s: %w", node.Name, err)
	}
	got.Status.Addresses = node.Status.Addresses
	if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("node %s status: %w", node.Name, err)
	}

	if _, err := c.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("namespace %s: %w", ns.Name, err)
	}
	// Get before Create: creating a Service that exists fails on its
	// cluster IP ("already allocated") before the name conflict.
	_, err = c.CoreV1().Services(s.Namespace).Get(ctx, svc.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = c.CoreV1().Services(s.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	}
	if err != nil {
		return fmt.Errorf("service %s/%s: %w", s.Namespace, svc.Name, err)
	}

	slices := c.DiscoveryV1().EndpointSlices(s.Namespace)
	old, err := slices.Get(ctx, slice.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = slices.Create(ctx, slice, metav1.CreateOptions{})
	case err == nil:
		slice.ResourceVersion = old.ResourceVersion
		_, err = slices.Update(ctx, slice, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("endpointslice %s/%s: %w", s.Namespace, slice.Name, err)
	}
	return nil
}
