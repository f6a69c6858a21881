// Package tracker keeps the objects the sources deliver, remembers which
// services changed since the last sync, and plans incrementally: only the
// services that changed are re-planned, the others reuse their cached plan.
// The result is the same as planner.Plan over all objects.
package tracker

import (
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/switchyard-proxy/switchyard/proxier"
	"github.com/switchyard-proxy/switchyard/proxier/planner"
)

// AnnotationTriggerTime is set by the EndpointSlice controller to the time
// of the change that caused the slice update.
const AnnotationTriggerTime = "endpoints.kubernetes.io/last-change-trigger-time"

// NodeResolver turns the Node object (nil when unknown) into what the
// planner knows of this node: addresses and node-port addresses.
type NodeResolver func(node *corev1.Node) planner.NodeInfo

// Hooks are optional callbacks for the runner and metrics.
type Hooks struct {
	// OnChange is called after any change that needs a sync.
	OnChange func()
	// OnServiceChange and OnEndpointSliceChange count changes by kind.
	OnServiceChange       func()
	OnEndpointSliceChange func()
	// OnSynced is called once, when the source delivered its initial state.
	OnSynced func()
	// OnPodEvent is called once for each newly found pod problem that
	// carries an event reason (planner.Problem.Event), with the pod, the
	// reason and the message; not again while the problem persists. It
	// is called with the tracker's lock held and must not block.
	OnPodEvent func(pod *corev1.Pod, reason, message string)
}

// Options configure a Tracker.
type Options struct {
	// Config is the planner configuration; Node and (unless Families is
	// set) Families are filled from the resolver on every node change.
	Config planner.Config
	// ResolveNode computes node information; nil uses the node's name only.
	ResolveNode NodeResolver
	// SupportedFamilies are the IP families the kernel can proxy. As
	// upstream, every supported family is planned (dual-stack when the
	// kernel has both), with the family of the node's first address as
	// the primary. Nil plans the families of the node's addresses.
	SupportedFamilies []proxier.IPFamily
	// Hooks are optional callbacks.
	Hooks Hooks
	// Log receives one line per newly found problem.
	Log *slog.Logger
}

// Result is the outcome of one Plan call.
type Result struct {
	// Snapshots are the per-family plans, primary family first.
	Snapshots []*proxier.Snapshot
	// Problems lists every object part that could not be honoured.
	Problems []planner.Problem
	// TriggerTimes are the EndpointSlice change times this plan includes,
	// for the network programming latency metric.
	TriggerTimes []time.Time
	// ServiceChanges and EndpointSliceChanges count the changes included.
	ServiceChanges, EndpointSliceChanges int
}

// Tracker is a proxier.Sink that plans incrementally.
type Tracker struct {
	mu          sync.Mutex
	opts        Options
	cfg         planner.Config
	services    map[string]*corev1.Service
	slices      map[string]*discoveryv1.EndpointSlice
	slicesBySvc map[string]map[string]*discoveryv1.EndpointSlice
	node        *corev1.Node
	pods        map[string]*corev1.Pod // only pods with hostPorts
	podInputs   map[string]string      // planner.HostPortInputs of pods

	dirty        map[string]bool
	nodeDirty    bool
	podsDirty    bool
	triggerTimes []time.Time
	svcChanges   int
	epChanges    int

	plans     map[string]*planner.ServicePlan
	sorted    []*planner.ServicePlan // plans by namespace/name
	orphans   map[string][]planner.Problem
	unlabeled map[string]planner.Problem
	rejected  map[portID]string
	hostPorts map[proxier.IPFamily][]proxier.HostPort
	hostProbs []planner.Problem
	logged    map[string]bool
	planned   bool

	synced     chan struct{}
	syncedOnce sync.Once
}

var _ proxier.Sink = (*Tracker)(nil)

// New returns an empty tracker.
func New(opts Options) *Tracker {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	t := &Tracker{
		opts:        opts,
		cfg:         opts.Config,
		services:    map[string]*corev1.Service{},
		slices:      map[string]*discoveryv1.EndpointSlice{},
		slicesBySvc: map[string]map[string]*discoveryv1.EndpointSlice{},
		pods:        map[string]*corev1.Pod{},
		podInputs:   map[string]string{},
		dirty:       map[string]bool{},
		plans:       map[string]*planner.ServicePlan{},
		orphans:     map[string][]planner.Problem{},
		unlabeled:   map[string]planner.Problem{},
		logged:      map[string]bool{},
		nodeDirty:   true,
		podsDirty:   true,
		synced:      make(chan struct{}),
	}
	t.cfg.Defaults()
	return t
}

