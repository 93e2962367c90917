// Package digits loads the UCI handwritten digits (8x8 images, 10 classes, 1797 samples, as
// scikit-learn ships them; testdata/SOURCE.md has the source and licence), splits off a
// held-out test set and cuts the rest into non-IID client shards for federated-learning
// simulations. It has no gorgonia dependency.
package digits

import (
	"bufio"
	"bytes"
	"compress/gzip"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// The shape of the data.
const (
	Features = 64 // pixels of an 8x8 image, row by row
	Classes  = 10 // digits 0..9
	MaxPixel = 16 // pixels are counts of on bits in 4x4 blocks: 0..16
)

// ErrFormat is returned for input that is not rows of 64 pixels in 0..16 and a class in 0..9.
var ErrFormat = errors.New("digits: bad data")

//go:embed testdata/digits.csv.gz
var digitsCSVGz []byte

// Dataset holds n samples: X is n rows of Features pixels scaled to [0, 1] (pixel/16, exact
// in float32), Y the n classes.
type Dataset struct {
	X []float32
	Y []int
}

// Len is the number of samples.
func (d Dataset) Len() int { return len(d.Y) }

// Row returns sample i's features (a view of X).
func (d Dataset) Row(i int) []float32 { return d.X[i*Features : (i+1)*Features : (i+1)*Features] }

// Counts returns how many samples each class has.
func (d Dataset) Counts() [Classes]int {
	var c [Classes]int
	for _, y := range d.Y {
		c[y]++
	}
	return c
}

// Subset returns the samples at idx, in that order, in new memory.
func (d Dataset) Subset(idx []int) Dataset {
	s := Dataset{X: make([]float32, 0, len(idx)*Features), Y: make([]int, 0, len(idx))}
	for _, i := range idx {
		s.X = append(s.X, d.Row(i)...)
		s.Y = append(s.Y, d.Y[i])
	}
	return s
}

// Load returns the 1797 samples of the copy embedded in this package.
func Load() (Dataset, error) {
	return Parse(bytes.NewReader(digitsCSVGz))
}

// Parse reads scikit-learn's digits.csv.gz format: gzip-compressed lines of 64
// comma-separated pixels (integers 0..16) and the class (0..9).
func Parse(r io.Reader) (Dataset, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return Dataset{}, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	defer zr.Close()
	var d Dataset
	sc := bufio.NewScanner(zr)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		fields := strings.Split(text, ",")
		if len(fields) != Features+1 {
			return Dataset{}, fmt.Errorf("%w: line %d has %d fields, want %d", ErrFormat, line, len(fields), Features+1)
		}
		for j, f := range fields {
			v, err := strconv.Atoi(strings.TrimSpace(f))
			limit := MaxPixel
			if j == Features {
				limit = Classes - 1
			}
			if err != nil || v < 0 || v > limit {
				return Dataset{}, fmt.Errorf("%w: line %d field %d is %q, want an integer in 0..%d", ErrFormat, line, j+1, f, limit)
			}
			if j == Features {
				d.Y = append(d.Y, v)
			} else {
				d.X = append(d.X, float32(v)/MaxPixel)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return Dataset{}, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if d.Len() == 0 {
		return Dataset{}, fmt.Errorf("%w: no samples", ErrFormat)
	}
	return d, nil
}
