package nftables

import (
	"sort"

	"sigs.k8s.io/knftables"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// diff collects the operations of one partial sync (the changed service
// ports, plus what verify found drifted) and the memory updates to make
// once its transaction succeeded.
type diff struct {
	st *familyState

	delElems    []*knftables.Element
	addSets     []*setSpec
	writeChains []*chainSpec
	addElems    []*elemSpec
	delChains   []string
	delSets     []string
	delMaps     []string

	// redo are service ports whose objects must be rewritten whatever the
	// memory says (verify found them drifted); redoFixed the same for the
	// fixed objects.
	redo      map[proxier.ServicePortName]bool
	redoFixed bool

	updates []svcUpdate
}

// svcUpdate is one service port's memory change: its objects now (nil: gone).
type svcUpdate struct {
	name  proxier.ServicePortName
	objs  *objects
	fixed bool
}

func newDiff(st *familyState) *diff {
	return &diff{st: st, redo: map[proxier.ServicePortName]bool{}}
}

// service schedules the rewrite of one service port: want is its new
// rendering, nil when it is gone.
func (d *diff) service(name proxier.ServicePortName, want *serviceObjects) {
	force := d.redo[name]
	keep := map[string]bool{}
	if want != nil {
		d.objects(&want.objects, force, keep)
		d.updates = append(d.updates, svcUpdate{name: name, objs: &want.objects})
	} else {
		d.updates = append(d.updates, svcUpdate{name: name})
	}
	for _, id := range d.st.bySvc[name] {
		if keep[id] {
			continue
		}
		w := d.st.objs[id]
		if w == nil || w.owner != name {
			continue
		}
		switch {
		case w.chain != nil:
			d.delChains = append(d.delChains, w.chain.name)
		case w.set != nil:
			d.delSets = append(d.delSets, w.set.name)
		case w.elem != nil:
			d.delElems = append(d.delElems, w.elem.element(false))
		}
	}
}

// fixedObjects schedules the rewrite of the fixed objects (drift repair).
func (d *diff) fixedObjects(o objects) {
	d.objects(&o, true, map[string]bool{})
	d.updates = append(d.updates, svcUpdate{objs: &o, fixed: true})
}

// objects schedules what of o differs from memory (everything when force).
func (d *diff) objects(o *objects, force bool, keep map[string]bool) {
	for _, c := range o.chains {
		id := c.id()
		keep[id] = true
		if w := d.st.objs[id]; force || w == nil || w.fp != c.fingerprint() {
			d.writeChains = append(d.writeChains, c)
		}
	}
	for _, s := range o.sets {
		id := s.id()
		keep[id] = true
		if w := d.st.objs[id]; force || w == nil {
			d.addSets = append(d.addSets, s)
		}
	}
	for _, e := range o.elems {
		id := e.id()
		keep[id] = true
		w := d.st.objs[id]
		switch {
		case w != nil && w.fp != e.fingerprint():
			d.delElems = append(d.delElems, e.element(false))
			d.addElems = append(d.addElems, e)
		case force || w == nil:
			d.addElems = append(d.addElems, e)
		}
	}
}

// write adds the operations to tx in an order the kernel accepts:
// element deletions (they may reference chains about to go), sets, chains
// created, chains rewritten, elements added, chains and sets deleted.
func (d *diff) write(tx *knftables.Transaction) {
	for _, e := range d.delElems {
		tx.Delete(e)
	}
	for _, s := range d.addSets {
		tx.Add(s.object())
	}
	for _, c := range d.writeChains {
		tx.Add(c.chain())
	}
	for _, c := range d.writeChains {
		tx.Flush(&knftables.Chain{Name: c.name})
		for _, r := range c.knfRules() {
			tx.Add(r)
		}
	}
	for _, e := range d.addElems {
		tx.Add(e.element(true))
	}
	sort.Strings(d.delChains)
	for _, c := range d.delChains {
		tx.Flush(&knftables.Chain{Name: c})
	}
	for _, c := range d.delChains {
		tx.Delete(&knftables.Chain{Name: c})
	}
	for _, s := range d.delSets {
		tx.Delete(&knftables.Set{Name: s})
	}
	for _, m := range d.delMaps {
		tx.Delete(&knftables.Map{Name: m})
	}
}

// commit updates the memory after the transaction succeeded.
func (d *diff) commit() {
	st := d.st
	for _, u := range d.updates {
		if u.fixed {
			st.add(u.objs, proxier.ServicePortName{}, true)
			continue
		}
		for _, id := range st.bySvc[u.name] {
			if w := st.objs[id]; w != nil && !w.fixed && w.owner == u.name {
				delete(st.objs, id)
			}
		}
		if u.objs == nil {
			delete(st.bySvc, u.name)
			continue
		}
		st.bySvc[u.name] = st.add(u.objs, u.name, false)
	}
	for _, c := range d.delChains {
		if w := st.objs["chain "+c]; w != nil && w.fixed {
			delete(st.objs, "chain "+c)
		}
	}
}
