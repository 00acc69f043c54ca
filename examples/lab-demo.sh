#!/usr/bin/env bash
# The clusterd demo: a lab of two mail nodes (real dovecot and postfix) and a witness, each in
# its own network namespace with its own clusterd. Shows `clusterctl status`, cuts the Raft
# leader off the network, shows the new leader and how long the election took, runs a failover
# drill (`clusterctl drill node mx1`) and shows its result, kills the daemon serving an address
# and shows what a mail client saw, then tears the lab down. Runs as root (network namespaces); installs the Debian packages it needs if missing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

if [ "$(id -u)" != 0 ]; then
  echo "the lab builds network namespaces: run as root (sudo -E $0)" >&2
  exit 1
fi
missing=()
for tool in dovecot postfix nft ip dig; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing what the lab needs (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -q
  apt-get install -y -q --no-install-recommends iproute2 nftables dnsutils procps \
    dovecot-imapd dovecot-pop3d dovecot-lmtpd postfix
fi

cargo build --quiet -p clusterd --bins -p clusterd-tests --bin lab
target="${CARGO_TARGET_DIR:-$here/target}/debug"
exec "$target/lab" demo --clusterd "$target/clusterd"
