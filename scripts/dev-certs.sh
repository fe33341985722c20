#!/bin/sh
# dev-certs.sh: a private CA and one server certificate for the Docker Compose
# TLS overlay (docker-compose.tls.yml). For a laptop or a test bed only: in a
# cluster, cert-manager issues the certificates (examples/kubernetes-tls/).
#
#   scripts/dev-certs.sh [-o UID[:GID]] [-d DAYS] [DIR]      (DIR defaults to deploy/tls)
#
# Writes, in DIR:
#   ca.crt    the CA certificate: every passport service trusts it (PASSPORT_CA_FILE)
#   ca.key    the CA's key (0600): never mounted anywhere; delete it if you
#             will not issue again
#   tls.crt   the server certificate, for every compose service name,
#             localhost and 127.0.0.1, signed by the CA
#   tls.key   its key (0600)
#
# Compose mounts file secrets as bind mounts, with the file's owner and mode
# from the host, and the image runs as uid 65532: on Linux, give it the key
# with -o 65532:65532 (run as root, e.g. with sudo), or the services cannot
# read it. Docker Desktop shares files with the containers' user anyway.
#
# Existing files in DIR are replaced, each by rename: rerun to renew, then
# `docker compose restart` (compose bind-mounts the files, and a running
# container keeps the ones it started with).
set -eu

# Compose services that serve TLS or are called over it, as named in
# docker-compose.yml (cmd/passport/deploy_test.go checks the list).
NAMES="authority proxy fleet healer chaos dashboard"

owner=""
days=30
usage() {
	echo "usage: $0 [-o UID[:GID]] [-d DAYS] [DIR]" >&2
	exit 2
}
while getopts o:d:h opt; do
	case $opt in
	o) owner=$OPTARG ;;
	d) days=$OPTARG ;;
	*) usage ;;
	esac
done
shift $((OPTIND - 1))
[ $# -le 1 ] || usage
dir=${1:-deploy/tls}
case $days in '' | *[!0-9]*) echo "$0: -d wants a number of days" >&2; exit 2 ;; esac

command -v openssl >/dev/null 2>&1 || { echo "$0: openssl not found" >&2; exit 1; }
mkdir -p "$dir"
# Keys are created unreadable by anyone else from the first byte.
umask 077
# Made beside the results, so that each one lands by rename (same file system).
tmp=$(mktemp -d "$dir/.dev-certs.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

san="DNS:localhost,IP:127.0.0.1"
for n in $NAMES; do
	san="$san,DNS:$n"
done

# The CA: P-256, may sign certificates and nothing else, no intermediates.
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-days "$days" -subj "/CN=agent-passport dev CA" \
	-addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
	-addext "keyUsage=critical,keyCertSign,cRLSign" \
	-keyout "$tmp/ca.key" -out "$tmp/ca.crt" 2>/dev/null

# The server certificate: a fresh key, every service name, server auth only.
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-subj "/CN=agent-passport" -keyout "$tmp/tls.key" -out "$tmp/tls.csr" 2>/dev/null
printf '%s\n' \
	"basicConstraints=critical,CA:FALSE" \
	"keyUsage=critical,digitalSignature" \
	"extendedKeyUsage=serverAuth" \
	"subjectAltName=$san" >"$tmp/ext.cnf"
openssl x509 -req -in "$tmp/tls.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" \
	-CAcreateserial -days "$days" -extfile "$tmp/ext.cnf" -out "$tmp/tls.crt" 2>/dev/null

chmod 600 "$tmp/ca.key" "$tmp/tls.key"
chmod 644 "$tmp/ca.crt" "$tmp/tls.crt"
if [ -n "$owner" ]; then
	chown "$owner" "$tmp/tls.key" "$tmp/tls.crt"
fi
# Certificate before key, each by rename: a running service that looks in
# between keeps its old pair (a mismatched pair is refused, not loaded).
for f in ca.crt ca.key tls.crt tls.key; do
	mv -f "$tmp/$f" "$dir/$f"
done
echo "wrote $dir/ca.crt $dir/tls.crt $dir/tls.key (valid $days days; names: $NAMES localhost 127.0.0.1)"
