package server

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/wattagg/wattagg/server/api"
)

// The status page is plain HTML and SVG rendered on the server: no JavaScript, nothing to
// build. It refreshes itself every 5 s (a meta refresh).
//
//go:embed assets/status.html
var statusHTML string

var statusTmpl = template.Must(template.New("status").Funcs(template.FuncMap{
	"bytes": formatBytes,
	"joules": func(j *float64) string {
		if j == nil {
			return ""
		}
		return fmt.Sprintf("%.4g", *j)
	},
	"progress": func(n, of, width int) int {
		if of <= 0 {
			return 0
		}
		return min(n, of) * width / of
	},
}).Parse(statusHTML))

// bar is one round's bar of the energy chart.
type bar struct {
	Round           int
	Joules          float64
	Source          string
	X, Y, W, H, Mid int
	LabelY          int
}

type statusPage struct {
	Rule       string
	Now        string
	Current    *api.Round
	Rounds     []api.Round
	Bars       []bar
	ChartWidth int
	Sources    string
}

func (s *Server) handleStatusPage(w http.ResponseWriter, r *http.Request) {
	all := s.Rounds()
	p := statusPage{Rule: s.cfg.Round.Rule, Now: time.Now().Format("15:04:05"), Rounds: all.Rounds}
	if n := s.Current(); n > 0 {
		if st, err := s.Status(n); err == nil {
			p.Current = &st
		}
	}
	p.Bars, p.ChartWidth, p.Sources = energyBars(all.Rounds)
	var b bytes.Buffer
	if err := statusTmpl.Execute(&b, p); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	_, _ = w.Write(b.Bytes())
}

// energyBars lays out one bar per closed round with measured joules (the last 40), scaled to
// the largest.
func energyBars(rounds []api.Round) ([]bar, int, string) {
	var bars []bar
	sources := map[string]bool{}
	for _, r := range rounds {
		if r.Report == nil || r.Report.Joules == nil {
			continue
		}
		bars = append(bars, bar{Round: r.Round, Joules: *r.Report.Joules, Source: r.Report.JoulesSource})
		sources[r.Report.JoulesSource] = true
	}
	if len(bars) > 40 {
		bars = bars[len(bars)-40:]
	}
	peak := 0.0
	for _, b := range bars {
		peak = max(peak, b.Joules)
	}
	const top, bottom, w, gap = 20, 150, 40, 16
	for i := range bars {
		h := 1
		if peak > 0 {
			h = max(1, int(bars[i].Joules/peak*float64(bottom-top)))
		}
		bars[i].X, bars[i].W, bars[i].H, bars[i].Y = 40+i*(w+gap), w, h, bottom-h
		bars[i].LabelY, bars[i].Mid = bottom-h-4, bars[i].X+w/2
	}
	names := make([]string, 0, len(sources))
	for s := range sources {
		if s == "" {
			s = "unknown"
		}
		names = append(names, s)
	}
	slices.Sort(names)
	return bars, 40 + len(bars)*(w+gap) + 20, strings.Join(names, ", ")
}

// formatBytes spells a byte count in binary units.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
