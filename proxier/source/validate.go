package source

import (
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// The Validate functions check, on an object read from disk and defaulted
// (see DefaultService and friends), the rules the API server applies at
// creation to the fields switchyard reads and to every string it may write
// into kernel rules or logs: metadata (name, namespace as a DNS-1123
// label, label and annotation keys and values and their total size),
// port names and protocols. Objects from the API server already passed
// them. They return nil or an error listing every violation, each naming
// its field, in the API server's words.

var supportedProtocols = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}

// ValidateService checks a Service: metadata with a DNS-1035 label name;
// each port named when there are several, port names DNS-1123 labels and
// unique, port numbers 1-65535, protocol TCP, UDP or SCTP, a named
// targetPort an IANA service name.
func ValidateService(svc *corev1.Service) error {
	errs := apivalidation.ValidateObjectMeta(&svc.ObjectMeta, true, apivalidation.NameIsDNS1035Label, field.NewPath("metadata"))
	ports := field.NewPath("spec", "ports")
	names := map[string]bool{}
	for i, p := range svc.Spec.Ports {
		path := ports.Index(i)
		switch {
		case p.Name == "" && len(svc.Spec.Ports) > 1:
			errs = append(errs, field.Required(path.Child("name"), "a service with several ports must name each"))
		case p.Name != "":
			errs = append(errs, label(p.Name, path.Child("name"))...)
			if names[p.Name] {
				errs = append(errs, field.Duplicate(path.Child("name"), p.Name))
			}
			names[p.Name] = true
		}
		for _, msg := range validation.IsValidPortNum(int(p.Port)) {
			errs = append(errs, field.Invalid(path.Child("port"), p.Port, msg))
		}
		errs = append(errs, protocol(p.Protocol, path.Child("protocol"))...)
		if p.TargetPort.Type == intstr.String {
			for _, msg := range validation.IsValidPortName(p.TargetPort.StrVal) {
				errs = append(errs, field.Invalid(path.Child("targetPort"), p.TargetPort.StrVal, msg))
			}
		}
	}
	return aggregate(errs)
}

// ValidateEndpointSlice checks an EndpointSlice: metadata with a DNS-1123
// subdomain name; port names DNS-1123 labels (or empty) and unique, port
// protocols TCP, UDP or SCTP; endpoint node names DNS-1123 subdomains.
func ValidateEndpointSlice(slice *discoveryv1.EndpointSlice) error {
	errs := apivalidation.ValidateObjectMeta(&slice.ObjectMeta, true, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata"))
	ports := field.NewPath("ports")
	var names []string
	for i, p := range slice.Ports {
		path := ports.Index(i)
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		if name != "" {
			errs = append(errs, label(name, path.Child("name"))...)
		}
		if slices.Contains(names, name) {
			errs = append(errs, field.Duplicate(path.Child("name"), name))
		}
		names = append(names, name)
		if p.Protocol == nil {
			errs = append(errs, field.Required(path.Child("protocol"), ""))
		} else {
			errs = append(errs, protocol(*p.Protocol, path.Child("protocol"))...)
		}
	}
	for i, ep := range slice.Endpoints {
		if ep.NodeName != nil {
			for _, msg := range apivalidation.NameIsDNSSubdomain(*ep.NodeName, false) {
				errs = append(errs, field.Invalid(field.NewPath("endpoints").Index(i).Child("nodeName"), *ep.NodeName, msg))
			}
		}
	}
	return aggregate(errs)
}

// ValidateNode checks a Node: metadata with a DNS-1123 subdomain name and
// no namespace.
func ValidateNode(node *corev1.Node) error {
	return aggregate(apivalidation.ValidateObjectMeta(&node.ObjectMeta, false, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata")))
}

// ValidatePod checks a Pod: metadata with a DNS-1123 subdomain name; in
// each container, port names IANA service names and unique, protocols TCP,
// UDP or SCTP.
func ValidatePod(pod *corev1.Pod) error {
	errs := apivalidation.ValidateObjectMeta(&pod.ObjectMeta, true, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata"))
	for _, list := range []struct {
		kind       string
		containers []corev1.Container
	}{{"initContainers", pod.Spec.InitContainers}, {"containers", pod.Spec.Containers}} {
		for i, c := range list.containers {
			names := map[string]bool{}
			for j, p := range c.Ports {
				path := field.NewPath("spec", list.kind).Index(i).Child("ports").Index(j)
				if p.Name != "" {
					for _, msg := range validation.IsValidPortName(p.Name) {
						errs = append(errs, field.Invalid(path.Child("name"), p.Name, msg))
					}
					if names[p.Name] {
						errs = append(errs, field.Duplicate(path.Child("name"), p.Name))
					}
					names[p.Name] = true
				}
				errs = append(errs, protocol(p.Protocol, path.Child("protocol"))...)
			}
		}
	}
	return aggregate(errs)
}

// Validate checks a Service, EndpointSlice, Node or Pod with the matching
// function above; other types are an error.
func Validate(obj any) error {
	switch o := obj.(type) {
	case *corev1.Service:
		return ValidateService(o)
	case *discoveryv1.EndpointSlice:
		return ValidateEndpointSlice(o)
	case *corev1.Node:
		return ValidateNode(o)
	case *corev1.Pod:
		return ValidatePod(o)
	}
	return fmt.Errorf("cannot validate a %T", obj)
}

func label(s string, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range validation.IsDNS1123Label(s) {
		errs = append(errs, field.Invalid(path, s, msg))
	}
	return errs
}

func protocol(p corev1.Protocol, path *field.Path) field.ErrorList {
	if p == "" {
		return field.ErrorList{field.Required(path, "")}
	}
	if !slices.Contains(supportedProtocols, p) {
		return field.ErrorList{field.NotSupported(path, p, supportedProtocols)}
	}
	return nil
}

func aggregate(errs field.ErrorList) error {
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("invalid: %w", errs.ToAggregate())
}
