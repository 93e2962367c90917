package device

// HighLimbs reports, for a CPU exact accumulator of two-limb fields, how many elements have
// their high limb and how many adds were taken back and their block rescanned.
func HighLimbs(a Accumulator) (elems, rescans int) {
	for _, lf := range a.(*cpuExactAccumulator).limbs {
		e, r := lf.promoted()
		elems += e
		rescans += r
	}
	return elems, rescans
}
