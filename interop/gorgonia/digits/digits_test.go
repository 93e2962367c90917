package digits

import (
	"bytes"
	"compress/gzip"
	"errors"
	"slices"
	"strings"
	"testing"
)

func load(t *testing.T) Dataset {
	t.Helper()
	d, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestLoad(t *testing.T) {
	d := load(t)
	if d.Len() != 1797 || len(d.X) != 1797*Features {
		t.Fatalf("%d samples, %d features", d.Len(), len(d.X))
	}
	// Class counts as digits.rst and the UCI page give them for the test file.
	want := [Classes]int{178, 182, 177, 183, 181, 182, 181, 179, 174, 180}
	if got := d.Counts(); got != want {
		t.Fatalf("class counts %v, want %v", got, want)
	}
	// The first row of digits.csv.gz, as scikit-learn's load_digits().data[0] shows it.
	first := []float32{0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0,
		0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0}
	for i := range first {
		first[i] /= 16
	}
	if !slices.Equal(d.Row(0), first) || d.Y[0] != 0 {
		t.Fatalf("row 0: %v class %d", d.Row(0), d.Y[0])
	}
	for i, v := range d.X {
		if !(v >= 0 && v <= 1) {
			t.Fatalf("feature %d is %v, outside [0, 1]", i, v)
		}
	}
}

func gz(s string) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	w.Write([]byte(s))
	w.Close()
	return b.Bytes()
}

func TestParseRejects(t *testing.T) {
	row := strings.Repeat("1,", Features)
	for name, in := range map[string][]byte{
		"not gzip":     []byte("0,1,2"),
		"short row":    gz("1,2,3\n"),
		"pixel 17":     gz(strings.Repeat("1,", Features-1) + "17,3\n"),
		"negative":     gz(strings.Repeat("1,", Features-1) + "-1,3\n"),
		"class 10":     gz(row + "10\n"),
		"not a number": gz(row + "x\n"),
		"empty":        gz(""),
	} {
		if _, err := Parse(bytes.NewReader(in)); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v, want ErrFormat", name, err)
		}
	}
	d, err := Parse(bytes.NewReader(gz(row + "7\n\n" + row + "3\n")))
	if err != nil {
		t.Fatal(err)
	}
	if d.Len() != 2 || d.Y[1] != 3 || d.X[0] != 1.0/16 {
		t.Fatalf("parsed %d rows, %v", d.Len(), d.Y)
	}
}

// rowKey identifies a sample by its contents, so tests can check that splits neither lose
// nor duplicate samples.
func rowKey(d Dataset, i int) string {
	var b strings.Builder
	for _, v := range d.Row(i) {
		b.WriteByte(byte(v * 16))
	}
	b.WriteByte(byte(d.Y[i]))
	return b.String()
}

func multiset(ds ...Dataset) map[string]int {
	m := map[string]int{}
	for _, d := range ds {
		for i := range d.Len() {
			m[rowKey(d, i)]++
		}
	}
	return m
}

