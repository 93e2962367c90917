package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wattagg/wattagg/server/client"
)

// testCA is a certificate authority made in the test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue makes a leaf certificate for cn (a server for 127.0.0.1 when server is set).
func (ca *testCA) issue(t testing.TB, cn string, server bool) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// writePEM writes a certificate and its key as PEM files.
func writePEM(t testing.TB, dir, name string, c tls.Certificate) (string, string) {
	t.Helper()
	certPath, keyPath := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	kb, err := x509.MarshalECPrivateKey(c.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

// TestMutualTLS serves over mutual TLS with certificates made in the test: a client with its
// own certificate and token pushes; no certificate, a certificate of another CA, or another
// client's certificate with one's token are refused.
func TestMutualTLS(t *testing.T) {
	leakCheck(t)
	dir := t.TempDir()
	serverCA, clientCA, rogueCA := newTestCA(t, "server CA"), newTestCA(t, "client CA"), newTestCA(t, "rogue CA")
	certPath, keyPath := writePEM(t, dir, "server", serverCA.issue(t, "wattagg", true))
	caPath := filepath.Join(dir, "clients-ca.pem")
	if err := os.WriteFile(caPath, clientCA.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, tokens, admin := testConfig(t, 3)
	cfg.TLS = &TLSConfig{CertFile: certPath, KeyFile: keyPath, ClientCAFile: caPath}
	cfg.Clients[0].CertCN = "c0"
	cfg.Clients[1].CertCN = "c1"
	ts := startServer(t, cfg, tokens, admin)
	roots := x509.NewCertPool()
	roots.AddCert(serverCA.cert)
	body := encode(t, f32Set(t, [][]int{{8}}, func(_, i int) float32 { return float32(i) }), nil)
	path := filepath.Join(dir, "u.safetensors")
	if err := os.WriteFile(path, body, 0o600); err != nil {
		t.Fatal(err)
	}
	push := func(id string, certs ...tls.Certificate) error {
		c, err := client.New(ts.url, client.WithToken(tokens[id]), client.WithTLS(&tls.Config{RootCAs: roots, Certificates: certs}))
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.PushFile(context.Background(), 1, path)
		return err
	}
	if err := push("c0", clientCA.issue(t, "c0", false)); err != nil {
		t.Fatalf("c0 with its certificate: %v", err)
	}
	if err := push("c1"); err == nil {
		t.Fatal("no client certificate: accepted")
	}
	if err := push("c1", rogueCA.issue(t, "c1", false)); err == nil {
		t.Fatal("a certificate of another CA: accepted")
	}
	err := push("c1", clientCA.issue(t, "c0", false))
	var ce *client.Error
	if !errors.As(err, &ce) || ce.StatusCode != http.StatusForbidden || !errors.Is(err, client.ErrForbidden) {
		t.Fatalf("c1's token with c0's certificate: %v", err)
	}
	// c2 has no certificate binding: any certificate of the CA, with its own token.
	if err := push("c2", clientCA.issue(t, "someone", false)); err != nil {
		t.Fatalf("c2: %v", err)
	}
	if st, _ := ts.Status(1); st.Clients != 2 {
		t.Fatalf("round has %d updates, want 2", st.Clients)
	}
	// Plain HTTP to the TLS port gets nothing done.
	resp, err := http.Get("http://" + ts.url[len("https://"):] + "/healthz")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP served on the TLS port")
		}
	}
	testHTTPClient.CloseIdleConnections()
}

// countingReader counts the bytes read from it.
type countingReader struct {
	r *bytes.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// TestTokenCheckedBeforeBody: a request with a bad token is refused before any byte of its
// body is read (the client waits for 100 Continue and never sends it).
func TestTokenCheckedBeforeBody(t *testing.T) {
	leakCheck(t)
	cfg, tokens, admin := testConfig(t, 2)
	ts := startServer(t, cfg, tokens, admin)
	body := encode(t, f32Set(t, [][]int{{1 << 16}}, func(_, i int) float32 { return 1 }), nil)
	tr := &http.Transport{ExpectContinueTimeout: time.Minute, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	for _, tok := range []string{"", "wrong", admin} {
		cr := &countingReader{r: bytes.NewReader(body)}
		req, err := http.NewRequest(http.MethodPut, ts.url+"/v1/rounds/1/update", cr)
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = int64(len(body))
		req.Header.Set("Expect", "100-continue")
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
			t.Fatalf("token %q: %d", tok, resp.StatusCode)
		}
		if n := cr.n.Load(); n != 0 {
			t.Fatalf("token %q: the client sent %d body bytes before the refusal", tok, n)
		}
	}
	// Tokens never reach the logs.
	if bytes.Contains(ts.logs.Bytes(), []byte(tokens["c0"])) || bytes.Contains(ts.logs.Bytes(), []byte(admin)) {
		t.Fatal("a token was logged")
	}
}

// TestAdminActions: closing and opening rounds needs the admin token.
func TestAdminActions(t *testing.T) {
	leakCheck(t)
	cfg, tokens, admin := testConfig(t, 3)
	cfg.Round.ManualNext = true
	cfg.Round.MinClients = 2
	ts := startServer(t, cfg, tokens, admin)
	body := encode(t, f32Set(t, [][]int{{8}}, func(_, i int) float32 { return float32(i) }), nil)
	ts.push(t, "c0", 1, body, nil)
	for _, c := range []struct {
		token, path string
		status      int
		reason, msg string
	}{
		{"", "/v1/rounds/1/close", 401, "unauthorized", "no bearer token"},
		{tokens["c0"], "/v1/rounds/1/close", 403, "forbidden", "not the admin"},
		{admin, "/v1/rounds/1/close", 409, "conflict", "min_clients is 2"},
		{admin, "/v1/rounds", 409, "conflict", "round 1 is open"},
		{admin, "/v1/rounds/9/close", 404, "unknown_round", "round 9"},
	} {
		code, b := ts.post(t, c.token, c.path)
		wantRefused(t, code, b, c.status, c.reason, c.msg)
	}
	ts.push(t, "c1", 1, encode(t, f32Set(t, [][]int{{8}}, func(_, i int) float32 { return 2 * float32(i) }), nil), nil)
	if code, b := ts.post(t, admin, "/v1/rounds/1/close"); code != 200 {
		t.Fatalf("close: %d %s", code, b)
	}
	if ts.Current() != 0 {
		t.Fatal("a round opened by itself with manual_next")
	}
	if code, b := ts.post(t, admin, "/v1/rounds"); code != 201 {
		t.Fatalf("open: %d %s", code, b)
	}
	if ts.Current() != 2 {
		t.Fatalf("current round %d, want 2", ts.Current())
	}
	code, b := ts.post(t, admin, "/v1/rounds/1/close")
	wantRefused(t, code, b, 409, "round_closed", "round 1 is closed")
}
