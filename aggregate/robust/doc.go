// Package robust holds the Byzantine-robust aggregation rules: the coordinate-wise median and
// trimmed mean (Yin et al., 2018), Krum and Multi-Krum (Blanchard et al., 2017), Bulyan (El
// Mhamdi et al., 2018), the geometric median by smoothed Weiszfeld (RFA, Pillutla et al., 2022),
// centered clipping (Karimireddy et al., 2021), and norm clipping and zeroing.
//
// Each rule is its arithmetic only; aggregate's round engine validates, places, meters, writes
// and reports. Rules that need every update at once (all but fixed-bound clipping, which is a
// sum) work on the updates where they are — mapped files, the spool of an incremental round,
// memory — coordinate block by coordinate block, through the device's Robust operations.
//
// A client whose update holds a NaN or Inf is excluded, not an error: these rules exist to
// survive Byzantine clients. Rather than a separate scan, each rule detects such clients from a
// sum of squares its first pass computes anyway (the norms that coordinate-wise jobs take beside
// the result, the Gram matrix's diagonal, the distances of centered clipping): for f32, f16,
// bf16 and i8 values a sum of squares in f64 is finite exactly when every value is.
package robust
