package ring

import (
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// exact share of hash space per node (keys uniform).
func shares(s *snapshot, n int) []float64 {
	sh := make([]float64, n)
	P := len(s.points)
	for i := 0; i < P; i++ {
		prev := s.points[(i+P-1)%P]
		arc := s.points[i] - prev // wraps correctly mod 2^64
		sh[s.owner[i]] += float64(arc) / math.Exp2(64)
	}
	return sh
}

func TestTail(t *testing.T) {
	for _, R := range []int{1000, 2000, 3000, 4000} {
		line := fmt.Sprintf("R=%-5d", R)
		for _, n := range []int{3, 5, 10} {
			var ws []float64
			for trial := 0; trial < 400; trial++ {
				var names []string
				for i := 0; i < n; i++ {
					names = append(names, fmt.Sprintf("node-%x", xxhash.Sum64String(fmt.Sprint(trial, i))))
				}
				r, _ := New(names, R)
				ws = append(ws, slices.Max(shares(r.snap.Load(), n))*float64(n))
			}
			slices.Sort(ws)
			line += fmt.Sprintf("  n=%d med %.3f p99 %.3f max %.3f", n, ws[len(ws)/2], ws[len(ws)*99/100], ws[len(ws)-1])
		}
		t.Log(line)
	}
}
