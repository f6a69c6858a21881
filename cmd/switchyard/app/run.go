package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"runtime/debug"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/switchyard-proxy/switchyard/conntrack"
	"github.com/switchyard-proxy/switchyard/internal/nodetune"
	"github.com/switchyard-proxy/switchyard/ipvs"
	"github.com/switchyard-proxy/switchyard/nodeport"
	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/proxier/runner"
	"github.com/switchyard-proxy/switchyard/proxier/source/informers"
	"github.com/switchyard-proxy/switchyard/proxier/source/manifests"
	"github.com/switchyard-proxy/switchyard/proxier/tracker"
)

// A full sync that wrote more than freeAfterBytes, or more than
// freeAfterRules rules, virtual servers or elements (the nftables mode
// counts operations and does not measure its full-sync text), has its
// garbage returned to the OS at once.
const (
	freeAfterBytes = 4 << 20
	freeAfterRules = 20000
)

// runProxy is the daemon: sources feed the tracker, the runner plans and
// syncs the backend, and the health, metrics and health-check node-port
// servers report on it.
func runProxy(ctx context.Context, o *Options, s *settings, log *slog.Logger) error {
	if o.Cleanup {
		return cleanupAll(ctx, o, log)
	}
	if !o.Once {
		if err := nodeSetup(o, log); err != nil {
			return err
		}
		if o.InitOnly {
			log.Info("node settings applied (--init-only); exiting")
			return nil
		}
	}
	backend, err := backendFactory(o, log)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// As upstream: every family the kernel can proxy (dual-stack when it
	// has both); metrics and health report exactly those.
	fams := kernelFamilies(ctx, log)
	obs := newObservers(ctx, o, log, !o.Once, fams)
	var configChanged <-chan error
	if o.ConfigFile != "" && !o.Once {
		configChanged = watchConfigFile(ctx, o.ConfigFile, o.configData, log)
	}
	if c, ok := backend.(*conntrack.Reconciler); ok {
		c.SetRecorder(obs.metrics)
	}

	var r *runner.Runner
	podEv := &podEvents{}
	tr := tracker.New(tracker.Options{
		Config:      plannerConfig(o, s),
		ResolveNode: nodeResolver(s, localAddresses(log), log),
		// The node's first address picks the primary family.
		SupportedFamilies: fams,
		Log:               log,
		Hooks: tracker.Hooks{
			OnChange:              func() { r.Trigger() },
			OnServiceChange:       obs.serviceChanged,
			OnEndpointSliceChange: obs.endpointSliceChanged,
			OnPodEvent:            podEv.report,
		},
	})
	hc := &healthChecks{healthy: obs.healthy, log: log}
	defer hc.close()
	var cleanOthers sync.Once

	syncFn := func(ctx context.Context, full bool) (proxier.SyncResult, error) {
		obs.setNode(tr.Node())
		plan := tr.Plan(full)
		for _, snap := range plan.Snapshots {
			snap.Verify = runner.Verify(ctx) // once per sync period: check for and repair drift
		}
		obs.planned(plan)
		res, err := backend.Sync(ctx, plan.Snapshots)
		if err != nil {
			// The changes in this plan were not programmed; the runner's
			// next attempt is full, so nothing is lost.
			return res, err
		}
		obs.programmed(plan)
		hc.sync(plan.Snapshots)
		if (full || res.Full) && (res.Bytes >= freeAfterBytes || res.Rules >= freeAfterRules) {
			// A big full sync leaves its rendering (tens of MB at 10k
			// services) as garbage: hand it back to the node now rather
			// than keep it resident until the heap grows into it.
			debug.FreeOSMemory()
		}
		// Once this mode's rules are in place, remove what another
		// switchyard mode left on the node (a mode switch): doing it after
		// the first successful sync never leaves the node without rules.
		cleanOthers.Do(func() {
			cleanupOtherModes(ctx, o, backend, log)
			if o.CleanupKubeProxy {
				cleanupKubeProxy(ctx, o, log)
			}
		})
		return res, nil
	}
	minSync := o.MinSyncPeriod
	if minSync == 0 {
		minSync = -1 // the runner reads 0 as "default"; the flag's 0 means no minimum
	}
	r = runner.New(runner.Config{MinSyncPeriod: minSync, SyncPeriod: o.SyncPeriod, MaxBackoff: o.SyncPeriod},
		syncFn, append(obs.runnerOptions(), runner.WithLogger(log))...)

	srcErr := make(chan error, 1)
	go func() { srcErr <- runSource(ctx, o, s, tr, podEv, log) }()
	if !o.Once {
		go watchAddresses(ctx, tr.NodeAddressesChanged, log)
	}

	// Wait for the source's initial state: a restart must never program a
	// partial view of the cluster.
	select {
	case <-tr.Synced():
	case err := <-srcErr:
		if err == nil {
			err = errors.New("source stopped before its initial sync")
		}
		return err
	case err := <-obs.failed:
		return err
	case <-ctx.Done():
		return nil
	}
	r.Ready()
	log.Info("initial state received; syncing", "mode", backend.Name(), "node", s.nodeName)

	if o.Once {
		start := time.Now()
		if err := r.SyncOnce(ctx); err != nil {
			return exitError{1, fmt.Errorf("sync failed: %w", err)}
		}
		log.Info("synced once", "took", time.Since(start).Round(time.Millisecond))
		return nil
	}

	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(ctx) }()
	select {
	case err := <-srcErr:
		cancel()
		<-runErr
		if err != nil {
			return fmt.Errorf("source: %w", err)
		}
		return nil
	case err := <-runErr:
		cancel()
		return err
	case err := <-obs.failed:
		cancel()
		<-runErr
		return err
	case err := <-configChanged:
		cancel()
		<-runErr
		return err
	case <-ctx.Done():
		<-runErr
		log.Info("shutting down; rules stay in place")
		return nil
	}
}

