#!/usr/bin/env bash
# Regenerates the test certificates for the mesh TLS tests (tests/tls.rs).
# Test-only keys: never use them for anything else. Valid for 100 years.
#   ca.pem / ca.key       the cluster's CA
#   node.pem / node.key   a member certificate signed by ca (IP 127.0.0.1, DNS localhost,
#                         serverAuth + clientAuth, as mutual TLS needs)
#   other-ca.pem          an unrelated CA
#   other.pem / other.key a certificate signed by other-ca (must be refused)
set -euo pipefail
cd "$(dirname "$0")"
days=36500
ext=$(mktemp)
trap 'rm -f "$ext" ./*.csr ./*.srl' EXIT
printf '%s\n' 'basicConstraints=CA:FALSE' 'keyUsage=digitalSignature,keyEncipherment' \
  'extendedKeyUsage=serverAuth,clientAuth' 'subjectAltName=IP:127.0.0.1,DNS:localhost' > "$ext"
for ca in ca other-ca; do
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days $days \
    -subj "/CN=rumor test $ca" -keyout "$ca.key" -out "$ca.pem" 2>/dev/null
done
for pair in node:ca other:other-ca; do
  leaf=${pair%%:*} ca=${pair##*:}
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=rumor test $leaf" \
    -keyout "$leaf.key" -out "$leaf.csr" 2>/dev/null
  openssl x509 -req -in "$leaf.csr" -CA "$ca.pem" -CAkey "$ca.key" -CAcreateserial -days $days \
    -extfile "$ext" -out "$leaf.pem" 2>/dev/null
done
rm -f other-ca.key ca.key
