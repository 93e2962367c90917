// Package client is the Go client of a wattagg aggregation server (package server): it pushes
// a client's update for a round (a .safetensors file or a tensor.Set), pulls a round's model
// into a file atomically, and reads the rounds' status; with the admin token it closes and
// opens rounds.
//
//	c, err := client.New("https://agg.example:8443", client.WithToken(token))
//	ack, err := c.PushFile(ctx, round, "update.safetensors", client.WithWeight(1200))
//	err = c.Pull(ctx, round, "global.safetensors", client.WithProgress(fn))
//
// New and each call take the one Option type: New the connection's (WithToken, WithHTTPClient,
// WithTLS), the pushes and Pull a call's (WithWeight, WithProgress). An option given where it
// does not apply, such as WithWeight to Pull, is an ErrOption error naming it.
//
// Errors from the server are *Error values; errors.Is matches them to ErrUnauthorized,
// ErrForbidden, ErrNotFound, ErrConflict, ErrTooLarge, ErrBadUpdate, ErrStalled and ErrBusy.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/wattagg/wattagg/aggregate/secagg"
	"github.com/wattagg/wattagg/internal/durable"
	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// Sentinels that a server's *Error matches with errors.Is, by HTTP status.
var (
	ErrUnauthorized = errors.New("unauthorized")          // 401: no token, or not a valid one
	ErrForbidden    = errors.New("forbidden")             // 403
	ErrNotFound     = errors.New("not found")             // 404: unknown round, no model yet
	ErrConflict     = errors.New("conflict")              // 409: round closed, a different update already sent
	ErrTooLarge     = errors.New("update too large")      // 413
	ErrBadUpdate    = errors.New("update refused")        // 400: layout, NaN/Inf, truncated, bad header
	ErrStalled      = errors.New("stalled")               // 408
	ErrBusy         = errors.New("server busy")           // 503: retry after a moment
	ErrOption       = errors.New("invalid client option") // a bad option or argument
)

// Error is an error answer of the server.
type Error struct {
	StatusCode int
	Code       string // the server's reason word: layout, non_finite, conflict, ...
	Message    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("server: %d %s: %s", e.StatusCode, http.StatusText(e.StatusCode), e.Message)
}

// Is matches the sentinel of e's status.
func (e *Error) Is(target error) bool {
	switch e.StatusCode {
	case http.StatusUnauthorized:
		return target == ErrUnauthorized
	case http.StatusForbidden:
		return target == ErrForbidden
	case http.StatusNotFound:
		return target == ErrNotFound
	case http.StatusConflict:
		return target == ErrConflict
	case http.StatusRequestEntityTooLarge:
		return target == ErrTooLarge
	case http.StatusBadRequest, http.StatusLengthRequired:
		return target == ErrBadUpdate
	case http.StatusRequestTimeout:
		return target == ErrStalled
	case http.StatusServiceUnavailable:
		return target == ErrBusy
	}
	return false
}

// Client talks to one server.
type Client struct {
	base  *url.URL
	token string
	hc    *http.Client
}

func defaultTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ExpectContinueTimeout = defaultExpectContinue
	return t
}

// New returns a client of the server at base ("https://host:port").
func New(base string, opts ...Option) (*Client, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%w: server %q: want http://host:port or https://host:port", ErrOption, base)
	}
	o, err := applyOptions(forNew, opts)
	if err != nil {
		return nil, err
	}
	c := &Client{base: u, token: o.token, hc: o.hc}
	if c.hc == nil {
		c.hc = &http.Client{Transport: defaultTransport()}
	}
	return c, nil
}

func (c *Client) url(format string, args ...any) string {
	u := *c.base
	u.Path = strings.TrimSuffix(u.Path, "/") + fmt.Sprintf(format, args...)
	return u.String()
}

