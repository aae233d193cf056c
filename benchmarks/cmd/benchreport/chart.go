package main

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// The charts' files in the directory given to -svg.
const (
	headlineSVG  = "headline.svg"
	stalenessSVG = "staleness.svg"
)

const (
	chartWidth, chartHeight = 10 * vg.Inch, 5 * vg.Inch
	groupWidth              = 0.8 // of the space between two groups' centres
)

// writeCharts draws the headline table as dir/headline.svg and, if the results hold
// the coherence workload, the stale-reads table as dir/staleness.svg.
func writeCharts(dir string, rs []result) error {
	t := group(rs, "ns/op", func(result) bool { return true })
	if len(t.systems) == 0 {
		return fmt.Errorf("no benchmark results")
	}
	var systems []string // all of them, the same order as in the tables
	for _, r := range rs {
		if !slices.Contains(systems, r.system) {
			systems = append(systems, r.system)
		}
	}
	colors := palette(t.systems[0], systems)
	if err := save(filepath.Join(dir, headlineSVG), headlineChart(t, colors)); err != nil {
		return err
	}
	if st := staleness(rs); len(st.systems) > 0 {
		return save(filepath.Join(dir, stalenessSVG), stalenessChart(st, colors))
	}
	return nil
}

// palette gives every system its colour, the same in both charts: base (tiered) a
// strong red, its variants (tiered-1node) a light red, the peers others.
func palette(base string, systems []string) map[string]color.Color {
	peers := []color.RGBA{
		{0x1f, 0x77, 0xb4, 0xff}, // blue
		{0x2c, 0xa0, 0x2c, 0xff}, // green
		{0x94, 0x67, 0xbd, 0xff}, // purple
		{0x8c, 0x56, 0x4b, 0xff}, // brown
		{0x7f, 0x7f, 0x7f, 0xff}, // grey
		{0xbc, 0xbd, 0x22, 0xff}, // olive
		{0x17, 0xbe, 0xcf, 0xff}, // cyan
		{0xe3, 0x77, 0xc2, 0xff}, // pink
		{0xff, 0x7f, 0x0e, 0xff}, // orange
	}
	m := map[string]color.Color{}
	for _, sys := range systems {
		switch {
		case sys == base:
			m[sys] = color.RGBA{0xc6, 0x28, 0x28, 0xff}
		case strings.HasPrefix(sys, base+"-"):
			m[sys] = color.RGBA{0xf0, 0x9a, 0x9a, 0xff}
		default:
			m[sys] = peers[0]
			peers = append(peers[1:], peers[0])
		}
	}
	return m
}

// chart is a plot with its legend, which is drawn beside the plot rather than over
// its bars.
type chart struct {
	*plot.Plot
	legend plot.Legend
}

// headlineChart draws each peer's median time per operation over the first system's,
// per workload, as bars up (slower) or down (faster) from the first system's line at 1.
func headlineChart(t table, colors map[string]color.Color) chart {
	base, peers := t.systems[0], t.systems[1:]
	var b bars // from log10(1) = 0
	lo, hi := 1.0, 1.0
	for _, sys := range peers {
		s := series{name: sys, color: colors[sys]}
		for _, wl := range t.workloads {
			r := math.NaN()
			v, ok := t.vals[[2]string{wl, sys}]
			bv, hasBase := t.vals[[2]string{wl, base}]
			if ok && hasBase && median(v) > 0 && median(bv) > 0 {
				r = median(v) / median(bv)
				lo, hi = min(lo, r), max(hi, r)
			}
			s.vals = append(s.vals, math.Log10(r))
		}
		b.series = append(b.series, s)
	}

	c := newChart(fmt.Sprintf("Median time per operation over %s's, per workload (runs per median: %s)", base, runs(t)))
	c.Y.Label.Text = fmt.Sprintf("ns/op ÷ %s's ns/op  (log scale, lower is faster)", base)
	logY(c.Plot, step125(lo/1.1, false), step125(hi*1.1, true), []float64{1, 2, 5}, "×")
	var labels []string
	for _, wl := range t.workloads {
		if _, ok := t.vals[[2]string{wl, base}]; !ok {
			wl += "\n(no " + base + " run)"
		}
		labels = append(labels, wl)
	}
	nominalX(c.Plot, labels)

	one := draw.LineStyle{Color: colors[base], Width: vg.Points(2.5)}
	c.Add(separators(len(labels)), hline{y: 0, style: one}, b) // under the bars, which start at it
	c.legend.Add(base+" (= 1)", hline{style: one})
	for _, s := range b.series {
		c.legend.Add(s.name, s)
	}
	return c
}

// staleReads is the stale-reads table: per system, the reads checked and the stale
// reads with respect to each Δ, summed over all runs.
type staleReads struct {
	systems []string
	runs    string
	reads   map[string]float64
	stale   [len(deltas)]map[string]float64
}

