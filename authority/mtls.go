package authority

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/agentpassport/passport/authority/client"
	"github.com/agentpassport/passport/passport"
)

// Mutual TLS client authentication and certificate-bound passports (RFC
// 8705). An agent registered with a certificate subject (tls_client_auth:
// a SAN URI such as a SPIFFE ID, a SAN DNS name, or a subject DN) or with
// a certificate of its own (self_signed_tls_client_auth) authenticates by
// the client certificate of the TLS connection, with no secret; its
// passports are then bound to that certificate (cnf.x5t#S256), and the
// proxy takes them only over a connection with the same certificate.

// Client authentication methods by certificate.
const (
	authTLS           = "tls_client_auth"
	authSelfSignedTLS = "self_signed_tls_client_auth"
)

// Agent hash fields of certificate authentication.
const (
	fieldTLSSubject = "tls_client_auth" // "<kind>:<value>", kinds below
	fieldTLSCert    = "tls_client_cert" // x5t#S256 of the registered self-signed certificate
)

// Kinds of registered certificate subjects (RFC 8705 §2.1.2 metadata).
const (
	tlsSubjectURI = "san_uri"
	tlsSubjectDNS = "san_dns"
	tlsSubjectDN  = "subject_dn"
)

// tlsSubjectOf validates a registration's certificate subject, returning
// its stored form "<kind>:<value>" ("" for none).
func tlsSubjectOf(spec client.AgentSpec) (string, error) {
	var set []string
	for kind, v := range map[string]string{tlsSubjectURI: spec.TLSClientAuthSANURI, tlsSubjectDNS: spec.TLSClientAuthSANDNS, tlsSubjectDN: spec.TLSClientAuthSubjectDN} {
		if v == "" {
			continue
		}
		if len(v) > 512 || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return "", fmt.Errorf("tls_client_auth_%s: at most 512 printable characters", kind)
		}
		set = append(set, kind+":"+v)
	}
	if len(set) > 1 {
		return "", errors.New("tls_client_auth: name one of san_uri, san_dns or subject_dn")
	}
	if len(set) == 0 {
		return "", nil
	}
	return set[0], nil
}

// tlsCertOf parses a registration's self-signed certificate (PEM) and
// returns its x5t#S256.
func tlsCertOf(spec client.AgentSpec) (string, error) {
	if spec.TLSClientCertificate == "" {
		return "", nil
	}
	if len(spec.TLSClientCertificate) > 16<<10 {
		return "", errors.New("tls_client_certificate: too long")
	}
	blk, rest := pem.Decode([]byte(spec.TLSClientCertificate))
	if blk == nil || blk.Type != "CERTIFICATE" || len(strings.TrimSpace(string(rest))) != 0 {
		return "", errors.New("tls_client_certificate: want one PEM CERTIFICATE")
	}
	if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
		return "", fmt.Errorf("tls_client_certificate: %w", err)
	}
	return passport.CertThumbprint(blk.Bytes), nil
}

// clientCert returns the verified client certificate of the request's TLS
// connection: with tls.client_auth verify_if_given (or require) it chains
// to tls.ca_file; with request it is whatever the client showed, which
// only a registered self-signed certificate may then match.
func clientCert(r *http.Request) *x509.Certificate {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil
	}
	return r.TLS.PeerCertificates[0]
}

// checkClientCert says why cert does not authenticate agent ("" when it
// does). verified says whether the TLS layer chained it to the
// configured client CA.
func checkClientCert(agent *agentRecord, cert *x509.Certificate, verified bool) string {
	switch {
	case cert == nil:
		return "no_client_certificate"
	case agent.TLSCert != "":
		if passport.CertThumbprint(cert.Raw) != agent.TLSCert {
			return "wrong_certificate"
		}
		return ""
	case agent.TLSSubject == "":
		return "no_certificate_registered"
	case !verified:
		return "certificate_not_verified"
	}
	kind, want, _ := strings.Cut(agent.TLSSubject, ":")
	switch kind {
	case tlsSubjectURI:
		for _, u := range cert.URIs {
			if u.String() == want {
				return ""
			}
		}
	case tlsSubjectDNS:
		for _, d := range cert.DNSNames {
			if strings.EqualFold(d, want) {
				return ""
			}
		}
	case tlsSubjectDN:
		if cert.Subject.String() == want {
			return ""
		}
	}
	return "wrong_certificate_subject"
}

// verifiedChain reports whether the TLS layer verified the client's chain.
func verifiedChain(r *http.Request) bool {
	return r.TLS != nil && len(r.TLS.VerifiedChains) > 0
}
