package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/switchyard-proxy/switchyard/test/cluster"
	"github.com/switchyard-proxy/switchyard/test/lab"
)

const (
	// programmingMetric is kube-proxy's network programming latency histogram.
	programmingMetric = "kubeproxy_network_programming_duration_seconds"
	// restartGrace extends the excused window of forbidden errors past the
	// API server's readiness (see "no forbidden errors").
	restartGrace = 2 * time.Second
)

// TestSwitchyard runs one switchyard, authenticated as the ServiceAccount
// of deploy/rbac.yaml, against one real API server, and walks a Service
// through its life: every subtest changes objects through the API server
// and checks real traffic through the lab. The subtests depend on each
// other and stop at the first failure.
func TestSwitchyard(t *testing.T) {
	lab.RequireRoot(t)
	for _, tool := range []string{"iptables-nft-save", "iptables-nft-restore"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required (Debian package iptables): %v", tool, err)
		}
	}
	e := newEnv(t)
	ctx := t.Context()
	l := e.lab

	kubeconfig := e.rbacKubeconfig(ctx, t)
	if err := ensureNode(ctx, e.client, nodeName, l.NodeIP.String()); err != nil {
		t.Fatal(err)
	}
	sw := e.startSwitchyard(kubeconfig)

	step := func(name string, f func(t *testing.T)) {
		t.Helper()
		if !t.Run(name, f) {
			t.FailNow()
		}
	}
	fromPod := client{name: "pod client", ns: l.Pod("client").NS}
	fromNode := client{name: "node", ns: l.Node}
	outside := client{name: "outside client", ns: l.Outside}
	inside := []client{fromPod, fromNode}
	nodeAddrs := []netip.Addr{l.NodeIP, l.OutsideGW}

	step("healthz", func(t *testing.T) {
		eventually(t, "/healthz is 200 after the initial sync", func() error {
			if err := sw.running(); err != nil {
				return err
			}
			code, body, err := e.get(healthzAt, "/healthz")
			if err != nil {
				return err
			}
			if code != 200 {
				return fmt.Errorf("/healthz: %d %s", code, body)
			}
			return nil
		})
	})

	var clusterIP string
	step("clusterIP service with two endpoints", func(t *testing.T) {
		svc, err := createService(ctx, e.client)
		if err != nil {
			t.Fatal(err)
		}
		clusterIP = net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(svcPort))
		if err := setEndpoints(ctx, e.client, readyOn("pod-a", nodeName), readyOn("pod-b", nodeName)); err != nil {
			t.Fatal(err)
		}
		// No traffic before switchyard has written a rule for the cluster
		// IP: a SYN sent earlier leaves the lab un-DNATed, and its
		// conntrack entry (SYN_SENT, 120 s) then captures any later
		// connection that reuses the same source port, which the
		// thousands of requests below do.
		eventually(t, "switchyard wrote a rule for "+svc.Spec.ClusterIP, func() error {
			save, err := e.iptablesSave()
			if err != nil {
				return err
			}
			for _, line := range strings.Split(save, "\n") {
				if strings.Contains(line, "-d "+svc.Spec.ClusterIP+"/32") && strings.Contains(line, `"`+svcComment) {
					return nil
				}
			}
			return fmt.Errorf("no rule for %s (%s) yet", svc.Spec.ClusterIP, svcComment)
		})
		e.expectServed(t, "pod and node reach pod-a and pod-b via "+clusterIP, inside, clusterIP, []string{"pod-a", "pod-b"}, nil)
	})

	step("endpoint added", func(t *testing.T) {
		if err := setEndpoints(ctx, e.client, readyOn("pod-a", nodeName), readyOn("pod-b", nodeName), readyOn("pod-c", otherNode)); err != nil {
			t.Fatal(err)
		}
		e.expectServed(t, "three endpoints answer", inside, clusterIP, []string{"pod-a", "pod-b", "pod-c"}, nil)
	})

	step("endpoint removed", func(t *testing.T) {
		if err := setEndpoints(ctx, e.client, readyOn("pod-a", nodeName), readyOn("pod-c", otherNode)); err != nil {
			t.Fatal(err)
		}
		e.expectServed(t, "pod-b gets nothing", inside, clusterIP, []string{"pod-a", "pod-c"}, nil)
	})

	step("endpoint terminating", func(t *testing.T) {
		if err := setEndpoints(ctx, e.client, readyOn("pod-a", nodeName), readyOn("pod-b", nodeName), terminatingOn("pod-c", otherNode, true)); err != nil {
			t.Fatal(err)
		}
		e.expectServed(t, "terminating pod-c gets nothing while others are ready", inside, clusterIP, []string{"pod-a", "pod-b"}, nil)
	})

	step("all terminating: serving ones answer", func(t *testing.T) {
		if err := setEndpoints(ctx, e.client,
			terminatingOn("pod-a", nodeName, true), terminatingOn("pod-b", nodeName, false), terminatingOn("pod-c", otherNode, true)); err != nil {
			t.Fatal(err)
		}
		e.expectServed(t, "serving-terminating pod-a and pod-c answer, not-serving pod-b does not", inside, clusterIP, []string{"pod-a", "pod-c"}, nil)
	})

	var nodePort string
	step("type NodePort", func(t *testing.T) {
		if err := setEndpoints(ctx, e.client, readyOn("pod-a", nodeName), readyOn("pod-b", nodeName), readyOn("pod-c", otherNode)); err != nil {
			t.Fatal(err)
		}
		svc, err := updateService(ctx, e.client, func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort })
		if err != nil {
			t.Fatal(err)
		}
		nodePort = net.JoinHostPort(l.NodeIP.String(), strconv.Itoa(int(svc.Spec.Ports[0].NodePort)))
		e.expectServed(t, "outside client reaches every endpoint via "+nodePort+", masqueraded",
			[]client{outside}, nodePort, []string{"pod-a", "pod-b", "pod-c"}, peerIn(nodeAddrs...))
		e.expectServed(t, "the cluster IP still serves", inside, clusterIP, []string{"pod-a", "pod-b", "pod-c"}, nil)
	})

	step("externalTrafficPolicy Local", func(t *testing.T) {
		if _, err := updateService(ctx, e.client, func(s *corev1.Service) {
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		}); err != nil {
			t.Fatal(err)
		}
		e.expectServed(t, "outside client reaches only node-a's endpoints, source kept",
			[]client{outside}, nodePort, []string{"pod-a", "pod-b"}, peerIs(l.OutsideIP))
		e.expectServed(t, "the cluster IP still reaches every endpoint", []client{fromPod}, clusterIP, []string{"pod-a", "pod-b", "pod-c"}, nil)
	})

	var programmed float64
	step("metrics", func(t *testing.T) {
		eventually(t, programmingMetric+" observed", func() error {
			n, err := e.programmingCount()
			if err != nil {
				return err
			}
			if n == 0 {
				return fmt.Errorf("%s_count is 0 after %s", programmingMetric, "6 EndpointSlice changes with trigger times")
			}
			programmed = n
			return nil
		})
		t.Logf("%s_count = %v", programmingMetric, programmed)
		code, body, err := e.get(healthzAt, "/healthz")
		if err != nil || code != 200 {
			t.Fatalf("/healthz: %d %s %v", code, body, err)
		}
	})

	// restartFrom and restartTo bound the API server restart: from the stop
	// until it answered /readyz again.
	var restartFrom, restartTo time.Time
	step("API server restart", func(t *testing.T) {
		type result struct {
			whileDown int
			err       error
		}
		stop, done := make(chan struct{}), make(chan result)
		go func() {
			var r result
			for {
				select {
				case <-stop:
					done <- r
					return
				default:
				}
				if e.apiServerUp() {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				err := round(outside, nodePort, []string{"pod-a", "pod-b"}, peerIs(l.OutsideIP))
				if err == nil {
					err = round(fromPod, clusterIP, []string{"pod-a", "pod-b", "pod-c"}, nil)
				}
				if err != nil && r.err == nil {
					r.err = err
				}
				if !e.apiServerUp() {
					r.whileDown++
				}
			}
		}()
		start := time.Now()
		err := e.cluster.Restart()
		restartFrom, restartTo = start, time.Now()
		close(stop)
		r := <-done
		if err != nil {
			t.Fatalf("restart: %v", err)
		}
		t.Logf("API server restarted in %s; %d traffic rounds ran while it was down", time.Since(start).Round(time.Millisecond), r.whileDown)
		if r.err != nil {
			t.Fatalf("traffic while the API server was down: %v", r.err)
		}
		if r.whileDown == 0 {
			t.Fatal("no traffic round completed while the API server was down")
		}
		if err := sw.running(); err != nil {
			t.Fatal(err)
		}

		// Changes after the restart: one through each informer.
		if err := setEndpoints(ctx, e.client,
			readyOn("pod-a", nodeName), readyOn("pod-b", nodeName), readyOn("pod-c", otherNode), readyOn("pod-d", nodeName)); err != nil {
			t.Fatal(err)
		}
		e.expectServed(t, "endpoint added after the restart is programmed",
			[]client{outside}, nodePort, []string{"pod-a", "pod-b", "pod-d"}, peerIs(l.OutsideIP))
		if _, err := updateService(ctx, e.client, func(s *corev1.Service) {
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
		}); err != nil {
			t.Fatal(err)
		}
		e.expectServed(t, "service change after the restart is programmed",
			[]client{outside}, nodePort, []string{"pod-a", "pod-b", "pod-c", "pod-d"}, peerIn(nodeAddrs...))

		eventually(t, programmingMetric+" grew with the change after the restart", func() error {
			n, err := e.programmingCount()
			if err != nil {
				return err
			}
			if n <= programmed {
				return fmt.Errorf("%s_count still %v", programmingMetric, n)
			}
			return nil
		})
	})

	step("service deleted", func(t *testing.T) {
		save, err := e.iptablesSave()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(save, `"`+svcComment) {
			t.Fatalf("before the deletion, iptables-nft-save shows no rule commented %q:\n%s", svcComment, save)
		}
		if err := e.client.CoreV1().Services(svcNamespace).Delete(ctx, svcName, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete service: %v", err)
		}
		eventually(t, "no rule or chain of the service is left", func() error {
			save, err := e.iptablesSave()
			if err != nil {
				return err
			}
			var left []string
			for _, line := range strings.Split(save, "\n") {
				if strings.Contains(line, svcComment) {
					left = append(left, line)
				}
			}
			if len(left) > 0 {
				return fmt.Errorf("%d lines still name %s, e.g. %s", len(left), svcComment, left[0])
			}
			return nil
		})
		// No rule: the cluster IP is routed out of the node and dropped in
		// the lab; the node port reaches the node's own stack, which has
		// no listener there.
		e.expectFailing(t, "cluster IP times out", fromPod, clusterIP, lab.ErrTimeout)
		e.expectFailing(t, "node port is refused", outside, nodePort, lab.ErrRefused)
	})

	// While a restarted kube-apiserver is not ready yet, its RBAC
	// authorizer has not loaded the roles and denies everything: watches
	// re-established in that window fail with "forbidden" whatever the
	// role says. Those are excused (with a little grace after readiness
	// for a slow log write); any other one is a missing permission, which
	// client-go would also hit before the restart and at every retry.
	step("no forbidden errors", func(t *testing.T) {
		if err := sw.running(); err != nil {
			t.Fatal(err)
		}
		var excused, bad []string
		for _, line := range strings.Split(sw.proc.Output(), "\n") {
			if !strings.Contains(strings.ToLower(line), "forbidden") {
				continue
			}
			at, ok := logTime(line)
			if ok && !at.Before(restartFrom) && !at.After(restartTo.Add(restartGrace)) {
				excused = append(excused, line)
			} else {
				bad = append(bad, line)
			}
		}
		if len(excused) > 0 {
			t.Logf("%d forbidden errors while the API server restarted (%s to %s), excused:\n%s",
				len(excused), restartFrom.Format(time.StampMilli), restartTo.Format(time.StampMilli), strings.Join(excused, "\n"))
		}
		if len(bad) > 0 {
			t.Fatalf("switchyard logged permission errors with the deploy/rbac.yaml role:\n%s", strings.Join(bad, "\n"))
		}
	})
}