// Synced is closed once the source has delivered its initial state.
func (t *Tracker) Synced() <-chan struct{} { return t.synced }

func key(ns, name string) string { return ns + "/" + name }

func (t *Tracker) changed(hook func()) {
	if hook != nil {
		hook()
	}
	if t.opts.Hooks.OnChange != nil {
		t.opts.Hooks.OnChange()
	}
}

// OnService implements proxier.Sink.
func (t *Tracker) OnService(svc *corev1.Service, deleted bool) {
	k := key(svc.Namespace, svc.Name)
	t.mu.Lock()
	if deleted {
		delete(t.services, k)
	} else {
		t.services[k] = svc
	}
	t.dirty[k] = true
	t.svcChanges++
	t.mu.Unlock()
	t.changed(t.opts.Hooks.OnServiceChange)
}

// OnEndpointSlice implements proxier.Sink.
func (t *Tracker) OnEndpointSlice(sl *discoveryv1.EndpointSlice, deleted bool) {
	k := key(sl.Namespace, sl.Name)
	t.mu.Lock()
	// The slice's old service (if its label changed) and new one are dirty.
	if old := t.slices[k]; old != nil {
		if svcKey, p := planner.SliceServiceKey(old); p == nil {
			delete(t.slicesBySvc[svcKey], k)
			t.dirty[svcKey] = true
		}
	}
	delete(t.slices, k)
	delete(t.unlabeled, k)
	if !deleted {
		t.slices[k] = sl
		if svcKey, p := planner.SliceServiceKey(sl); p != nil {
			t.unlabeled[k] = *p
		} else {
			m := t.slicesBySvc[svcKey]
			if m == nil {
				m = map[string]*discoveryv1.EndpointSlice{}
				t.slicesBySvc[svcKey] = m
			}
			m[k] = sl
			t.dirty[svcKey] = true
		}
		if ts, err := time.Parse(time.RFC3339, sl.Annotations[AnnotationTriggerTime]); err == nil {
			t.triggerTimes = append(t.triggerTimes, ts)
		}
	}
	t.epChanges++
	t.mu.Unlock()
	t.changed(t.opts.Hooks.OnEndpointSliceChange)
}

// OnNode implements proxier.Sink.
func (t *Tracker) OnNode(node *corev1.Node, deleted bool) {
	t.mu.Lock()
	if deleted {
		t.node = nil
	} else {
		t.node = node
	}
	t.nodeDirty = true
	t.mu.Unlock()
	t.changed(nil)
}

// NodeAddressesChanged resolves the node information again (the node's
// interface addresses changed, so the addresses --nodeport-addresses
// selects may have) and asks for a sync only when the result differs:
// addresses that change nothing planned (the IPVS mode's service VIPs,
// for one) cost no sync.
func (t *Tracker) NodeAddressesChanged() {
	t.mu.Lock()
	changed := t.planned
	if changed && !t.nodeDirty {
		info, fams := t.resolveNode()
		changed = !reflect.DeepEqual(info, t.cfg.Node) || !reflect.DeepEqual(fams, t.cfg.Families)
	}
	if changed {
		t.nodeDirty = true
	}
	t.mu.Unlock()
	if changed {
		t.changed(nil)
	}
}

// OnPod implements proxier.Sink. Only a change of what can change a
// hostPort mapping (planner.HostPortInputs) asks for a sync: pods without
// hostPorts, and updates of labels, conditions or other annotations, are
// dropped here.
func (t *Tracker) OnPod(pod *corev1.Pod, deleted bool) {
	k := key(pod.Namespace, pod.Name)
	in := ""
	if !deleted {
		in = planner.HostPortInputs(pod)
	}
	t.mu.Lock()
	if in == t.podInputs[k] {
		if in != "" {
			t.pods[k] = pod // the latest object, for events
		}
		t.mu.Unlock()
		return
	}
	if in == "" {
		delete(t.pods, k)
		delete(t.podInputs, k)
	} else {
		t.pods[k] = pod
		t.podInputs[k] = in
	}
	t.podsDirty = true
	t.mu.Unlock()
	t.changed(nil)
}

// OnSynced implements proxier.Sink.
func (t *Tracker) OnSynced() {
	t.syncedOnce.Do(func() {
		close(t.synced)
		if t.opts.Hooks.OnSynced != nil {
			t.opts.Hooks.OnSynced()
		}
	})
}

