package server

import (
	"errors"
	"net/http"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/arrowio"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// Sentinel errors of the server. Every refusal of an update or a request wraps one of them
// (or a sentinel of the round engine, tensor or safetensors package that says more), and each
// maps to one HTTP status (statusOf) and one reason word for the metrics and the error body.
// Their texts are not the reason words, so that "401 unauthorized: " and the message do not
// repeat each other.
var (
	// ErrConfig: the configuration file is invalid (the message names the field).
	ErrConfig = errors.New("invalid server configuration")
	// ErrUnauthorized: no token, or a token that belongs to nobody.
	ErrUnauthorized = errors.New("not authenticated")
	// ErrForbidden: a valid token that may not do this (a client's token on an admin action,
	// a client certificate that is not the token's).
	ErrForbidden = errors.New("not permitted")
	// ErrUnknownRound: no such round.
	ErrUnknownRound = errors.New("unknown round")
	// ErrRoundClosed: the round takes no more updates (closed, failed, full or closing).
	ErrRoundClosed = errors.New("round not open")
	// ErrConflict: a second, different update from a client already in the round, or one sent
	// while its first is still arriving; or an admin action the round's state forbids.
	ErrConflict = errors.New("in conflict with the round")
	// ErrTooLarge: an update over the configured maximum size.
	ErrTooLarge = errors.New("update too large")
	// ErrBusy: every stream slot is taken; retry later.
	ErrBusy = errors.New("too many concurrent streams")
	// ErrStalled: a client sent nothing for the idle timeout.
	ErrStalled = errors.New("client stalled")
	// ErrTruncated: the update ended before the bytes its header declares.
	ErrTruncated = errors.New("truncated update")
	// ErrBadRequest: a malformed request (a round number, a weight, a missing length).
	ErrBadRequest = errors.New("bad request")
	// ErrCorrupt: a durable file (acknowledgement log, spool file, round state) failed its
	// checksum or cannot be read back.
	ErrCorrupt = errors.New("corrupt server data")
	// ErrLengthRequired: an upload without Content-Length (the header check needs it).
	ErrLengthRequired = errors.New("content length required")
)

// statusOf is the HTTP status and reason word of err.
func statusOf(err error) (int, string) { return classify(err) }

// classify maps the sentinels of the server and of the packages below it to a status.
func classify(err error) (int, string) {
	switch {
	case errors.Is(err, ErrUnauthorized):
		return http.StatusUnauthorized, "unauthorized"
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden, "forbidden"
	case errors.Is(err, ErrUnknownRound):
		return http.StatusNotFound, "unknown_round"
	case errors.Is(err, ErrRoundClosed):
		return http.StatusConflict, "round_closed"
	case errors.Is(err, ErrConflict):
		return http.StatusConflict, "conflict"
	case errors.Is(err, ErrTooLarge):
		return http.StatusRequestEntityTooLarge, "too_large"
	case errors.Is(err, ErrBusy):
		return http.StatusServiceUnavailable, "busy"
	case errors.Is(err, ErrStalled):
		return http.StatusRequestTimeout, "stalled"
	case errors.Is(err, ErrTruncated):
		return http.StatusBadRequest, "truncated"
	case errors.Is(err, ErrLengthRequired):
		return http.StatusLengthRequired, "length_required"
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest, "bad_request"
	}
	return classifyEngine(err)
}

// classifyEngine maps the round engine's, tensor's and the decoders' sentinels: what they say
// about an update is the client's fault (4xx); anything else is the server's (500).
func classifyEngine(err error) (int, string) {
	switch {
	case errors.Is(err, aggregate.ErrDuplicate):
		return http.StatusConflict, "conflict"
	case errors.Is(err, aggregate.ErrClosed):
		return http.StatusConflict, "round_closed"
	case errors.Is(err, tensor.ErrNonFinite):
		return http.StatusBadRequest, "non_finite"
	case errors.Is(err, aggregate.ErrOutOfRange):
		// A value beyond the bound of the round's exact sums, or a weight past their cap.
		return http.StatusBadRequest, "out_of_range"
	case errors.Is(err, tensor.ErrLayoutMismatch), errors.Is(err, tensor.ErrShapeMismatch),
		errors.Is(err, tensor.ErrDuplicateName), errors.Is(err, tensor.ErrShape):
		return http.StatusBadRequest, "layout"
	case errors.Is(err, tensor.ErrDType):
		return http.StatusBadRequest, "dtype"
	case errors.Is(err, aggregate.ErrWeight):
		return http.StatusBadRequest, "weight"
	case errors.Is(err, aggregate.ErrUpdateKind):
		return http.StatusBadRequest, "update_kind"
	case errors.Is(err, safetensors.ErrFormat), errors.Is(err, safetensors.ErrHeaderSize),
		errors.Is(err, safetensors.ErrOffset), errors.Is(err, safetensors.ErrLimit):
		return http.StatusBadRequest, "bad_header"
	case errors.Is(err, arrowio.ErrFormat), errors.Is(err, arrowio.ErrSchema),
		errors.Is(err, arrowio.ErrChunk), errors.Is(err, arrowio.ErrLimit):
		return http.StatusBadRequest, "bad_stream"
	case errors.Is(err, arrowio.ErrIncomplete):
		return http.StatusBadRequest, "truncated"
	case errors.Is(err, aggregate.ErrOption):
		// An option the rule refuses from an update's content (a secure sum's parameters).
		return http.StatusBadRequest, "rule"
	}
	return http.StatusInternalServerError, "internal"
}
