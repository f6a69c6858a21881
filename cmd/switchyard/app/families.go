package app

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"time"

	"github.com/switchyard-proxy/switchyard/internal/iptexec"
	"github.com/switchyard-proxy/switchyard/proxier"
)

// kernelFamilies returns the IP families this node's kernel and tools can
// proxy: IPv4, and IPv6 when the kernel has IPv6 and ip6tables can list
// its nat table (upstream's dual-stack check). Tests replace it.
var kernelFamilies = func(ctx context.Context, log *slog.Logger) []proxier.IPFamily {
	fams := []proxier.IPFamily{proxier.IPv4}
	if _, err := os.Stat("/proc/net/if_inet6"); err != nil {
		log.Info("IPv6 is not available in this kernel; proxying IPv4 only")
		return fams
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, m := range []iptexec.Mode{iptexec.ModeNFT, iptexec.ModeLegacy} {
		if err := exec.CommandContext(ctx, iptexec.ToolsFor(m, proxier.IPv6).Save, "-t", "nat").Run(); err == nil {
			return append(fams, proxier.IPv6)
		}
	}
	log.Info("ip6tables cannot list the nat table; proxying IPv4 only")
	return fams
}
