package dp

import (
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"math/rand/v2"
)

// Gaussian noise for the private means.
//
// Generator: ChaCha8 (math/rand/v2), a cryptographically secure generator, keyed every round
// by 32 bytes from crypto/rand. The round's master stream first gives the noise of the clipped
// count (adaptive clipping), then one 32-byte key per output chunk, in chunk order; each chunk's
// elements draw their normals from a ChaCha8 stream under that chunk's key, piece by piece,
// element by element. So the noise of every element is fresh (never shared by two elements,
// tensors or rounds), chunks are noised in parallel in any order, and the result does not
// depend on the number of cores.
//
// Normals come from Box–Muller on two 53-bit uniforms, u1 in (0, 1] and u2 in [0, 1):
// z0 = √(-2 ln u1)·cos(2π u2), z1 = √(-2 ln u1)·sin(2π u2). Unlike rejection methods (the
// ziggurat of math/rand), it consumes the same number of random words for every sample, so how
// far the stream advanced says nothing about the values drawn. The 53-bit uniforms bound |z|
// by 8.57 (the normal mass beyond it is below 1e-17).
//
// The noise is added in float64 and the result rounded to f32. Floating-point noise is not an
// exact Gaussian (Mironov, 2012, "On significance of the least significant bits for
// differential privacy"): the rounding to f32 hides the low bits an attacker could exploit, but
// it is not a proof; a discrete Gaussian is the cure if that attack matters.

// insecureSeedDomain separates the seeds derived from WithInsecureNoiseSeed from anything else.
const insecureSeedDomain = "wattagg/dp/insecure-noise-seed/v1"

// roundSeed returns the key of a round's master stream: 32 bytes from crypto/rand, or, with an
// insecure seed, SHA-256 of the seed and the round number (so that no two rounds share noise
// even then).
func roundSeed(insecure *uint64, round int) [32]byte {
	var key [32]byte
	if insecure == nil {
		crand.Read(key[:]) // never fails (Go 1.24+: it crashes the program rather than return weak bytes)
		return key
	}
	h := sha256.New()
	h.Write([]byte(insecureSeedDomain))
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], *insecure)
	binary.LittleEndian.PutUint64(b[8:], uint64(round))
	h.Write(b[:])
	copy(key[:], h.Sum(nil))
	return key
}

// normals is a stream of standard normals from a ChaCha8 stream.
type normals struct {
	g     *rand.ChaCha8
	spare float64
	has   bool
}

func newNormals(key [32]byte) *normals { return &normals{g: rand.NewChaCha8(key)} }

func (n *normals) next() float64 {
	if n.has {
		n.has = false
		return n.spare
	}
	z0, z1 := boxMuller(n.g.Uint64(), n.g.Uint64())
	n.spare, n.has = z1, true
	return z0
}

// boxMuller maps two uniform 64-bit words to two independent standard normals.
func boxMuller(a, b uint64) (z0, z1 float64) {
	u1 := float64(a>>11+1) * 0x1p-53 // (0, 1]: log is finite
	u2 := float64(b>>11) * 0x1p-53   // [0, 1)
	r := math.Sqrt(-2 * math.Log(u1))
	s, c := math.Sincos(2 * math.Pi * u2)
	return r * c, r * s
}

// addNoise adds sigma·z to every element of x, in float64, rounded to f32.
func (n *normals) addNoise(x []float32, sigma float64) {
	for j, v := range x {
		x[j] = float32(float64(v) + sigma*n.next())
	}
}

// chunkKeys draws one key per chunk from the master stream.
func chunkKeys(master *rand.ChaCha8, chunks int) [][32]byte {
	keys := make([][32]byte, chunks)
	for c := range keys {
		master.Read(keys[c][:])
	}
	return keys
}
