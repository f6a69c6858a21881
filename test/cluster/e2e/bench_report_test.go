package e2e

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"strings"
	"time"
)

// benchRow is one line of the side-by-side table: how to read one number
// off a result, and how to print it.
type benchRow struct {
	name  string
	value func(benchResult) float64 // negative: not reached within the bound
	unit  string                    // "s", "MiB", "MB"
}

var benchRows = []benchRow{
	{"converge after a bulk create (last object → its rules)", func(r benchResult) float64 { return r.converge.Seconds() }, "s"},
	{"one-endpoint change p50 (network programming)", func(r benchResult) float64 { return quantile(r.changes, 0.5).Seconds() }, "s"},
	{"one-endpoint change p90", func(r benchResult) float64 { return quantile(r.changes, 0.9).Seconds() }, "s"},
	{"one-endpoint change p99", func(r benchResult) float64 { return quantile(r.changes, 0.99).Seconds() }, "s"},
	{"sync time of a one-endpoint change p50", func(r benchResult) float64 { return quantile(r.changeSyncs, 0.5).Seconds() }, "s"},
	{"full sync (first sync after a restart)", func(r benchResult) float64 { return r.full.Seconds() }, "s"},
	{"cold start (exec → all rules written)", func(r benchResult) float64 { return r.cold.Seconds() }, "s"},
	{"kernel alone: plain restore of its ruleset", func(r benchResult) float64 { return r.kernel.Seconds() }, "s"},
	{"ruleset bytes (as saved)", func(r benchResult) float64 { return float64(r.bytes) / 1e6 }, "MB"},
	{"RSS after the cold start", func(r benchResult) float64 { return float64(r.rss) / (1 << 20) }, "MiB"},
	{"peak RSS", func(r benchResult) float64 { return float64(r.peakRSS) / (1 << 20) }, "MiB"},
	{"CPU of the restarted process", func(r benchResult) float64 { return r.cpu.Seconds() }, "s"},
}

func fmtValue(v float64, unit string) string {
	if v < 0 {
		return "> " + fmtValue(-v, unit)
	}
	if unit == "s" {
		return fmtDur(time.Duration(v * float64(time.Second)))
	}
	if unit == "MiB" {
		return fmt.Sprintf("%.0f MiB", v)
	}
	return fmt.Sprintf("%.1f %s", v, unit)
}

func findResult(results []benchResult, proxy string, n int) (benchResult, bool) {
	for _, r := range results {
		if r.proxy == proxy && r.n == n {
			return r, true
		}
	}
	return benchResult{}, false
}

