package sysinfo

import (
	"cmp"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Plausible cache sizes: no cache is smaller than 1 KiB, and the largest today (AMD's 3D
// V-Cache parts) hold about 1 GiB of L3. A sysfs or cpuid figure outside is misreported.
const (
	minCacheBytes = 1 << 10
	maxCacheBytes = 4 << 30
)

func readTrim(path string) (string, error) {
	b, err := os.ReadFile(path)
	return strings.TrimSpace(string(b)), err
}

// sysfsCores counts the physical cores of cpus from each CPU's topology/core_cpus_list (Linux
// 5.7+) or thread_siblings_list: the distinct sets of hardware threads they belong to. It
// returns 0 and why when a CPU has neither.
func sysfsCores(cpuDir string, cpus []int) (int, string) {
	cores := map[string]bool{}
	var missing []int
	for _, c := range cpus {
		topo := filepath.Join(cpuDir, fmt.Sprintf("cpu%d", c), "topology")
		s, err := readTrim(filepath.Join(topo, "core_cpus_list"))
		if err != nil {
			s, err = readTrim(filepath.Join(topo, "thread_siblings_list"))
		}
		sib, perr := ParseCPUList(s)
		if err != nil || perr != nil || !slices.Contains(sib, c) {
			missing = append(missing, c)
			continue
		}
		cores[FormatCPUList(sib)] = true
	}
	if len(missing) > 0 {
		return 0, fmt.Sprintf("sysfs gives no readable topology/core_cpus_list or thread_siblings_list for cpus %s", FormatCPUList(missing))
	}
	if len(cores) == 0 {
		return 0, "no CPU"
	}
	return len(cores), ""
}

// ParseCacheSize reads a sysfs cache size: a number of bytes with an optional K, M or G suffix
// (the kernel writes "32K").
func ParseCacheSize(s string) (int64, error) {
	mult, num := int64(1), s
	if n := len(s); n > 0 {
		if k := strings.IndexByte("KMG", s[n-1]); k >= 0 {
			mult, num = int64(1)<<(10*(k+1)), s[:n-1]
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("cache size %q: want bytes, or a number with K, M or G", s)
	}
	return n * mult, nil
}

type cacheInstance struct {
	level  int
	typ    string
	size   int64
	shared []int
}

// sysfsCaches reads cpuN/cache/index*/{level,type,size,shared_cpu_list} for each of cpus and
// returns the caches that serve them, each instance once (an L3 shared by 16 CPUs is one
// instance). Entries with a missing, unreadable or implausible file are left out, and the
// notes say which.
func sysfsCaches(cpuDir string, cpus []int) ([]Cache, []string) {
	instances := map[string]cacheInstance{}
	problems := map[string][]int{}
	var noDir []int
	for _, c := range cpus {
		if !readCPUCaches(cpuDir, c, instances, problems) {
			noDir = append(noDir, c)
		}
	}
	notes := cacheNotes(noDir, len(cpus), problems)
	if len(instances) == 0 {
		if len(noDir) == len(cpus) {
			notes = nil // said once by Read
		}
		return nil, notes
	}
	return groupCaches(instances), notes
}

// readCPUCaches adds the cache entries of cpu to instances, keyed by level, type and sharing
// CPUs so that each instance is kept once, and the CPU to problems under each entry it leaves
// out; false if the CPU has no readable cache directory.
func readCPUCaches(cpuDir string, cpu int, instances map[string]cacheInstance, problems map[string][]int) bool {
	dir := filepath.Join(cpuDir, fmt.Sprintf("cpu%d", cpu), "cache")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "index") {
			continue
		}
		inst, problem := readCacheIndex(filepath.Join(dir, e.Name()), cpu)
		if problem != "" {
			k := e.Name() + ": " + problem
			problems[k] = append(problems[k], cpu)
			continue
		}
		key := fmt.Sprintf("%d/%s/%s", inst.level, inst.typ, FormatCPUList(inst.shared))
		if _, ok := instances[key]; !ok {
			instances[key] = inst
		}
	}
	return true
}

// cacheNotes says which of ncpus CPUs have no cache directory (unless none or all) and, in
// order, which entries were left out for which CPUs.
func cacheNotes(noDir []int, ncpus int, problems map[string][]int) []string {
	var notes []string
	if len(noDir) > 0 && len(noDir) < ncpus {
		notes = append(notes, fmt.Sprintf("sysfs gives no cache directory for cpus %s: their caches are left out", FormatCPUList(noDir)))
	}
	for _, k := range slices.Sorted(maps.Keys(problems)) {
		notes = append(notes, fmt.Sprintf("sysfs cache %s (cpus %s): left out", k, FormatCPUList(problems[k])))
	}
	return notes
}

// groupCaches counts the instances of each level, type, size and number of sharing CPUs, in
// that order.
func groupCaches(instances map[string]cacheInstance) []Cache {
	type group struct {
		level    int
		typ      string
		size     int64
		sharedBy int
	}
	counts := map[group]int{}
	for _, in := range instances {
		counts[group{in.level, in.typ, in.size, len(in.shared)}]++
	}
	var caches []Cache
	for g, n := range counts {
		caches = append(caches, Cache{Level: g.level, Type: g.typ, Size: g.size, Instances: n, SharedBy: g.sharedBy})
	}
	slices.SortFunc(caches, func(a, b Cache) int {
		return cmp.Or(cmp.Compare(a.Level, b.Level), cmp.Compare(a.Type, b.Type), cmp.Compare(a.Size, b.Size), cmp.Compare(a.SharedBy, b.SharedBy))
	})
	return caches
}

// readCacheIndex reads one cache entry of cpu, or says what is wrong with it.
func readCacheIndex(dir string, cpu int) (cacheInstance, string) {
	var in cacheInstance
	s, err := readTrim(filepath.Join(dir, "level"))
	if err != nil {
		return in, "no readable level"
	}
	if in.level, err = strconv.Atoi(s); err != nil || in.level < 1 || in.level > 4 {
		return in, fmt.Sprintf("level %q", s)
	}
	if in.typ, err = readTrim(filepath.Join(dir, "type")); err != nil {
		return in, "no readable type"
	}
	switch in.typ {
	case "Data", "Instruction", "Unified":
	default:
		return in, fmt.Sprintf("type %q", in.typ)
	}
	if s, err = readTrim(filepath.Join(dir, "size")); err != nil {
		return in, "no readable size"
	}
	in.size, err = ParseCacheSize(s)
	if err != nil || in.size < minCacheBytes || in.size > maxCacheBytes {
		return in, fmt.Sprintf("size %q is not a plausible cache size", s)
	}
	if s, err = readTrim(filepath.Join(dir, "shared_cpu_list")); err != nil {
		return in, "no readable shared_cpu_list"
	}
	if in.shared, err = ParseCPUList(s); err != nil {
		return in, fmt.Sprintf("shared_cpu_list %q is not a CPU list", s)
	}
	if !slices.Contains(in.shared, cpu) {
		return in, fmt.Sprintf("shared_cpu_list %q does not hold the CPU itself", s)
	}
	return in, ""
}