func (c *Client) request(ctx context.Context, method, u string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// do sends req and decodes a JSON answer into out (nil: discard), or returns the server's
// *Error.
func (c *Client) do(req *http.Request, out any) error {
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return errorOf(resp)
	}
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// errorOf reads an error answer.
func errorOf(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e api.Error
	if json.Unmarshal(b, &e) != nil || e.Error == "" {
		e.Error = strings.TrimSpace(string(b))
	}
	return &Error{StatusCode: resp.StatusCode, Code: e.Code, Message: e.Error}
}

// PushFile sends the .safetensors file at path as this client's update for round. The answer
// comes once the server has made the update durable; a retry of the same file gets the same
// acknowledgement (Ack.Retry set).
func (c *Client) PushFile(ctx context.Context, round int, path string, opts ...Option) (*api.Ack, error) {
	o, err := applyOptions(forPushFile, opts)
	if err != nil {
		return nil, err
	}
	return c.pushFile(ctx, round, path, o)
}

func (c *Client) pushFile(ctx context.Context, round int, path string, o *options) (*api.Ack, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return c.push(ctx, round, f, fi.Size(), o)
}

// Push sends size bytes of a .safetensors file read from r as this client's update for round.
func (c *Client) Push(ctx context.Context, round int, r io.Reader, size int64, opts ...Option) (*api.Ack, error) {
	o, err := applyOptions(forPush, opts)
	if err != nil {
		return nil, err
	}
	return c.push(ctx, round, r, size, o)
}

func (c *Client) push(ctx context.Context, round int, r io.Reader, size int64, p *options) (*api.Ack, error) {
	if size < 0 {
		return nil, fmt.Errorf("%w: size %d", ErrOption, size)
	}
	body := io.Reader(io.NopCloser(r)) // the transport must not close the caller's reader
	if p.progress != nil {
		body = &progressReader{r: r, total: size, fn: p.progress}
	}
	req, err := c.request(ctx, http.MethodPut, c.url("/v1/rounds/%d/update", round), body)
	if err != nil {
		return nil, err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Expect", "100-continue")
	if p.weight != nil {
		req.Header.Set(api.WeightHeader, strconv.FormatFloat(*p.weight, 'g', -1, 64))
	}
	var ack api.Ack
	if err := c.do(req, &ack); err != nil {
		return nil, err
	}
	return &ack, nil
}

// PushSet sends s as this client's update for round (written to a temporary .safetensors file
// first, so that its length is known).
func (c *Client) PushSet(ctx context.Context, round int, s *tensor.Set, opts ...Option) (*api.Ack, error) {
	o, err := applyOptions(forPushSet, opts)
	if err != nil {
		return nil, err
	}
	if s == nil {
		return nil, fmt.Errorf("%w: nil set", ErrOption)
	}
	dir, err := os.MkdirTemp("", "wattagg-push-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "update.safetensors")
	if err := safetensors.WriteFile(path, s, safetensors.WithDirectIO(false)); err != nil {
		return nil, err
	}
	return c.pushFile(ctx, round, path, o)
}

// Pull downloads round's model (the latest model when round is 0) into path atomically: into
// a temporary file beside it, checked to be a valid .safetensors file, synced, renamed over
// path, and the directory synced. A failed pull leaves path as it was.
func (c *Client) Pull(ctx context.Context, round int, path string, opts ...Option) error {
	p, err := applyOptions(forPull, opts)
	if err != nil {
		return err
	}
	resp, err := c.getModel(ctx, round)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return saveModel(path, resp, p.progress)
}

// getModel requests round's model (the latest when round is 0) and returns the server's answer,
// or its *Error.
func (c *Client) getModel(ctx context.Context, round int) (*http.Response, error) {
	u := c.url("/v1/model")
	if round > 0 {
		u = c.url("/v1/rounds/%d/model", round)
	}
	req, err := c.request(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, errorOf(resp)
	}
	return resp, nil
}

// saveModel writes the model of resp into a temporary file beside path, renames it over path
// and syncs the directory; it removes the temporary file if anything fails.
func saveModel(path string, resp *http.Response, progress func(done, total int64)) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".pull-*")
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := receiveModel(tmp, resp, progress); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	ok = true
	return durable.SyncDir(dir)
}

// receiveModel copies the model of resp into tmp, reporting to progress (if set), checks that
// all of it came, syncs and closes tmp, and checks that it is a valid .safetensors file.
func receiveModel(tmp *os.File, resp *http.Response, progress func(done, total int64)) error {
	var body io.Reader = resp.Body
	if progress != nil {
		body = &progressReader{r: resp.Body, total: resp.ContentLength, fn: progress}
	}
	n, err := io.Copy(tmp, body)
	if err != nil {
		return err
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return fmt.Errorf("%w: model ended after %d of %d bytes", ErrBadUpdate, n, resp.ContentLength)
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if _, err := safetensors.ReadHeader(tmp.Name()); err != nil {
		return fmt.Errorf("the server's model is not a valid .safetensors file: %w", err)
	}
	return nil
}

// Status is the status of round (with its acknowledged updates).
func (c *Client) Status(ctx context.Context, round int) (*api.Round, error) {
	return call[api.Round](ctx, c, http.MethodGet, c.url("/v1/rounds/%d", round), nil)
}

// WaitEnded waits until round has ended — closed with its model, or failed — and returns its
// status, in long polls of the server (GET /v1/rounds/N?wait=60s) rather than repeated status
// requests; it returns ctx's error if ctx ends first.
func (c *Client) WaitEnded(ctx context.Context, round int) (*api.Round, error) {
	for {
		st, err := call[api.Round](ctx, c, http.MethodGet, c.url("/v1/rounds/%d", round)+"?wait=60s", nil)
		if err != nil {
			return nil, err
		}
		if st.State != api.StateOpen {
			return st, nil
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// Rounds is the status of every round, and the latest with a model.
func (c *Client) Rounds(ctx context.Context) (*api.Rounds, error) {
	return call[api.Rounds](ctx, c, http.MethodGet, c.url("/v1/rounds"), nil)
}

// CloseRound closes round now (admin token).
func (c *Client) CloseRound(ctx context.Context, round int) (*api.Round, error) {
	return call[api.Round](ctx, c, http.MethodPost, c.url("/v1/rounds/%d/close", round), nil)
}

// SetRecovery gives secure-sum round round its recovery, the seeds of the unmasking round
// (admin token), and returns the round's status; a full round closes with it.
func (c *Client) SetRecovery(ctx context.Context, round int, rec *secagg.Recovery) (*api.Round, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	return call[api.Round](ctx, c, http.MethodPut, c.url("/v1/rounds/%d/recovery", round), b)
}

// OpenRound opens the next round (admin token).
func (c *Client) OpenRound(ctx context.Context) (*api.Round, error) {
	return call[api.Round](ctx, c, http.MethodPost, c.url("/v1/rounds"), nil)
}

// call sends a request with a JSON body (none when body is nil) and decodes the JSON answer.
func call[T any](ctx context.Context, c *Client, method, u string, body []byte) (*T, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := c.request(ctx, method, u, r)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	var out T
	if err := c.do(req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// progressReader reports the bytes read through it.
type progressReader struct {
	r     io.Reader
	done  int64
	total int64
	fn    func(done, total int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += int64(n)
	if n > 0 {
		p.fn(p.done, p.total)
	}
	return n, err
}

// defaultExpectContinue is how long a push waits for the server's 100 Continue before it
// sends the update anyway (servers that do not answer Expect).
const defaultExpectContinue = 2 * time.Second
