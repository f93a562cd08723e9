package results

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// NodeSplit is one datapath and concurrency level of a multi-node run:
// how its connections divided between backends on the client's node and
// on other nodes (medians over the valid closed-loop trials).
type NodeSplit struct {
	Datapath    string
	Site        string
	Concurrency int
	Nodes       int
	Trials      int
	// QPS is the median of the trials' QPS; SameQPS and CrossQPS are the
	// medians of each trial's QPS × its same-node and cross-node share.
	QPS, SameQPS, CrossQPS float64
	CrossFraction          float64
	// CrossRatioToDirect is CrossQPS over direct's at the same level and
	// site (0 when direct was not measured).
	CrossRatioToDirect float64
}

// NodeSplits summarises the node split of a run's closed-loop trials, in
// the order the datapaths first appear; nil for a one-node run.
func NodeSplits(run *Run) []NodeSplit {
	type key struct {
		dp, site string
		conc     int
	}
	var order []key
	groups := map[key][]Trial{}
	for _, t := range run.Trials {
		if t.Nodes < 2 || t.CrossNodeFraction == nil || t.Invalid != "" || t.Model != "" {
			continue
		}
		k := key{t.Datapath, t.Site, t.Concurrency}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], t)
	}
	// The main table's order: datapaths as the run lists them, then
	// concurrency (trials themselves run rotated).
	rank := map[string]int{}
	for i, d := range run.Datapaths {
		if _, ok := rank[d.Name]; !ok {
			rank[d.Name] = i
		}
	}
	slices.SortStableFunc(order, func(a, b key) int {
		ra, oka := rank[a.dp]
		rb, okb := rank[b.dp]
		switch {
		case oka != okb:
			if oka {
				return -1
			}
			return 1
		case ra != rb:
			return ra - rb
		case a.site != b.site:
			return strings.Compare(a.site, b.site)
		}
		return a.conc - b.conc
	})
	out := make([]NodeSplit, 0, len(order))
	for _, k := range order {
		var qps, same, cross, frac []float64
		ts := groups[k]
		for _, t := range ts {
			f := *t.CrossNodeFraction
			qps = append(qps, t.Workload.QPS)
			same = append(same, t.Workload.QPS*(1-f))
			cross = append(cross, t.Workload.QPS*f)
			frac = append(frac, f)
		}
		out = append(out, NodeSplit{Datapath: k.dp, Site: k.site, Concurrency: k.conc, Nodes: ts[0].Nodes, Trials: len(ts),
			QPS: NewStat(qps).Median, SameQPS: NewStat(same).Median, CrossQPS: NewStat(cross).Median, CrossFraction: NewStat(frac).Median})
	}
	for i := range out {
		j := slices.IndexFunc(out, func(d NodeSplit) bool {
			return d.Datapath == DirectDatapath && d.Site == out[i].Site && d.Concurrency == out[i].Concurrency
		})
		if j >= 0 && out[j].CrossQPS > 0 {
			out[i].CrossRatioToDirect = out[i].CrossQPS / out[j].CrossQPS
		}
	}
	return out
}

// writeNodes prints the same-node vs cross-node block of a multi-node run
// (nothing for one node).
func writeNodes(w io.Writer, run *Run) error {
	splits := NodeSplits(run)
	if len(splits) == 0 {
		return nil
	}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "\nsame-node vs cross-node (%d nodes; clients on node-0, backends round-robin):\n", splits[0].Nodes)
	tw := tabwriter.NewWriter(&buf, 0, 0, tablePad, ' ', tabwriter.AlignRight)
	// The datapath is padded by hand to read left-aligned, as in the
	// main table.
	width := len("DATAPATH")
	for _, s := range splits {
		width = max(width, len(SiteName(s.Datapath, s.Site)))
	}
	fmt.Fprintf(tw, "%-*s\tCONC\tREPS\tQPS\tSAME QPS\tCROSS QPS\tCROSS %%\tCROSS×DIR\t\n", width, "DATAPATH")
	for _, s := range splits {
		fmt.Fprintf(tw, "%-*s\t%d\t%d\t%s\t%s\t%s\t%.1f\t%s\t\n", width, SiteName(s.Datapath, s.Site), s.Concurrency, s.Trials,
			fmtQPS(s.QPS), fmtQPS(s.SameQPS), fmtQPS(s.CrossQPS), 100*s.CrossFraction, fmtRatio(s.CrossRatioToDirect))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("results table: %w", err)
	}
	buf.WriteString("SAME/CROSS QPS: each trial's QPS split by where the answering backend runs (per-backend counts); the generator\n" +
		"times all connections in one histogram, so p90 is not measured per class (the main table's p90 is both together)\n")
	return writeTrimmed(w, buf.String())
}
