// Command swy-demo is the Go half of `make demo` (test/demo/demo.sh):
//
//	swy-demo apply   --kubeconfig FILE | --manifests DIR  [--not-ready POD,...]
//	swy-demo traffic --to IP:PORT --count N --pods POD,... [--expect POD,...]
//
// apply creates (or updates) the demo's Node, Service and EndpointSlice
// through the API server with client-go, or writes them to a manifest
// folder; traffic sends N echo requests and prints how many each pod
// answered, exiting 1 when a request failed or an unexpected pod answered.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/switchyard-proxy/switchyard/test/demo"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: swy-demo apply|traffic [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "apply":
		err = apply(os.Args[2:])
	case "traffic":
		err = traffic(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q (want apply or traffic)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "swy-demo %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func apply(args []string) error {
	fs := pflag.NewFlagSet("swy-demo apply", pflag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "create the objects through this API server")
	dir := fs.String("manifests", "", "write the objects to this folder instead")
	namespace := fs.String("namespace", "demo", "the Service's namespace")
	service := fs.String("service", "web", "the Service's name")
	node := fs.String("node", "node-a", "the Node's name")
	nodeIP := fs.String("node-ip", "10.0.0.10", "the Node's InternalIP")
	clusterIP := fs.String("cluster-ip", "10.96.0.80", "the Service's cluster IP")
	port := fs.Int32("port", 80, "the Service's port")
	targetPort := fs.Int32("target-port", 8080, "the pods' port")
	nodePort := fs.Int32("node-port", 30080, "the Service's node port")
	pods := fs.StringSlice("pods", []string{"pod-a=10.244.0.11", "pod-b=10.244.0.12", "pod-c=10.244.0.13"}, "the endpoints, NAME=IP")
	notReady := fs.StringSlice("not-ready", nil, "pods whose endpoint is not ready")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if (*kubeconfig == "") == (*dir == "") {
		return errors.New("give exactly one of --kubeconfig and --manifests")
	}
	s := demo.Spec{
		Namespace: *namespace, Service: *service, Node: *node,
		Port: *port, TargetPort: *targetPort, NodePort: *nodePort,
	}
	var err error
	if s.NodeIP, err = netip.ParseAddr(*nodeIP); err != nil {
		return fmt.Errorf("--node-ip: %w", err)
	}
	if s.ClusterIP, err = netip.ParseAddr(*clusterIP); err != nil {
		return fmt.Errorf("--cluster-ip: %w", err)
	}
	down := map[string]bool{}
	for _, p := range *notReady {
		down[p] = true
	}
	for _, p := range *pods {
		name, ip, ok := strings.Cut(p, "=")
		if !ok {
			return fmt.Errorf("--pods: %q is not NAME=IP", p)
		}
		addr, err := netip.ParseAddr(ip)
		if err != nil {
			return fmt.Errorf("--pods %s: %w", name, err)
		}
		s.Pods = append(s.Pods, demo.Pod{Name: name, IP: addr, Ready: !down[name]})
		delete(down, name)
	}
	for p := range down {
		return fmt.Errorf("--not-ready: no pod %q", p)
	}

	if *dir != "" {
		return demo.WriteManifests(*dir, s)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	cfg.UserAgent = "swy-demo"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return demo.Apply(ctx, client, s)
}

func traffic(args []string) error {
	fs := pflag.NewFlagSet("swy-demo traffic", pflag.ContinueOnError)
	to := fs.String("to", "", "IP:PORT to send requests to")
	count := fs.Int("count", 30, "number of requests")
	timeout := fs.Duration("timeout", 2*time.Second, "deadline of one request")
	pods := fs.StringSlice("pods", nil, "pods to list even when they answer nothing")
	expect := fs.StringSlice("expect", nil, "the only pods allowed to answer (default: --pods)")
	client := fs.String("client-ip", "", "the address the requests leave from, to point out source NAT")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *to == "" {
		return errors.New("--to is required")
	}
	var from netip.Addr
	if *client != "" {
		var err error
		if from, err = netip.ParseAddr(*client); err != nil {
			return fmt.Errorf("--client-ip: %w", err)
		}
	}
	t := demo.Send(*to, *count, *timeout)
	t.Print(os.Stdout, *pods, from)
	want := *expect
	if len(want) == 0 {
		want = *pods
	}
	if len(want) == 0 {
		if len(t.Errors) > 0 {
			return fmt.Errorf("%d of %d requests failed", len(t.Errors), t.Sent)
		}
		return nil
	}
	return t.Check(want)
}
