#!/bin/sh
# A throwaway CA and a server certificate signed by it, for trying the example broker out and
# for Civicflow's tests. Not for production: the CA key sits next to the certificates, unguarded.
#
#   deploy/mosquitto/make-test-certs.sh OUT_DIR [NAME ...]
#
# NAMEs are the host names and IP addresses clients use to reach the broker (default: localhost
# 127.0.0.1); the first is also the certificate's CN. Writes ca.crt, ca.key, server.crt and
# server.key to OUT_DIR (keys readable by the owner only). Valid for 30 days. Needs openssl.
set -eu

if [ $# -lt 1 ]; then
    echo "usage: $0 OUT_DIR [NAME ...]" >&2
    exit 2
fi
out=$1
shift
if [ $# -eq 0 ]; then
    set -- localhost 127.0.0.1
fi

san=""
for name in "$@"; do
    case $name in
        *:*) entry="IP:$name" ;;  # IPv6 address
        *[!0-9.]*) entry="DNS:$name" ;;  # anything but digits and dots is a host name
        *) entry="IP:$name" ;;
    esac
    san="${san:+$san,}$entry"
done

mkdir -p "$out"
umask 077
ext="$out/server.ext"
trap 'rm -f "$out/server.csr" "$ext"' EXIT

# CA: EC P-256, self-signed, may sign certificates only.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=Civicflow throwaway CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$out/ca.key" -out "$out/ca.crt" 2>/dev/null

# Server: its names in subjectAltName (what TLS clients check), signed by the CA above.
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=$1" -keyout "$out/server.key" -out "$out/server.csr" 2>/dev/null
cat > "$ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyAgreement
extendedKeyUsage=serverAuth
subjectAltName=$san
EXT
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 30 -extfile "$ext" \
    -out "$out/server.crt" 2>/dev/null

chmod 644 "$out/ca.crt" "$out/server.crt"
echo "wrote $out/ca.crt, $out/server.crt and $out/server.key for: $*"
