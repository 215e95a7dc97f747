#!/bin/sh
# Install what building and testing the LCMAPS poolmgr plugin needs on
# Debian 12: a C toolchain, the LCMAPS library and headers, and the dummy
# plugins that end a one-plugin policy. Idempotent and non-interactive; it
# returns at once when everything is already installed.
set -eu

PACKAGES="gcc make libc6-dev openssl liblcmaps-dev lcmaps-basic-interface lcmaps-plugins-basic-dummy lcmaps-plugins-basic-localaccount lcmaps-plugins-basic-poolaccount lcmaps-plugins-voms"

missing=""
for pkg in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" != "install ok installed" ]; then
        missing="$missing $pkg"
    fi
done

if [ -z "$missing" ]; then
    echo "install-build-deps: all packages already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

echo "install-build-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086 # the package list is split on purpose
$SUDO apt-get install -y -qq --no-install-recommends $missing