// runSource runs the manifest folder or the informers until ctx ends;
// with the informers, ev records pod events through the same client.
func runSource(ctx context.Context, o *Options, s *settings, sink proxier.Sink, ev *podEvents, log *slog.Logger) error {
	if o.Manifests != "" {
		return manifests.New(o.Manifests, s.nodeName, o.ServiceProxyName, sink, log).Run(ctx)
	}
	// client-go reports watch and permission errors through klog, which
	// newLogger pointed at the same sink as log.
	cfg, err := restConfig(o)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("creating API client: %w", err)
	}
	if !o.Once {
		ev.start(ctx, client, log)
	}
	return informers.Run(ctx, client, s.nodeName, o.ServiceProxyName, sink, log)
}

// restConfig follows kube-proxy: --kubeconfig and --master if given, else
// the in-cluster service account.
func restConfig(o *Options) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if o.Kubeconfig == "" && o.Master == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no --kubeconfig, --master or --manifests, and not in a cluster: %w", err)
		}
	} else if cfg, err = clientcmd.BuildConfigFromFlags(o.Master, o.Kubeconfig); err != nil {
		return nil, fmt.Errorf("loading kubeconfig: %w", err)
	}
	cfg.UserAgent = "switchyard/" + Version
	// --kube-api-qps, --kube-api-burst, --kube-api-content-type.
	cfg.QPS, cfg.Burst = o.KubeAPIQPS, int(o.KubeAPIBurst)
	if o.KubeAPIContentType != "" {
		cfg.ContentType = o.KubeAPIContentType
	}
	return cfg, nil
}

// localAddresses returns the addresses --nodeport-addresses CIDRs are
// matched against: this network namespace's interface addresses.
func localAddresses(log *slog.Logger) func([]netip.Addr) []netip.Addr {
	return func(nodeIPs []netip.Addr) []netip.Addr {
		// swy-ipvs0 holds the IPVS mode's service VIPs, never node addresses.
		addrs, err := nodeport.LocalAddresses(ipvs.DummyInterface)
		if err != nil {
			log.Warn("cannot list local addresses; matching node IPs only", "err", err)
			return nodeIPs
		}
		return addrs
	}
}

// healthChecks keeps the health-check node-port servers in step with the
// snapshots, re-creating them when the node-port addresses change.
type healthChecks struct {
	mu      sync.Mutex
	healthy func() bool
	log     *slog.Logger
	addrs   []proxier.NodePortAddresses
	servers *nodeport.Servers
}

func (h *healthChecks) sync(snaps []*proxier.Snapshot) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var addrs []proxier.NodePortAddresses
	for _, snap := range snaps {
		addrs = append(addrs, snap.NodePortAddresses)
	}
	if h.servers != nil && !reflect.DeepEqual(addrs, h.addrs) {
		h.servers.Close()
		h.servers = nil
	}
	services := nodeport.HealthCheckServices(snaps)
	if h.servers == nil {
		if len(services) == 0 {
			return
		}
		h.servers, h.addrs = nodeport.NewServers(addrs, h.healthy), addrs
	}
	if err := h.servers.Sync(services); err != nil {
		h.log.Warn("health check node ports", "err", err)
	}
}

func (h *healthChecks) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.servers != nil {
		h.servers.Close()
	}
}

// nodeSetup applies the node settings kube-proxy makes at start; tests
// replace it so they never touch the host.
var nodeSetup = applyNodeSettings

// applyNodeSettings writes --oom-score-adj (a failure is a warning, as in
// kube-proxy) and the --conntrack-* sysctls (skipped with a warning where
// /proc/sys is read-only; any other failure is fatal, as in kube-proxy).
func applyNodeSettings(o *Options, log *slog.Logger) error {
	if err := nodetune.ApplyOOMScoreAdj("", o.OOMScoreAdj); err != nil {
		log.Warn("cannot set the OOM score; going on", "err", err)
	}
	t := &nodetune.Tuner{Log: log}
	if err := t.ApplyConntrack(o.Conntrack); err != nil {
		if errors.Is(err, nodetune.ErrReadOnly) {
			log.Warn("conntrack sysctls are read-only here; skipped", "err", err)
			return nil
		}
		return fmt.Errorf("setting conntrack parameters: %w", err)
	}
	return nil
}
