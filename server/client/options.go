package client

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"strings"

	"github.com/wattagg/wattagg/internal/optnames"
)

// Option configures New (the connection: WithToken, WithHTTPClient, WithTLS) or one call of
// Push, PushFile, PushSet or Pull (WithWeight, WithProgress): the package has one option type,
// and each option's doc says which functions take it. An option given to a function it does
// not apply to is refused with an ErrOption error that names it, instead of being ignored: a
// weight given to Pull, or a token given to Push, would otherwise silently do nothing.
type Option func(*options) error

// options is what the options set, for whichever function they are given to.
type options struct {
	fn       consumer // the function applying the options; an option checks that it takes it
	token    string
	hc       *http.Client
	weight   *float64
	progress func(done, total int64)
}

// consumer is a bit set of the functions that take options.
type consumer uint8

const (
	forNew consumer = 1 << iota
	forPush
	forPushFile
	forPushSet
	forPull

	forPushes = forPush | forPushFile | forPushSet
)

var consumerNames = [...]string{"New", "Push", "PushFile", "PushSet", "Pull"}

// String lists the functions of c: "New", "Push, PushFile and PushSet".
func (c consumer) String() string { return optnames.Of(uint(c), consumerNames[:]) }

// option makes the Option called name, which the functions of takes accept: given to another
// it is an ErrOption naming it, before set sees its value.
func option(name string, takes consumer, set func(*options) error) Option {
	return func(o *options) error {
		if o.fn&takes == 0 {
			return fmt.Errorf("%w: %s is an option of %v; %v does not take it", ErrOption, name, takes, o.fn)
		}
		return set(o)
	}
}

// applyOptions applies opts for the function fn.
func applyOptions(fn consumer, opts []Option) (*options, error) {
	o := &options{fn: fn}
	for _, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("%w: nil option given to %v", ErrOption, fn)
		}
		if err := opt(o); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// WithToken authenticates every request with a bearer token (a client's, or the admin's). It
// applies to New.
func WithToken(token string) Option {
	return option("WithToken", forNew, func(o *options) error {
		token = strings.TrimSpace(token)
		if token == "" {
			return fmt.Errorf("%w: empty token", ErrOption)
		}
		o.token = token
		return nil
	})
}

// WithHTTPClient sends requests through hc (default: a client of its own, whose transport
// waits for the server's 100 Continue before it sends an update, so that a refused update
// costs no upload). It applies to New.
func WithHTTPClient(hc *http.Client) Option {
	return option("WithHTTPClient", forNew, func(o *options) error {
		if hc == nil {
			return fmt.Errorf("%w: nil HTTP client", ErrOption)
		}
		o.hc = hc
		return nil
	})
}

// WithTLS uses cfg for HTTPS (a private CA's pool in RootCAs; a client certificate for mutual
// TLS in Certificates). It applies to New.
func WithTLS(cfg *tls.Config) Option {
	return option("WithTLS", forNew, func(o *options) error {
		if cfg == nil {
			return fmt.Errorf("%w: nil TLS configuration", ErrOption)
		}
		t := defaultTransport()
		t.TLSClientConfig = cfg
		o.hc = &http.Client{Transport: t}
		return nil
	})
}

// WithWeight sends the update's weight (X-Wattagg-Weight); without it the server uses the
// update's num_examples metadata, else 1. It applies to Push, PushFile and PushSet.
func WithWeight(w float64) Option {
	return option("WithWeight", forPushes, func(o *options) error {
		o.weight = &w
		return nil
	})
}

// WithProgress calls fn as the update's bytes are sent (Push, PushFile, PushSet) or as the
// model's bytes arrive (Pull), with the bytes so far and in all (-1 when the server does not
// say how many a model has). It applies to Push, PushFile, PushSet and Pull.
func WithProgress(fn func(done, total int64)) Option {
	return option("WithProgress", forPushes|forPull, func(o *options) error {
		o.progress = fn
		return nil
	})
}
