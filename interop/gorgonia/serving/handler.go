package serving

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"

	"github.com/wattagg/wattagg/interop/gorgonia/digits"
)

// PredictRequest is the body of POST /predict: rows of 64 pixels, row by row of the 8x8
// image, each 0..16 as in the UCI data (fractions allowed).
type PredictRequest struct {
	Inputs [][]float64 `json:"inputs"`
}

// PredictResponse is the answer: per row the 10 logits and the predicted digit, and the model
// that computed them.
type PredictResponse struct {
	Logits  [][]float32 `json:"logits"`
	Classes []int       `json:"classes"`
	Model   ModelInfo   `json:"model"`
}

type errorResponse struct {
	Error string `json:"error"`
}

// Handler serves
//
//	POST /predict   PredictRequest -> PredictResponse (400 bad input, 413 too large, 503 no model)
//	GET  /healthz   the current ModelInfo (503 while none is loaded)
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /predict", s.predict)
	mux.HandleFunc("GET /healthz", s.health)
	return mux
}

func (s *Service) health(w http.ResponseWriter, _ *http.Request) {
	info, err := s.Current()
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, errorResponse{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (s *Service) predict(w http.ResponseWriter, r *http.Request) {
	var req PredictRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, s.maxBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
			writeJSON(w, http.StatusRequestEntityTooLarge, errorResponse{fmt.Sprintf("body over %d bytes", mbe.Limit)})
			return
		}
		writeJSON(w, http.StatusBadRequest, errorResponse{"body is not a JSON PredictRequest: " + err.Error()})
		return
	}
	if _, err := dec.Token(); err != io.EOF {
		writeJSON(w, http.StatusBadRequest, errorResponse{"body has data after the JSON object"})
		return
	}
	x, err := s.features(req.Inputs)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorResponse{err.Error()})
		return
	}
	logits, classes, info, err := s.Predict(x)
	switch {
	case errors.Is(err, ErrNoModel):
		writeJSON(w, http.StatusServiceUnavailable, errorResponse{err.Error()})
		return
	case err != nil:
		writeJSON(w, http.StatusInternalServerError, errorResponse{err.Error()})
		return
	}
	// JSON has no NaN or Inf: a model whose logits overflow cannot answer, and says so
	// rather than sending a truncated body.
	for i, v := range logits {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			writeJSON(w, http.StatusInternalServerError, errorResponse{fmt.Sprintf(
				"model generation %d computed a non-finite logit (%v, row %d, class %d): it cannot answer", info.Generation, v, i/digits.Classes, i%digits.Classes)})
			return
		}
	}
	resp := PredictResponse{Logits: make([][]float32, len(classes)), Classes: classes, Model: info}
	for i := range resp.Logits {
		resp.Logits[i] = logits[i*digits.Classes : (i+1)*digits.Classes]
	}
	writeJSON(w, http.StatusOK, resp)
}

// features checks the rows and scales the pixels to the model's [0, 1] features.
func (s *Service) features(rows [][]float64) ([]float32, error) {
	if len(rows) == 0 {
		return nil, errors.New("no inputs")
	}
	if len(rows) > s.maxRows {
		return nil, fmt.Errorf("%d rows, at most %d per request", len(rows), s.maxRows)
	}
	x := make([]float32, 0, len(rows)*digits.Features)
	for i, row := range rows {
		if len(row) != digits.Features {
			return nil, fmt.Errorf("row %d has %d values, want %d", i, len(row), digits.Features)
		}
		for j, v := range row {
			if !(v >= 0 && v <= digits.MaxPixel) {
				return nil, fmt.Errorf("row %d pixel %d is %v, want 0..%d", i, j, v, digits.MaxPixel)
			}
			x = append(x, float32(v/digits.MaxPixel))
		}
	}
	return x, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client may be gone; nothing else to tell it
}
