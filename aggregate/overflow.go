package aggregate

import (
	"errors"
	"fmt"
	"math"
	"unsafe"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// blame turns a device's non-finite report (which knows the tensor and element, not the input)
// into an error naming the input that holds the NaN or Inf (names[i] names inputs[i]: a file
// changed after it was validated), or an overflow error when every input is finite there.
func (r *Round) blame(err error, inputs [][]device.Span, names []string) error {
	var nf *tensor.NonFiniteError
	if !errors.As(err, &nf) || nf.Source != "" {
		return err
	}
	t := r.plan.field(nf.Tensor)
	if t < 0 {
		return err
	}
	for k, in := range inputs {
		if v := in[t].Value(nf.Index); math.IsNaN(v) || math.IsInf(v, 0) {
			return &tensor.NonFiniteError{Source: names[k], Tensor: nf.Tensor, Index: nf.Index, Value: v}
		}
	}
	return r.overflow(err)
}

// overflow explains a non-finite result of finite inputs: the sum or its conversion to the
// output dtype overflowed.
func (r *Round) overflow(err error) error {
	var nf *tensor.NonFiniteError
	if !errors.As(err, &nf) || nf.Source != "" {
		return err
	}
	in := ""
	if t := r.plan.field(nf.Tensor); t >= 0 {
		in = " in " + r.plan.setDType(t).String()
	}
	return fmt.Errorf("%s: tensor %q element %d: %w: the result is %v%s (accumulate in f64 or choose a wider output dtype)",
		r.rule.Name(), nf.Tensor, nf.Index, ErrOverflow, nf.Value, in)
}

// CheckFinite returns an ErrOverflow error naming the tensor and element of the first NaN or
// Inf of v, a stage's output for piece p (what names the value: "model", "first moment"), or
// nil. Chunk stages call it on what they computed.
func CheckFinite(rule, what string, p *Piece, v []float32) error {
	if !anyNonFinite32(v) {
		return nil
	}
	for j, x := range v {
		if x != x || x-x != 0 {
			return fmt.Errorf("%s: tensor %q element %d: %w: the new %s is %v", rule, p.Name, p.Lo+j, ErrOverflow, what, x)
		}
	}
	return nil
}

func f32Bytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), 4*len(v))
}

func anyNonFinite32(v []float32) bool { return kernels.AnyNonFiniteF32(f32Bytes(v)) }

// explainFault names the input whose memory a job could not read (a mapped file truncated while
// the round reads it): one line naming the file, instead of a crash.
func (r *Round) explainFault(err error) error {
	var fe *device.FaultError
	if !errors.As(err, &fe) {
		return err
	}
	within := func(spans []device.Span) (string, int64, bool) {
		for t, sp := range spans {
			if len(sp.Data) == 0 {
				continue
			}
			base := uintptr(unsafe.Pointer(unsafe.SliceData(sp.Data)))
			if fe.Addr >= base && fe.Addr < base+uintptr(len(sp.Data)) {
				name := fmt.Sprint(t)
				if r.refLayout != nil && t < len(r.refLayout) {
					name = r.refLayout[t].Name
				}
				return name, int64(fe.Addr - base), true
			}
		}
		return "", 0, false
	}
	for _, c := range r.clients {
		if name, off, ok := within(c.spans); ok {
			return fmt.Errorf("%s: %w: byte %d of tensor %q could not be read: the file changed (was it truncated?) while the round read it",
				c.Source, device.ErrFault, off, name)
		}
	}
	if r.global != nil {
		if name, off, ok := within(r.global.spans); ok {
			return fmt.Errorf("%s: %w: byte %d of tensor %q could not be read: the file changed (was it truncated?) while the round read it",
				globalName(r.global.set), device.ErrFault, off, name)
		}
	}
	return err
}
