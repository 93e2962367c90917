package secagg

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// Masks of mask-based secure aggregation (Bonawitz et al., 2017, Section 4). Client i adds to
// its quantised vector y_i, modulo 2^32,
//
//	PRG(b_i) + Σ_{j > i} PRG(s_ij) - Σ_{j < i} PRG(s_ij)
//
// where b_i is its own self-mask seed and s_ij = s_ji the seed it shares with client j. In the
// sum of all clients the pairwise masks cancel exactly; the server removes the self masks of
// the survivors from their revealed b_i, and the pairwise masks survivors added toward clients
// that dropped out from the reconstructed s_id. How seeds are agreed (Diffie–Hellman) and
// recovered (Shamir shares) is out of scope: seeds are inputs.
//
// PRG(seed) is the AES-256-CTR keystream under key seed with a zero initial counter block
// (Bonawitz et al. instantiate the PRG with AES in counter mode), read as little-endian u32s:
// mask element k is keystream bytes [4k, 4k+4). Element k of the mask covers element k of the
// flat coordinate space of the update, its tensors in name order. Counter mode is seekable, so
// the server removes masks block by block on all cores. Seeds must be fresh every round: a
// seed used twice masks two vectors with the same stream, and their difference leaks.

// Seed is a 32-byte mask seed (an AES-256 key).
type Seed [32]byte

// maskStream writes PRG(seed) elements [k0, k0+len(dst)) to dst.
func maskStream(seed *Seed, k0 int, dst []uint32) {
	block, err := aes.NewCipher(seed[:])
	if err != nil {
		panic(err) // a 32-byte key is always valid
	}
	var iv [16]byte
	binary.BigEndian.PutUint64(iv[8:], uint64(k0/4))
	ctr := cipher.NewCTR(block, iv[:])
	if skip := (k0 % 4) * 4; skip > 0 {
		var tmp [16]byte
		ctr.XORKeyStream(tmp[:skip], tmp[:skip])
	}
	clear(dst)
	b := u32Bytes(dst)
	ctr.XORKeyStream(b, b) // little-endian host: the bytes are the u32s
}

// u32View views b (4-byte aligned) as uint32s.
func u32View(b []byte) []uint32 {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Slice((*uint32)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/4)
}

func u32Bytes(v []uint32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), 4*len(v))
}

// maskTerm is one mask to add (sign +1) or subtract (-1).
type maskTerm struct {
	seed *Seed
	sign int
}

// maskBlock is the unit of work of masking: 256 KiB of u32, a cache-sized stream.
const maskBlock = 64 << 10

// applyMasks adds every term's mask to the flat vector made of tensors (u32 data, in the order
// given, which is the mask order), block by block on all cores.
func applyMasks(ctx context.Context, tensors [][]uint32, terms []maskTerm) error {
	if len(terms) == 0 {
		return nil
	}
	type block struct{ t, lo, hi, k0 int }
	var blocks []block
	k0 := 0
	for t, v := range tensors {
		for lo := 0; lo < len(v); lo += maskBlock {
			hi := min(lo+maskBlock, len(v))
			blocks = append(blocks, block{t, lo, hi, k0 + lo})
		}
		k0 += len(v)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(blocks)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := make([]uint32, maskBlock)
			neg := make([]uint32, maskBlock)
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(blocks) {
					return
				}
				b := blocks[i]
				addMasks(tensors[b.t][b.lo:b.hi], b.k0, terms, m, neg)
			}
		}()
	}
	wg.Wait()
	return ctx.Err()
}

// addMasks adds the terms' masks to dst, whose first element is element k0 of the flat space;
// m and neg are scratch of at least len(dst) elements. Added masks go through the modular-sum
// kernel; subtracted ones are summed apart and subtracted once.
func addMasks(dst []uint32, k0 int, terms []maskTerm, m, neg []uint32) {
	mb, nb := m[:len(dst)], neg[:len(dst)]
	clear(nb)
	subtract := false
	var src [1][]byte
	for _, term := range terms {
		maskStream(term.seed, k0, mb)
		src[0] = u32Bytes(mb)
		if term.sign > 0 {
			kernels.ModSumU32(dst, src[:])
		} else {
			kernels.ModSumU32(nb, src[:])
			subtract = true
		}
	}
	if subtract {
		for j, v := range nb {
			dst[j] -= v
		}
	}
}