func sameMultiset(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestSplitStratified(t *testing.T) {
	d := load(t)
	train, test, err := d.Split(0.2, 1)
	if err != nil {
		t.Fatal(err)
	}
	if train.Len()+test.Len() != d.Len() || !sameMultiset(multiset(train, test), multiset(d)) {
		t.Fatalf("split lost or duplicated samples: %d + %d", train.Len(), test.Len())
	}
	all, tc := d.Counts(), test.Counts()
	for c := range Classes {
		want := int(float64(all[c])*0.2 + 0.5)
		if tc[c] != want {
			t.Fatalf("class %d: %d held out of %d, want %d", c, tc[c], all[c], want)
		}
	}
	train2, test2, err := d.Split(0.2, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(train.Y, train2.Y) || !slices.Equal(test.X, test2.X) {
		t.Fatal("same seed, different split")
	}
	_, test3, err := d.Split(0.2, 2)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Equal(test.X, test3.X) {
		t.Fatal("seeds 1 and 2 gave the same test set")
	}
	for _, f := range []float64{0, 1, -0.1, 2} {
		if _, _, err := d.Split(f, 1); !errors.Is(err, ErrSplit) {
			t.Fatalf("fraction %v: %v, want ErrSplit", f, err)
		}
	}
}

func TestDirichletShards(t *testing.T) {
	train, _, err := load(t).Split(0.2, 1)
	if err != nil {
		t.Fatal(err)
	}
	shards, err := train.DirichletShards(10, 0.5, 20, 7)
	if err != nil {
		t.Fatal(err)
	}
	if len(shards) != 10 || !sameMultiset(multiset(shards...), multiset(train)) {
		t.Fatal("shards lost or duplicated samples")
	}
	// Label skew: with alpha 0.5, a typical client has most of its samples in a few classes.
	// Measure it as the share of the client's two largest classes, against 0.2 for IID.
	skewed := 0
	for k, s := range shards {
		if s.Len() < 20 {
			t.Fatalf("client %d has %d samples, want >= 20", k, s.Len())
		}
		c := s.Counts()
		slices.Sort(c[:])
		if share := float64(c[Classes-1]+c[Classes-2]) / float64(s.Len()); share > 0.4 {
			skewed++
		}
		t.Logf("client %d: %d samples, %v", k, s.Len(), s.Counts())
	}
	if skewed < 5 {
		t.Fatalf("only %d of 10 clients have two classes above 40%% of their data", skewed)
	}
	again, err := train.DirichletShards(10, 0.5, 20, 7)
	if err != nil {
		t.Fatal(err)
	}
	for k := range shards {
		if !slices.Equal(shards[k].Y, again[k].Y) || !slices.Equal(shards[k].X, again[k].X) {
			t.Fatalf("client %d: same seed, different shard", k)
		}
	}
	// Near-IID for a large alpha: every client sees every class.
	iid, err := train.DirichletShards(10, 1000, 20, 7)
	if err != nil {
		t.Fatal(err)
	}
	for k, s := range iid {
		if c := s.Counts(); slices.Contains(c[:], 0) {
			t.Fatalf("alpha 1000, client %d misses a class: %v", k, c)
		}
	}
	for name, f := range map[string]func() ([]Dataset, error){
		"0 clients":      func() ([]Dataset, error) { return train.DirichletShards(0, 0.5, 1, 1) },
		"alpha 0":        func() ([]Dataset, error) { return train.DirichletShards(10, 0, 1, 1) },
		"alpha NaN":      func() ([]Dataset, error) { return train.DirichletShards(10, nan(), 1, 1) },
		"too big shards": func() ([]Dataset, error) { return train.DirichletShards(10, 0.5, train.Len(), 1) },
		"negative min":   func() ([]Dataset, error) { return train.DirichletShards(10, 0.5, -1, 1) },
	} {
		if _, err := f(); !errors.Is(err, ErrSplit) {
			t.Errorf("%s: %v, want ErrSplit", name, err)
		}
	}
}

func nan() float64 { z := 0.0; return z / z }

// TestGammaMoments checks the Gamma sampler behind the Dirichlet draws: mean a and variance a
// for Gamma(a, 1), on both branches (a < 1 and a >= 1).
func TestGammaMoments(t *testing.T) {
	for _, a := range []float64{0.3, 0.5, 1, 2.5, 10} {
		r := newRand(3, uint64(a*100))
		const n = 200000
		var sum, sq float64
		for range n {
			x := gamma(r, a)
			if !(x >= 0) {
				t.Fatalf("a=%v: draw %v", a, x)
			}
			sum += x
			sq += x * x
		}
		mean := sum / n
		v := sq/n - mean*mean
		// Standard error of the mean is sqrt(a/n); allow 5 of them. The variance gets 5%.
		if d := mean - a; d*d > 25*a/n {
			t.Errorf("a=%v: mean %v", a, mean)
		}
		if v < 0.95*a || v > 1.05*a {
			t.Errorf("a=%v: variance %v", a, v)
		}
	}
}
