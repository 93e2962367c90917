package cuda

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The PTX must be regenerated (`make ptx`) whenever a source changes: every PTX file records the
// SHA-256 of each source it was made from.
func TestPTXMatchesSources(t *testing.T) {
	cus, err := filepath.Glob("*.cu")
	if err != nil {
		t.Fatal(err)
	}
	var mods []string
	for _, cu := range cus {
		mods = append(mods, strings.TrimSuffix(cu, ".cu"))
	}
	slices.Sort(mods)
	want := slices.Sorted(slices.Values(Modules))
	if !slices.Equal(mods, want) {
		t.Fatalf("sources %v, Modules %v: keep them in step", mods, want)
	}
	for _, m := range Modules {
		for _, a := range Arches {
			ptx, err := PTX(m, a)
			if err != nil {
				t.Fatal(err)
			}
			srcs := sourceHashes(t, ptx)
			if _, ok := srcs[m+".cu"]; !ok {
				t.Errorf("%s compute_%d: no hash of %s.cu in its header", m, a, m)
			}
			for name, sum := range srcs {
				b, err := os.ReadFile(name)
				if err != nil {
					t.Fatal(err)
				}
				h := sha256.Sum256(b)
				if hex.EncodeToString(h[:]) != sum {
					t.Errorf("ptx/%s.compute_%d.ptx is stale: %s changed since it was generated; run `make ptx`", m, a, name)
				}
			}
			if !bytes.Contains(ptx, []byte(".target sm_"+strconv.Itoa(a))) {
				t.Errorf("%s compute_%d: PTX targets another architecture", m, a)
			}
		}
	}
}

func sourceHashes(t *testing.T, ptx []byte) map[string]string {
	t.Helper()
	re := regexp.MustCompile(`^// source (\S+) sha256 ([0-9a-f]{64})$`)
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(ptx))
	for sc.Scan() {
		m := re.FindStringSubmatch(sc.Text())
		if m == nil {
			if len(out) > 0 {
				break // the header is over
			}
			continue
		}
		out[m[1]] = m[2]
	}
	return out
}

// Every kernel a source declares is an entry of both PTX files of its module.
func TestPTXHasEveryEntry(t *testing.T) {
	decl := regexp.MustCompile(`(?m)^WA_ENTRY void (?:__launch_bounds__\([^)]*\)\s*)?(\w+)\(|^WA_(ACC|SELECT_REG)\((\w+)`)
	for _, m := range Modules {
		src, err := os.ReadFile(m + ".cu")
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, d := range decl.FindAllSubmatch(src, -1) {
			switch {
			case len(d[1]) > 0:
				names = append(names, string(d[1]))
			case string(d[2]) == "ACC":
				names = append(names, string(d[3]))
			default:
				names = append(names, "wa_select_r"+string(d[3]))
			}
		}
		if len(names) == 0 {
			t.Fatalf("%s.cu declares no kernel", m)
		}
		for _, a := range Arches {
			ptx, _ := PTX(m, a)
			for _, n := range names {
				if !bytes.Contains(ptx, []byte(".entry "+n+"(")) {
					t.Errorf("%s compute_%d: no entry %s", m, a, n)
				}
			}
		}
	}
}

func TestArch(t *testing.T) {
	for _, tc := range []struct{ major, minor, want int }{{7, 5, 0}, {8, 0, 80}, {8, 6, 80}, {8, 9, 80}, {9, 0, 90}, {10, 0, 90}, {12, 0, 90}} {
		if got := Arch(tc.major, tc.minor); got != tc.want {
			t.Errorf("Arch(%d, %d) = %d, want %d", tc.major, tc.minor, got, tc.want)
		}
	}
	if _, err := PTX("acc", 75); err == nil {
		t.Error("PTX for compute_75: want an error")
	}
}