// deltas are the bounds of the coherence workload's stale-reads metrics.
var deltas = [...]struct{ label, unit string }{
	{"Δ = 100 ms (the headline bound)", "stale-reads"},
	{"Δ = 10 ms", "stale-reads-10ms"},
	{"Δ = 1 ms", "stale-reads-1ms"},
}

func staleness(rs []result) staleReads {
	coh := func(r result) bool { return r.workload == "Coherence" }
	reads := group(rs, "reads", coh)
	st := staleReads{systems: reads.systems, runs: runs(reads), reads: map[string]float64{}}
	for _, sys := range reads.systems {
		st.reads[sys] = sum(reads, "Coherence", sys)
	}
	for i, d := range deltas {
		t := group(rs, d.unit, coh)
		st.stale[i] = map[string]float64{}
		for _, sys := range t.systems {
			st.stale[i][sys] = sum(t, "Coherence", sys)
		}
	}
	return st
}

// stalenessChart draws each system's stale reads as a share of the reads it checked
// (the systems do very different numbers of reads), one group of bars per Δ. The
// scale is logarithmic from a power of ten below the smallest share that is not zero;
// a zero is marked "0" on that floor.
func stalenessChart(st staleReads, colors map[string]color.Color) chart {
	var b bars
	lo := math.Inf(1)
	for _, sys := range st.systems {
		s := series{name: sys, color: colors[sys]}
		for i := range deltas {
			pct := math.NaN()
			if n, ok := st.stale[i][sys]; ok && st.reads[sys] > 0 {
				pct = 100 * n / st.reads[sys]
				if pct > 0 {
					lo = min(lo, pct)
				}
			}
			s.vals = append(s.vals, math.Log10(pct))
		}
		b.series = append(b.series, s)
	}
	floor := 1e-3
	if !math.IsInf(lo, 1) {
		floor = min(math.Pow(10, math.Ceil(math.Log10(lo))-1), 0.1)
	}

	c := newChart(fmt.Sprintf("Coherence workload: stale reads, %% of the reads checked (summed over %s runs)\n"+
		"stale w.r.t. Δ: replaced by a write acknowledged more than Δ before the read", st.runs))
	c.Y.Label.Text = "stale reads, % of reads checked  (log scale)"
	logY(c.Plot, floor, 100, []float64{1}, "%")
	b.base = c.Y.Min
	var labels []string
	for _, d := range deltas {
		labels = append(labels, d.label)
	}
	nominalX(c.Plot, labels)
	c.Add(separators(len(labels)), b)
	for _, s := range b.series {
		c.legend.Add(s.name, s)
	}
	return c
}

// logY makes p's y axis span lo to hi on a log scale, with ticks at every
// mantissa×10^k between them labelled with unit. The data is plotted as log10 of
// its values on a linear axis: gonum's LogScale misplaces the axis label.
func logY(p *plot.Plot, lo, hi float64, mantissas []float64, unit string) {
	p.Y.Min, p.Y.Max = math.Log10(lo), math.Log10(hi)
	var ts []plot.Tick
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range mantissas {
			v := m * math.Pow(10, e)
			if v >= lo*(1-1e-9) && v <= hi*(1+1e-9) {
				ts = append(ts, plot.Tick{Value: math.Log10(v), Label: strconv.FormatFloat(v, 'f', -1, 64) + unit})
			}
		}
	}
	p.Y.Tick.Marker = plot.ConstantTicks(ts)
}

// nominalX puts one group of bars per label on p's x axis.
func nominalX(p *plot.Plot, labels []string) {
	p.NominalX(labels...)
	p.X.Min, p.X.Max = -0.5, float64(len(labels))-0.5
	p.Y.Padding = vg.Points(4) // NominalX leaves room for half the first label: not needed here
}

func newChart(title string) chart {
	p := plot.New()
	p.Title.Text = title
	p.Title.Padding = vg.Points(8)
	p.Title.TextStyle.Font.Size = vg.Points(13)
	p.X.Tick.Label.Font.Size = vg.Points(11)
	p.Y.Tick.Label.Font.Size = vg.Points(10)
	grid := plotter.NewGrid()
	grid.Vertical.Color = nil
	grid.Horizontal.Color = color.Gray{0xdd}
	p.Add(grid)
	l := plot.NewLegend()
	l.Top, l.Left = true, true
	l.Padding = vg.Points(4)
	l.ThumbnailWidth = vg.Points(18)
	l.TextStyle.Font = font.From(plot.DefaultFont, 11)
	return chart{Plot: p, legend: l}
}