// Node returns the last Node object delivered, or nil.
func (t *Tracker) Node() *corev1.Node {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.node
}

// resolveNode computes the node information and planned families from
// the current Node object (t.mu held).
func (t *Tracker) resolveNode() (planner.NodeInfo, []proxier.IPFamily) {
	info := planner.NodeInfo{}
	if t.opts.ResolveNode != nil {
		info = t.opts.ResolveNode(t.node)
	}
	if info.Name == "" {
		info.Name = t.opts.Config.Node.Name
	}
	if info.Zone == "" && t.node != nil {
		info.Zone = t.node.Labels[planner.LabelZone]
	}
	fams := t.opts.Config.Families
	if len(fams) == 0 {
		fams = familiesFor(info.IPs, t.opts.SupportedFamilies)
	}
	return info, fams
}

// Plan re-plans the services that changed since the last call and returns
// the snapshots. full marks every snapshot FullSync (the runner asks for it
// on the first sync, after a failure and periodically); a node change also
// makes the plan full, since node addresses touch every service.
func (t *Tracker) Plan(full bool) Result {
	t.mu.Lock()
	defer t.mu.Unlock()

	nodeChanged := false
	if t.nodeDirty {
		t.nodeDirty = false
		info, fams := t.resolveNode()
		if !reflect.DeepEqual(info, t.cfg.Node) || !reflect.DeepEqual(fams, t.cfg.Families) || !t.planned {
			t.cfg.Node = info
			t.cfg.Families = fams
			nodeChanged = true
		}
	}
	if nodeChanged {
		for k := range t.services {
			t.dirty[k] = true
		}
		for k := range t.plans {
			t.dirty[k] = true
		}
		t.podsDirty = true
	}

	changed := map[proxier.IPFamily]map[proxier.ServicePortName]bool{}
	for _, fam := range t.cfg.Families {
		changed[fam] = map[proxier.ServicePortName]bool{}
	}
	for k := range t.dirty {
		old := t.plans[k]
		var next *planner.ServicePlan
		if svc := t.services[k]; svc != nil {
			slices := make([]*discoveryv1.EndpointSlice, 0, len(t.slicesBySvc[k]))
			for _, sl := range t.slicesBySvc[k] {
				slices = append(slices, sl)
			}
			next = planner.PlanService(svc, slices, &t.cfg)
			delete(t.orphans, k)
		} else if len(t.slicesBySvc[k]) > 0 {
			var probs []planner.Problem
			for sk := range t.slicesBySvc[k] {
				probs = append(probs, planner.Problem{Kind: "EndpointSlice", Object: sk,
					Reason: "service " + k + " does not exist; slice ignored"})
			}
			t.orphans[k] = probs
		} else {
			delete(t.orphans, k)
		}
		t.replacePlan(k, old, next)
		markChanged(changed, old, next)
	}
	clear(t.dirty)

	if t.podsDirty {
		t.podsDirty = false
		pods := make([]*corev1.Pod, 0, len(t.pods))
		for _, p := range t.pods {
			pods = append(pods, p)
		}
		t.hostPorts, t.hostProbs = planner.HostPorts(pods, &t.cfg)
	}

	snaps, problems := planner.Assemble(t.sorted, &t.cfg)
	// A port that lost its node port to another service and now has it
	// back, lost it now, or lost it to another winner, changed too.
	rejected := rejectedPorts(snaps)
	for id, winner := range rejected {
		if t.rejected[id] != winner && changed[id.fam] != nil {
			changed[id.fam][id.name] = true
		}
	}
	for id := range t.rejected {
		if _, still := rejected[id]; !still && changed[id.fam] != nil {
			changed[id.fam][id.name] = true
		}
	}
	t.rejected = rejected

	for _, snap := range snaps {
		snap.HostPorts = t.hostPorts[snap.Family]
	}
	problems = append(problems, planner.HostPortsBesideNodePorts(snaps)...)
	for _, p := range t.sorted {
		problems = append(problems, p.Problems...)
	}
	problems = append(problems, t.hostProbs...)
	for _, probs := range t.orphans {
		problems = append(problems, probs...)
	}
	for _, p := range t.unlabeled {
		problems = append(problems, p)
	}
	t.logProblems(problems)

	full = full || nodeChanged || !t.planned
	for _, snap := range snaps {
		if full {
			snap.FullSync = true
			continue
		}
		snap.Changed = changed[snap.Family]
	}
	t.planned = true

	res := Result{Snapshots: snaps, Problems: problems, TriggerTimes: t.triggerTimes,
		ServiceChanges: t.svcChanges, EndpointSliceChanges: t.epChanges}
	t.triggerTimes, t.svcChanges, t.epChanges = nil, 0, 0
	return res
}

