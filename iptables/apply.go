package iptables

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/switchyard-proxy/switchyard/internal/iptexec"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// restore feeds text to one iptables-restore --noflush --wait, logging a
// rejection.
func (b *Backend) restore(ctx context.Context, t tools, text []byte) error {
	err := iptexec.Restore(ctx, b.cfg.Executor, t, text)
	var re *RestoreError
	if errors.As(err, &re) {
		b.log.Error("iptables-restore failed; previous rules stay, next sync is full",
			"tool", re.Tool, "line", re.Line, "text", re.Text, "stderr", re.Stderr)
	}
	return err
}

// savedTable is the part of one table's iptables-save output we care about.
type savedTable = iptexec.Table

// otherModePrefix starts the chains of switchyard's IPVS mode: they share
// the SWY- prefix but belong to that mode (its Cleanup removes them, and a
// node switching modes runs it), so this mode never lists, checks, deletes
// or unhooks them.
const otherModePrefix = "SWY-IPVS-"

// hostPortPrefix starts the chains of package hostport (SWY-HOSTPORTS,
// SWY-HOSTPORT-<hash>), which programs host ports beside every mode and
// owns them the same way.
const hostPortPrefix = "SWY-HOSTPORT"

// otherOwner reports whether an SWY- chain belongs to another owner.
func otherOwner(chain string) bool {
	return strings.HasPrefix(chain, otherModePrefix) || strings.HasPrefix(chain, hostPortPrefix)
}

// jumpsElsewhere reports whether a saved rule jumps to a chain of another
// owner.
func jumpsElsewhere(rule string) bool {
	for _, p := range []string{otherModePrefix, hostPortPrefix} {
		if strings.Contains(rule, " -j "+p) || strings.Contains(rule, " -g "+p) {
			return true
		}
	}
	return false
}

// thisMode drops the IPVS mode's and the host ports' chains, and the jumps
// to them, from a parsed table (in place; nil stays nil).
func thisMode(st *savedTable) *savedTable {
	if st == nil {
		return nil
	}
	own := st.Own[:0]
	for _, c := range st.Own {
		if otherOwner(c) {
			delete(st.Sums, c)
			continue
		}
		own = append(own, c)
	}
	st.Own = own
	jumps := st.ForeignJumps[:0]
	for _, j := range st.ForeignJumps {
		if !jumpsElsewhere(j) {
			jumps = append(jumps, j)
		}
	}
	st.ForeignJumps = jumps
	return st
}

// saveTables runs iptables-save for each of our tables.
func saveTables(ctx context.Context, ex Executor, t tools) (map[string]*savedTable, error) {
	out := map[string]*savedTable{}
	for _, table := range tableOrder {
		st, err := iptexec.Save(ctx, ex, t, table, ChainPrefix)
		if err != nil {
			return nil, fmt.Errorf("list chains: %w", err)
		}
		out[table] = thisMode(st)
	}
	return out, nil
}

func jr(table, from, to, commentText string, matches ...string) iptexec.Jump {
	return iptexec.NewJump(table, from, to, commentText, matches...)
}

var ctNew = []string{"-m", "conntrack", "--ctstate", "NEW"}

// jumpRules lists the jumps from built-in chains, in the order they end up
// at the top of each built-in chain.
var jumpRules = []iptexec.Jump{
	jr(tableNAT, "PREROUTING", chainServices, "switchyard service portals"),
	jr(tableNAT, "OUTPUT", chainServices, "switchyard service portals"),
	jr(tableNAT, "POSTROUTING", chainPostrouting, "switchyard postrouting rules"),
	jr(tableFilter, "INPUT", chainFirewall, "switchyard load balancer firewall", ctNew...),
	jr(tableFilter, "INPUT", chainNodePorts, "switchyard health check service ports"),
	jr(tableFilter, "INPUT", chainExternalServices, "switchyard externally-visible service portals", ctNew...),
	jr(tableFilter, "FORWARD", chainFirewall, "switchyard load balancer firewall", ctNew...),
	jr(tableFilter, "FORWARD", chainForward, "switchyard forwarding rules"),
	jr(tableFilter, "FORWARD", chainServices, "switchyard service portals", ctNew...),
	jr(tableFilter, "FORWARD", chainExternalServices, "switchyard externally-visible service portals", ctNew...),
	jr(tableFilter, "OUTPUT", chainFirewall, "switchyard load balancer firewall", ctNew...),
	jr(tableFilter, "OUTPUT", chainServices, "switchyard service portals", ctNew...),
}

// missingJumps returns, per table, the lines that add the jump rules the
// saved tables lack (see iptexec.MissingJumps).
func missingJumps(saved map[string]*savedTable) map[string][]string {
	return iptexec.MissingJumps(jumpRules, saved)
}

// Cleanup implements proxier.Backend: it deletes every rule that jumps to
// a SWY- chain and every SWY- chain, in both families, with one
// iptables-restore per table, leaving all other rules as they were. In
// ModeAuto it cleans both flavours.
func (b *Backend) Cleanup(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	modes := []Mode{b.cfg.Mode}
	if b.cfg.Mode == ModeAuto {
		modes = []Mode{ModeNFT, ModeLegacy}
	}
	var errs []error
	for _, m := range modes {
		for _, f := range []proxier.IPFamily{proxier.IPv4, proxier.IPv6} {
			if err := b.cleanupTools(ctx, toolsFor(m, f)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	b.state = map[proxier.IPFamily]*familyState{}
	return errors.Join(errs...)
}

func (b *Backend) cleanupTools(ctx context.Context, t tools) error {
	for _, table := range tableOrder {
		out, stderr, err := b.cfg.Executor.Run(ctx, nil, t.Save, "-t", table)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// A flavour or family this node cannot list (tool missing,
			// IPv6 off) holds nothing we could have written.
			b.log.Warn("cleanup: cannot list table, skipping", "tool", t.Save, "table", table,
				"stderr", iptexec.Trim(stderr), "err", err)
			return nil
		}
		saved := thisMode(iptexec.ParseSave(out, ChainPrefix))
		// See restoreWriter.listAll for -S.
		text := iptexec.DeleteText(table, saved, t.NFT)
		if text == "" {
			continue
		}
		if err := b.restore(ctx, t, []byte(text)); err != nil {
			return fmt.Errorf("cleanup %s: %w", table, err)
		}
		b.log.Info("cleaned up", "tool", t.Restore, "table", table, "chains", len(saved.Own), "jumps", len(saved.ForeignJumps))
	}
	return nil
}
