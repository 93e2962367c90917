package server

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"strings"
)

// principal is who a request comes from: a client (id) or the admin.
type principal struct {
	client string // "" for the admin
	admin  bool
}

// authenticator checks bearer tokens against the configured hashes. Tokens are compared by
// their SHA-256 in constant time against every configured hash (no early exit, no map keyed
// by a secret), so the time a check takes says nothing about any token. Tokens are never
// logged or kept: only their hash is computed.
type authenticator struct {
	clients []clientKey
	admin   *[32]byte
	certCN  map[string]string // client id -> required certificate CN (mutual TLS)
}

type clientKey struct {
	id   string
	hash [32]byte
}

func newAuthenticator(c *Config) (*authenticator, error) {
	a := &authenticator{certCN: map[string]string{}}
	for _, cl := range c.Clients {
		h, err := parseTokenHash(cl.TokenSHA256)
		if err != nil {
			return nil, fmt.Errorf("%w: client %s: %v", ErrConfig, cl.ID, err)
		}
		a.clients = append(a.clients, clientKey{id: cl.ID, hash: h})
		if cl.CertCN != "" {
			a.certCN[cl.ID] = cl.CertCN
		}
	}
	if c.AdminTokenSHA256 != "" {
		h, err := parseTokenHash(c.AdminTokenSHA256)
		if err != nil {
			return nil, fmt.Errorf("%w: admin: %v", ErrConfig, err)
		}
		a.admin = &h
	}
	return a, nil
}

// bearer extracts the token of an Authorization: Bearer header.
func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// authenticate finds who r comes from. It reads only the request's headers and TLS state, so
// a request without a valid token is refused before any byte of its body is read.
func (a *authenticator) authenticate(r *http.Request) (principal, error) {
	tok, ok := bearer(r)
	cn := ""
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		cn = r.TLS.PeerCertificates[0].Subject.CommonName
	}
	return a.check(tok, ok, cn)
}

// check finds whose token tok is; certCN is the common name of the client certificate the
// connection presented ("" without one).
func (a *authenticator) check(tok string, ok bool, certCN string) (principal, error) {
	if !ok {
		return principal{}, fmt.Errorf("%w: no bearer token (Authorization: Bearer TOKEN)", ErrUnauthorized)
	}
	h := sha256.Sum256([]byte(tok))
	match := -1
	for i := range a.clients {
		if subtle.ConstantTimeCompare(h[:], a.clients[i].hash[:]) == 1 {
			match = i
		}
	}
	isAdmin := a.admin != nil && subtle.ConstantTimeCompare(h[:], a.admin[:]) == 1
	switch {
	case isAdmin:
		return principal{admin: true}, nil
	case match < 0:
		return principal{}, fmt.Errorf("%w: the token is not valid", ErrUnauthorized)
	}
	id := a.clients[match].id
	if cn, ok := a.certCN[id]; ok && certCN != cn {
		return principal{}, fmt.Errorf("%w: client %s must present its own certificate (CN %q), got CN %q", ErrForbidden, id, cn, certCN)
	}
	return principal{client: id}, nil
}

// client authenticates a client: the admin token does not push updates.
func (a *authenticator) client(r *http.Request) (string, error) {
	p, err := a.authenticate(r)
	if err != nil {
		return "", err
	}
	return p.pusher()
}

// pusher is the client that may push, or why the principal may not.
func (p principal) pusher() (string, error) {
	if p.admin {
		return "", fmt.Errorf("%w: the admin token controls rounds; updates come with a client's token", ErrForbidden)
	}
	return p.client, nil
}

// requireAdmin authenticates the admin.
func (a *authenticator) requireAdmin(r *http.Request) error {
	p, err := a.authenticate(r)
	if err != nil {
		return err
	}
	return a.admits(p)
}

// admits says whether p may control rounds.
func (a *authenticator) admits(p principal) error {
	if a.admin == nil {
		return fmt.Errorf("%w: no admin token is configured (admin_token_sha256)", ErrForbidden)
	}
	if !p.admin {
		return fmt.Errorf("%w: client %s is not the admin", ErrForbidden, p.client)
	}
	return nil
}
