package nftables

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"sigs.k8s.io/knftables"

	"github.com/switchyard-proxy/switchyard/proxier"
)

// driftReport is what a verifying sync found.
type driftReport struct {
	// full is set when the table or one of its fixed maps is gone: only a
	// full sync can restore it.
	full   bool
	counts map[string]int
}

// verify compares the family's table with what was written and schedules
// the repairs into d: service ports (or the fixed objects) with a missing
// or changed chain, set or element are rewritten whole; chains, sets,
// maps and elements switchyard did not write are deleted. It reads the
// kernel with one listing of names (netlink), one netlink dump of the
// rules (each chain's rule count and comments, expressions not decoded)
// and one listing per fixed map or set.
func (b *Backend) verify(ctx context.Context, st *familyState, r *renderer, d *diff) (driftReport, error) {
	rep := driftReport{counts: map[string]int{}}
	all, err := listNames(ctx, st.nft)
	if err != nil {
		if isNotFound(err) {
			rep.full = true
			return rep, nil
		}
		return rep, fmt.Errorf("listing table %s: %w", TableName, err)
	}
	kernel := map[string]bool{}
	for typ, names := range all {
		for _, n := range names {
			if typ == "map" {
				typ = "set"
			}
			kernel[typ+" "+n] = true
		}
	}
	fixed := r.fixed()
	for _, s := range fixed.sets {
		if !kernel[s.id()] {
			rep.full = true
			return rep, nil
		}
	}
	chains, err := summaryFromRules(ctx, st.nft, all["chain"])
	if err != nil {
		return rep, fmt.Errorf("listing the rules of table %s: %w", TableName, err)
	}

	var changed, missing []string
	drifted := func(w *written, kind, what string) {
		rep.counts[kind]++
		if w.fixed {
			d.redoFixed = true
		} else {
			d.redo[w.owner] = true
		}
		if kind == "chain" && len(changed)+len(missing) < 20 {
			changed = append(changed, what)
		}
	}
	for id, w := range st.objs {
		switch {
		case w.chain != nil:
			if !kernel[id] {
				missing = append(missing, w.chain.name)
				drifted(w, "chain", w.chain.name+" (missing)")
				continue
			}
			s := chains[w.chain.name]
			if !sameRules(w.chain.rules, s) {
				drifted(w, "chain", w.chain.name)
			}
		case w.set != nil:
			if !kernel[id] {
				drifted(w, "set", w.set.name)
			}
		}
	}
	for key := range kernel {
		typ, name, _ := strings.Cut(key, " ")
		if st.objs[key] != nil {
			continue
		}
		switch typ {
		case "chain":
			d.delChains = append(d.delChains, name)
			rep.counts["unexpected-chain"]++
		case "set":
			if isMapName(name, all) {
				d.delMaps = append(d.delMaps, name)
			} else {
				d.delSets = append(d.delSets, name)
			}
			rep.counts["unexpected-set"]++
		}
	}

	// Elements of the fixed maps and sets.
	for _, s := range fixed.sets {
		elems, err := listElements(ctx, st.nft, s)
		if err != nil {
			return rep, fmt.Errorf("listing %s: %w", s.name, err)
		}
		found := map[string]bool{}
		for _, e := range elems {
			id := "element " + s.name + " " + strings.Join(e.Key, " . ")
			found[id] = true
			w := st.objs[id]
			del := &knftables.Element{Set: e.Set, Map: e.Map, Key: e.Key}
			if w == nil {
				d.delElems = append(d.delElems, del)
				rep.counts["unexpected-element"]++
				continue
			}
			if s.isMap && strings.Join(e.Value, " . ") != w.fp {
				d.delElems = append(d.delElems, del)
				drifted(w, "element", id)
			}
		}
		for id, w := range st.objs {
			if w.elem != nil && w.elem.container == s.name && !found[id] {
				drifted(w, "element", id)
			}
		}
	}
	for k := range rep.counts {
		if rep.counts[k] == 0 {
			delete(rep.counts, k)
		}
	}
	if len(rep.counts) > 0 {
		sort.Strings(changed)
		b.log.Warn("nftables rules changed behind our back; repairing", "family", r.snap.Family,
			"drift", rep.counts, "chains", changed)
	}
	return rep, nil
}

// seenChain is what the kernel listing says of one chain.
type seenChain struct {
	n        int
	comments []string
}

// sameRules reports whether the kernel's chain holds as many rules as
// written, with the same comments in the same order.
func sameRules(want []rule, got *seenChain) bool {
	if got == nil {
		return len(want) == 0
	}
	if got.n != len(want) {
		return false
	}
	for i, r := range want {
		if got.comments[i] != r.comment {
			return false
		}
	}
	return true
}

func isMapName(name string, all map[string][]string) bool {
	for _, m := range all["map"] {
		if m == name {
			return true
		}
	}
	return false
}

var _ proxier.Backend = (*Backend)(nil)
var _ proxier.Renderer = (*Backend)(nil)