// Client is one client's masking: its ID, its self-mask seed b_i (nil: no self mask, as
// in the protocol's variant without dropout protection for late clients) and the seeds s_ij it
// shares with the other clients (by their IDs).
type Client struct {
	ID    int
	Self  *Seed
	Pairs map[int]Seed
}

// Mask adds the client's masks to its quantised update in place (u32 tensors, e.g. from
// SecAggQuantizer.QuantizeSet) and records its ID in the metadata (ClientKey).
func (c *Client) Mask(ctx context.Context, u *tensor.Set) error {
	vs, err := u32Tensors(u)
	if err != nil {
		return err
	}
	var terms []maskTerm
	if c.Self != nil {
		terms = append(terms, maskTerm{c.Self, +1})
	}
	for _, j := range slices.Sorted(maps.Keys(c.Pairs)) {
		if j == c.ID {
			return fmt.Errorf("%w: client %d shares a seed with itself", aggregate.ErrOption, c.ID)
		}
		s := c.Pairs[j]
		sign := +1
		if j < c.ID {
			sign = -1
		}
		terms = append(terms, maskTerm{&s, sign})
	}
	if err := applyMasks(ctx, vs, terms); err != nil {
		return err
	}
	if u.Metadata == nil {
		u.Metadata = map[string]string{}
	}
	u.Metadata[ClientKey] = strconv.Itoa(c.ID)
	return nil
}

// u32Tensors returns the u32 views of s's tensors in name order (the mask order).
func u32Tensors(s *tensor.Set) ([][]uint32, error) {
	var vs [][]uint32
	for _, t := range sortedByName(s) {
		if t.DType != tensor.U32 {
			return nil, fmt.Errorf("%s: %w: tensor %q is %s: masks apply to u32 (quantised) tensors", source(s), tensor.ErrDType, t.Name, t.DType)
		}
		v, err := t.U32()
		if err != nil {
			return nil, err
		}
		vs = append(vs, v)
	}
	return vs, nil
}

// Recovery is what the server learns in the unmasking round: the IDs of every client that
// was sent masks, the self-mask seeds of the clients whose updates arrived (the survivors; every
// survivor needs one unless NoSelfMasks), and, for each client that dropped out, the seeds it
// shared with the survivors (reconstructed from shares), by dropped ID then survivor ID.
type Recovery struct {
	Clients     []int
	Self        map[int]Seed
	Dropped     map[int]map[int]Seed
	NoSelfMasks bool
}

// removal lists the masks the server subtracts from the sum of the survivors' vectors.
func (r *Recovery) removal(survivors []int) ([]maskTerm, []int, error) {
	all := map[int]bool{}
	for _, id := range r.Clients {
		if all[id] {
			return nil, nil, fmt.Errorf("%w: client %d listed twice", aggregate.ErrOption, id)
		}
		all[id] = true
	}
	alive := map[int]bool{}
	var terms []maskTerm
	for _, i := range survivors {
		if !all[i] {
			return nil, nil, fmt.Errorf("%w: client %d sent an update but was not sent masks", aggregate.ErrOption, i)
		}
		alive[i] = true
		if r.NoSelfMasks {
			continue
		}
		s, ok := r.Self[i]
		if !ok {
			return nil, nil, fmt.Errorf("%w: no self-mask seed for surviving client %d", aggregate.ErrOption, i)
		}
		terms = append(terms, maskTerm{&s, -1})
	}
	var dropped []int
	for _, d := range slices.Sorted(slices.Values(r.Clients)) {
		if alive[d] {
			continue
		}
		dropped = append(dropped, d)
		for _, i := range survivors {
			s, ok := r.Dropped[d][i]
			if !ok {
				return nil, nil, fmt.Errorf("%w: no seed shared by dropped client %d and survivor %d", aggregate.ErrOption, d, i)
			}
			// Survivor i added PRG(s_id) if d > i and subtracted it if d < i: undo that.
			sign := -1
			if d < i {
				sign = +1
			}
			terms = append(terms, maskTerm{&s, sign})
		}
	}
	return terms, dropped, nil
}