var (
	logTimeRE  = regexp.MustCompile(`^time=(\S+)`)
	klogTimeRE = regexp.MustCompile(`^[IWEF](\d{4} \d{2}:\d{2}:\d{2}\.\d{6}) `)
)

// logTime returns the time of one of switchyard's log lines: klog's text
// format (IMMDD hh:mm:ss.uuuuuu, local time, this year) or slog's
// (time=... first).
func logTime(line string) (time.Time, bool) {
	if m := klogTimeRE.FindStringSubmatch(line); m != nil {
		t, err := time.ParseInLocation("0102 15:04:05.000000", m[1], time.Local)
		if err != nil {
			return time.Time{}, false
		}
		return t.AddDate(time.Now().Year(), 0, 0), true
	}
	m := logTimeRE.FindStringSubmatch(line)
	if m == nil {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, m[1])
	return t, err == nil
}

// rbacKubeconfig applies deploy/rbac.yaml, checks that the switchyard
// ServiceAccount's token is really limited (it may not list Secrets) and
// returns a kubeconfig for that token.
func (e *env) rbacKubeconfig(ctx context.Context, t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	data, err := os.ReadFile(filepath.Join(cluster.RepoRoot(), "deploy", "rbac.yaml"))
	if err != nil {
		t.Fatalf("read deploy/rbac.yaml: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rbac.yaml"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	objs, err := cluster.LoadManifests(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.cluster.Apply(ctx, objs, false); err != nil {
		t.Fatalf("apply deploy/rbac.yaml: %v", err)
	}
	token, err := e.cluster.ServiceAccountToken(ctx, "kube-system", "switchyard")
	if err != nil {
		t.Fatal(err)
	}
	limited, err := kubernetes.NewForConfig(e.cluster.ConfigForToken(token))
	if err != nil {
		t.Fatalf("clientset for the switchyard token: %v", err)
	}
	if _, err := limited.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("the switchyard token can list secrets (err %v): it is not the limited identity", err)
	}
	kc, err := e.cluster.KubeconfigForToken(token)
	if err != nil {
		t.Fatal(err)
	}
	return kc
}

// programmingCount reads the count of the network programming histogram
// from switchyard's /metrics.
func (e *env) programmingCount() (float64, error) {
	code, body, err := e.get(metricsAt, "/metrics")
	if err != nil {
		return 0, err
	}
	if code != 200 {
		return 0, fmt.Errorf("/metrics: status %d", code)
	}
	n, ok := metricSum(body, programmingMetric+"_count")
	if !ok {
		return 0, fmt.Errorf("/metrics has no %s_count", programmingMetric)
	}
	return n, nil
}
