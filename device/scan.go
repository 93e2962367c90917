package device

// scanBlockElems is the unit of the parallel finiteness scan (CPU.CheckFinite).
const scanBlockElems = 256 << 10
