#!/usr/bin/env bash
# What the test suite needs beyond Python packages, from Debian's packages:
# chromium (the HTML report is checked in a real headless browser) and prometheus 2.42
# (metrics are scraped by a real Prometheus). Idempotent: does nothing when both are present.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing test dependencies: ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