// portID names a service port in one family.
type portID struct {
	fam  proxier.IPFamily
	name proxier.ServicePortName
}

// replacePlan puts next in place of old in the sorted plan list (either
// may be nil).
func (t *Tracker) replacePlan(key string, old, next *planner.ServicePlan) {
	probe := next
	if probe == nil {
		probe = old
	}
	if probe == nil {
		return
	}
	i := sort.Search(len(t.sorted), func(i int) bool { return !t.sorted[i].Less(probe) })
	found := i < len(t.sorted) && t.sorted[i].Key == key
	switch {
	case next == nil && found:
		t.sorted = append(t.sorted[:i], t.sorted[i+1:]...)
		delete(t.plans, key)
	case next != nil && found:
		t.sorted[i] = next
		t.plans[key] = next
	case next != nil:
		t.sorted = append(t.sorted, nil)
		copy(t.sorted[i+1:], t.sorted[i:])
		t.sorted[i] = next
		t.plans[key] = next
	}
}

// markChanged records the service ports that differ between two plans of
// the same service.
func markChanged(changed map[proxier.IPFamily]map[proxier.ServicePortName]bool, old, next *planner.ServicePlan) {
	byID := func(p *planner.ServicePlan) map[portID]*proxier.ServicePort {
		m := map[portID]*proxier.ServicePort{}
		if p != nil {
			for _, sp := range p.Ports {
				m[portID{proxier.FamilyOf(sp.ClusterIP), sp.Name}] = sp
			}
		}
		return m
	}
	before, after := byID(old), byID(next)
	mark := func(id portID) {
		if changed[id.fam] != nil {
			changed[id.fam][id.name] = true
		}
	}
	for id, sp := range after {
		if prev, ok := before[id]; !ok || !reflect.DeepEqual(prev, sp) {
			mark(id)
		}
	}
	for id := range before {
		if _, ok := after[id]; !ok {
			mark(id)
		}
	}
}

// rejectedPorts lists the ports that Assemble planned without their node
// port (node-port conflicts), with the service that holds it.
func rejectedPorts(snaps []*proxier.Snapshot) map[portID]string {
	var out map[portID]string
	for _, snap := range snaps {
		for _, sp := range snap.Services {
			if sp.NodePortConflict != "" {
				if out == nil {
					out = map[portID]string{}
				}
				out[portID{snap.Family, sp.Name}] = sp.NodePortConflict
			}
		}
	}
	return out
}

// logProblems logs each problem once, when it first appears.
func (t *Tracker) logProblems(problems []planner.Problem) {
	now := make(map[string]bool, len(problems))
	for _, p := range problems {
		s := p.String()
		if now[s] {
			continue // the same problem in two families
		}
		now[s] = true
		if !t.logged[s] {
			t.opts.Log.Warn("object not honoured", "kind", p.Kind, "object", p.Object, "reason", p.Reason)
			if p.Event != "" && p.Kind == "Pod" && t.opts.Hooks.OnPodEvent != nil && t.pods[p.Object] != nil {
				t.opts.Hooks.OnPodEvent(t.pods[p.Object], p.Event, p.Reason)
			}
		}
	}
	t.logged = now
}

// familiesFor returns the supported families with the family of the
// node's first address first (the families of the addresses when supported
// is empty).
func familiesFor(addrs []netip.Addr, supported []proxier.IPFamily) []proxier.IPFamily {
	if len(supported) == 0 {
		return familiesOf(addrs)
	}
	primary := supported[0]
	if len(addrs) > 0 && slices.Contains(supported, proxier.FamilyOf(addrs[0])) {
		primary = proxier.FamilyOf(addrs[0])
	}
	out := []proxier.IPFamily{primary}
	for _, f := range supported {
		if f != primary && !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

// familiesOf returns the families of addrs, primary (first) first; IPv4
// alone when addrs is empty.
func familiesOf(addrs []netip.Addr) []proxier.IPFamily {
	var fams []proxier.IPFamily
	for _, a := range addrs {
		f := proxier.FamilyOf(a)
		if len(fams) == 0 || (len(fams) == 1 && fams[0] != f) {
			fams = append(fams, f)
		}
	}
	if len(fams) == 0 {
		fams = []proxier.IPFamily{proxier.IPv4}
	}
	return fams
}
