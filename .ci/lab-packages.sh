#!/usr/bin/env bash
# Packages the clusterd lab tests need on a fresh Debian 12 machine (run as root).
# Services are started by the lab itself, per namespace; nothing is enabled system-wide.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update
apt-get install -y dovecot-imapd dovecot-pop3d dovecot-lmtpd postfix nftables iproute2 dnsutils
