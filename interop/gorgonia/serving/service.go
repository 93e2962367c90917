package serving

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/wattagg/wattagg/interop/gorgonia/mlp"
)

// ErrOption is returned for an option out of range.
var ErrOption = errors.New("serving: invalid option")

// ErrNoModel is returned while no model has been loaded.
var ErrNoModel = errors.New("serving: no model loaded")

// ModelInfo describes the model a response was computed with.
type ModelInfo struct {
	// Generation counts successful loads from 1; a response names the generation it used.
	Generation uint64    `json:"generation"`
	Source     string    `json:"source"`
	LoadedAt   time.Time `json:"loaded_at"`
	Hidden     int       `json:"hidden"`
}

// loaded is a model with a reference count: one reference for being current, one per request
// using it. The model is closed (its file unmapped) when the count reaches zero, which can
// happen only after it stopped being current.
type loaded struct {
	model *mlp.Model
	info  ModelInfo
	// file is what os.Stat said of the source file just before it was opened (nil for a
	// model installed from memory): Watch compares the file at the path against it.
	file os.FileInfo
	refs atomic.Int64
}

// Service holds the current model and serves predictions from it (see Handler).
type Service struct {
	cur      atomic.Pointer[loaded]
	gen      atomic.Uint64
	maxRows  int
	maxBytes int64
	// onClose, when set (tests), is called after a retired model is closed.
	onClose func(ModelInfo, error)
}

// Option configures a Service.
type Option func(*Service) error

// WithMaxRows bounds the rows of one request (default 4096).
func WithMaxRows(n int) Option {
	return func(s *Service) error {
		if n < 1 || n > 1<<20 {
			return fmt.Errorf("%w: max rows %d not in 1..2^20", ErrOption, n)
		}
		s.maxRows = n
		return nil
	}
}

// WithMaxBodyBytes bounds the size of one request body (default 4 MiB).
func WithMaxBodyBytes(n int64) Option {
	return func(s *Service) error {
		if n < 1024 || n > 1<<30 {
			return fmt.Errorf("%w: max body %d bytes not in 1 KiB..1 GiB", ErrOption, n)
		}
		s.maxBytes = n
		return nil
	}
}

// New returns a Service with no model: requests get 503 until Reload or Install succeeds.
func New(opts ...Option) (*Service, error) {
	s := &Service{maxRows: 4096, maxBytes: 4 << 20}
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Reload maps the .safetensors file at path and makes it the current model. On error the
// current model stays. Files replaced by rename (as wattagg writes them) can be reloaded
// while the old mapping is in use.
func (s *Service) Reload(path string) (ModelInfo, error) {
	// Stat before opening: a file renamed over path in between is newer than the one recorded,
	// so Watch loads it again rather than missing it. (A failed stat leaves file nil: mlp.Open
	// says what is wrong with the path.)
	fi, _ := os.Stat(path)
	m, err := mlp.Open(path)
	if err != nil {
		return ModelInfo{}, err
	}
	return s.install(m, path, fi), nil
}

// Install makes m the current model and takes ownership of it: m is closed once it has been
// replaced and its last request has finished.
func (s *Service) Install(m *mlp.Model, source string) ModelInfo {
	return s.install(m, source, nil)
}

func (s *Service) install(m *mlp.Model, source string, file os.FileInfo) ModelInfo {
	l := &loaded{model: m, file: file, info: ModelInfo{
		Generation: s.gen.Add(1), Source: source, LoadedAt: time.Now().UTC(), Hidden: m.Hidden(),
	}}
	l.refs.Store(1) // the reference of being current
	if old := s.cur.Swap(l); old != nil {
		s.release(old)
	}
	return l.info
}

// Close retires the current model; requests still running finish with it.
func (s *Service) Close() {
	if old := s.cur.Swap(nil); old != nil {
		s.release(old)
	}
}

// Current describes the current model.
func (s *Service) Current() (ModelInfo, error) {
	l := s.acquire()
	if l == nil {
		return ModelInfo{}, ErrNoModel
	}
	defer s.release(l)
	return l.info, nil
}

// Predict runs the current model on rows of features scaled to [0, 1] (see mlp.Model.Predict)
// and says which model answered.
func (s *Service) Predict(x []float32) (logits []float32, classes []int, info ModelInfo, err error) {
	l := s.acquire()
	if l == nil {
		return nil, nil, ModelInfo{}, ErrNoModel
	}
	defer s.release(l)
	logits, classes, err = l.model.Predict(x)
	return logits, classes, l.info, err
}

// acquire returns the current model with a reference taken, or nil. A model whose count has
// reached zero is being closed and can no longer be current (its current reference was
// dropped after the swap), so the loop reads the pointer again and finds its successor.
func (s *Service) acquire() *loaded {
	for {
		l := s.cur.Load()
		if l == nil {
			return nil
		}
		n := l.refs.Load()
		if n > 0 && l.refs.CompareAndSwap(n, n+1) {
			return l
		}
	}
}

func (s *Service) release(l *loaded) {
	if l.refs.Add(-1) == 0 {
		err := l.model.Close()
		if s.onClose != nil {
			s.onClose(l.info, err)
		}
	}
}
