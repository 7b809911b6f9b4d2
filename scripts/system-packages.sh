#!/usr/bin/env bash
# Debian packages the tests use as references (tshark, tcpdump) and the browser the HTML report
# is tested in (chromium, chromium-driver). Installed only when missing,
# and only where we may (root with apt-get); elsewhere the tests that need them say so.
set -u
missing=()
command -v tshark  >/dev/null 2>&1 || missing+=(tshark)
command -v tcpdump >/dev/null 2>&1 || missing+=(tcpdump)
command -v nft     >/dev/null 2>&1 || missing+=(nftables)  # capture fixture: loss in a netns
[ -x /usr/bin/chromium ]     || missing+=(chromium)         # the HTML report's browser test
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-packages: missing ${missing[*]}; install them to run the capture and browser tests" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
echo "system-packages: installing ${missing[*]}" >&2
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
  || echo "system-packages: apt-get install ${missing[*]} failed" >&2
exit 0