// benchTable is the markdown report: per N, one row per measure, one
// column per proxy, and switchyard's ratio to kube-proxy (lower is better).
func benchTable(cfg benchConfig, counts []int, proxies []string, results []benchResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Side by side, %s mode, %d endpoints per service\n\n", cfg.mode, cfg.eps)
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(&b, "%s; %d one-endpoint changes per run; one proxy at a time, same lab, same API server objects, same command line; %d CPUs, load average at the end %s.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), cfg.changes, runtime.NumCPU(), strings.Join(strings.Fields(string(load))[:3], " "))
	ratio := len(proxies) == 2 && proxies[0] == "kube-proxy" && proxies[1] == "switchyard"
	for _, n := range counts {
		fmt.Fprintf(&b, "## N = %d services\n\n| measure |", n)
		for _, p := range proxies {
			fmt.Fprintf(&b, " %s |", p)
		}
		if ratio {
			b.WriteString(" switchyard / kube-proxy |")
		}
		b.WriteString("\n|---|")
		for range proxies {
			b.WriteString("---|")
		}
		if ratio {
			b.WriteString("---|")
		}
		b.WriteString("\n")
		for _, row := range benchRows {
			fmt.Fprintf(&b, "| %s |", row.name)
			var vals []float64
			for _, p := range proxies {
				r, ok := findResult(results, p, n)
				if !ok || r.failed != "" {
					b.WriteString(" failed |")
					vals = append(vals, math.NaN())
					continue
				}
				if r.skipped && row.name != benchRows[0].name {
					b.WriteString(" – |")
					vals = append(vals, math.NaN())
					continue
				}
				v := row.value(r)
				vals = append(vals, v)
				fmt.Fprintf(&b, " %s |", fmtValue(v, row.unit))
			}
			if ratio {
				kp, sw := vals[0], vals[1]
				switch {
				case math.IsNaN(kp) || math.IsNaN(sw) || sw < 0 || kp == 0:
					b.WriteString(" – |")
				case kp < 0:
					fmt.Fprintf(&b, " < %.2f |", sw/(-kp))
				default:
					fmt.Fprintf(&b, " %.2f |", sw/kp)
				}
			}
			b.WriteString("\n")
		}
		for _, p := range proxies {
			if r, ok := findResult(results, p, n); ok && r.failed != "" {
				fmt.Fprintf(&b, "\n%s failed: %s\n", p, r.failed)
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

// benchPlot draws two log-log panels (one-endpoint change p50 and full
// sync, seconds against N) as an SVG, one line per proxy.
func benchPlot(cfg benchConfig, counts []int, proxies []string, results []benchResult) string {
	const w, h, pad = 420, 300, 55
	panels := []benchRow{benchRows[1], benchRows[5]}
	colors := []string{"#c0392b", "#2471a3", "#1e8449", "#7d3c98"}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", 2*w, h+30)
	fmt.Fprintf(&b, `<text x="10" y="16" font-size="13">%s mode, %d endpoints per service (log-log)</text>`+"\n", cfg.mode, cfg.eps)
	for pi, panel := range panels {
		x0 := pi * w
		// Value range over all proxies, positive only.
		lo, hi := math.Inf(1), math.Inf(-1)
		for _, r := range results {
			if v := math.Abs(panel.value(r)); r.failed == "" && !r.skipped && v > 0 {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
		if math.IsInf(lo, 0) {
			continue
		}
		ylo, yhi := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
		if yhi == ylo {
			yhi++
		}
		nlo, nhi := math.Log10(float64(counts[0])), math.Log10(float64(counts[len(counts)-1]))
		if nhi == nlo {
			nlo, nhi = nlo-0.5, nhi+0.5
		}
		px := func(n int) float64 {
			return float64(x0+pad) + (math.Log10(float64(n))-nlo)/(nhi-nlo)*float64(w-2*pad)
		}
		py := func(v float64) float64 {
			return float64(30+h-pad) - (math.Log10(v)-ylo)/(yhi-ylo)*float64(h-2*pad)
		}
		fmt.Fprintf(&b, `<text x="%d" y="40">%s</text>`+"\n", x0+pad, panel.name)
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#888"/>`+"\n", x0+pad, 30+pad, w-2*pad, h-2*pad)
		for e := ylo; e <= yhi; e++ {
			y := py(math.Pow(10, e))
			fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n",
				x0+pad, x0+w-pad, y, y, x0+pad-4, y+4, fmtValue(math.Pow(10, e), "s"))
		}
		for _, n := range counts {
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", px(n), 30+h-pad+14, n)
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">services (N)</text>`+"\n", x0+w/2, 30+h-pad+30)
		for i, p := range proxies {
			var pts []string
			for _, n := range counts {
				r, ok := findResult(results, p, n)
				if v := math.Abs(panel.value(r)); ok && r.failed == "" && !r.skipped && v > 0 {
					pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(n), py(v)))
					fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", px(n), py(v), colors[i%len(colors)])
				}
			}
			fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>`+"\n", strings.Join(pts, " "), colors[i%len(colors)])
			fmt.Fprintf(&b, `<text x="%d" y="%d" fill="%s">%s</text>`+"\n", x0+pad+8, 30+pad+16+14*i, colors[i%len(colors)], p)
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}