// save writes c as SVG, its legend at the right of the plot, level with its top.
func save(path string, c chart) error {
	img := vgsvg.New(chartWidth, chartHeight)
	full := draw.New(img)
	full.SetColor(color.White)
	full.Fill(full.Rectangle.Path())
	dc := draw.Crop(full, vg.Points(6), -vg.Points(6), vg.Points(6), -vg.Points(8))
	// The legend's room, with some to spare for a fallback font wider than the one
	// the text was measured in.
	legendWidth := c.legend.Rectangle(dc).Size().X*1.2 + vg.Points(16)
	pc := draw.Crop(dc, 0, -legendWidth, 0, 0)
	c.Draw(pc)
	data := c.DataCanvas(pc)
	c.legend.Draw(draw.Canvas{Canvas: dc, Rectangle: vg.Rectangle{
		Min: vg.Point{X: pc.Max.X + vg.Points(16), Y: data.Min.Y},
		Max: vg.Point{X: dc.Max.X, Y: data.Max.Y},
	}})
	var buf bytes.Buffer
	if _, err := img.WriteTo(&buf); err != nil {
		return err
	}
	// The SVG names its font without a fallback; Times New Roman has the metrics of
	// Liberation Serif, in which the text was laid out.
	svg := bytes.ReplaceAll(buf.Bytes(), []byte("font-family:Liberation Serif;"),
		[]byte("font-family:'Liberation Serif','Times New Roman',Times,serif;"))
	return os.WriteFile(path, svg, 0o644)
}

// series is one system's bars, one value per group; NaN leaves its slot empty.
type series struct {
	name  string
	color color.Color
	vals  []float64
}

// Thumbnail draws the series' swatch in a legend.
func (s series) Thumbnail(c *draw.Canvas) {
	c.SetColor(s.color)
	c.Fill(c.Rectangle.Path())
}

// bars draws grouped bars: group g centred at x = g, one slot per series in it, each
// bar from base to its value (log10 of the value shown). A value of -Inf (log10 of 0)
// is a stub on the base marked "0".
type bars struct {
	series []series
	base   float64
}

func (b bars) Plot(c draw.Canvas, p *plot.Plot) {
	x, y := p.Transforms(&c)
	w := groupWidth / float64(len(b.series))
	sty := p.X.Tick.Label
	sty.Font.Size = vg.Points(9)
	sty.XAlign, sty.YAlign = draw.XCenter, draw.YBottom
	for i, s := range b.series {
		for g, v := range s.vals {
			left := float64(g) - groupWidth/2 + float64(i)*w
			gap := (x(left+w) - x(left)) / 10
			switch {
			case math.IsNaN(v):
			case math.IsInf(v, -1):
				c.SetColor(s.color)
				c.Fill(vg.Rectangle{
					Min: vg.Point{X: x(left) + gap, Y: y(b.base)},
					Max: vg.Point{X: x(left+w) - gap, Y: y(b.base) + vg.Points(2)},
				}.Path())
				c.FillText(sty, vg.Point{X: x(left + w/2), Y: y(b.base) + vg.Points(3)}, "0")
			default:
				c.SetColor(s.color)
				c.Fill(vg.Rectangle{
					Min: vg.Point{X: x(left) + gap, Y: y(min(v, b.base))},
					Max: vg.Point{X: x(left+w) - gap, Y: y(max(v, b.base))},
				}.Path())
			}
		}
	}
}

// hline is a horizontal line across the plot at y, and its legend thumbnail.
type hline struct {
	y     float64
	style draw.LineStyle
}

func (h hline) Plot(c draw.Canvas, p *plot.Plot) {
	_, y := p.Transforms(&c)
	c.StrokeLine2(h.style, c.Min.X, y(h.y), c.Max.X, y(h.y))
}

func (h hline) Thumbnail(c *draw.Canvas) {
	mid := (c.Min.Y + c.Max.Y) / 2
	c.StrokeLine2(h.style, c.Min.X, mid, c.Max.X, mid)
}

// separators are thin vertical lines between n groups.
type separators int

func (n separators) Plot(c draw.Canvas, p *plot.Plot) {
	x, _ := p.Transforms(&c)
	sty := draw.LineStyle{Color: color.Gray{0xcc}, Width: vg.Points(0.5)}
	for g := 1; g < int(n); g++ {
		c.StrokeLine2(sty, x(float64(g)-0.5), c.Min.Y, x(float64(g)-0.5), c.Max.Y)
	}
}

// step125 rounds v down (or up) to a value of the 1, 2, 5, 10, 20... sequence.
func step125(v float64, up bool) float64 {
	e := math.Pow(10, math.Floor(math.Log10(v)))
	steps := []float64{1, 2, 5, 10}
	if up {
		for _, s := range steps {
			if s*e >= v*(1-1e-9) {
				return s * e
			}
		}
	}
	for i := len(steps) - 1; i >= 0; i-- {
		if steps[i]*e <= v*(1+1e-9) {
			return steps[i] * e
		}
	}
	return e
}
