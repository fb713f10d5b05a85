#!/usr/bin/env bash
# Builds the agent as a Debian package: a virtual environment at /opt/clbagent holding clbagent and
# its dependencies, byte-compiled here, so that installing it on a gateway host only unpacks files
# (no pip, no compiler, no package index on the host; zstd, which unpacks fast). The Ansible role
# (ansible/) installs this package.
#
#   packaging/build-deb.sh [OUT.deb]      # default build/clbagent.deb; prints the path
#
# The venv runs on the builder's Debian Python (/usr/bin/python3, CLB_DEB_PYTHON), so the package
# depends on exactly that python3.X and this architecture: dpkg and apt refuse it on a host with
# another Python (build it on the Debian release of the gateways). The dependencies come from the
# package index the builder's pip uses.
# The version is the project's plus a digest of the installed files, so an unchanged tree gives the
# same version and the role's second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$(realpath -m "${1:-build/clbagent.deb}")
python=${CLB_DEB_PYTHON:-/usr/bin/python3}
prefix=/opt/clbagent

die() { echo "build-deb: $*" >&2; exit 1; }
[ -x "$python" ] || die "no $python (the Debian Python the gateways run)"
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# The Debian package that owns the interpreter, e.g. python3.11 (what the package depends on).
pypkg=python$pyver
dpkg-query -S "$(readlink -f "$python")" >/dev/null 2>&1 && dpkg-query -W "$pypkg" >/dev/null 2>&1 ||
  die "$python is not Debian's $pypkg; build with the gateways' Debian Python"
arch=$(dpkg --print-architecture)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)

work=$(mktemp -d /tmp/clbagent-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
stage=$work/root
venv=$stage$prefix

# The work tree's files (committed or not, ignored ones left out).
mkdir -p "$work/src"
git ls-files -z -co --exclude-standard | xargs -0 tar --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$work/src"
"$python" -m venv --without-pip "$venv"
# The builder venv's pip installs into the new venv (--python); scripts point at $venv/bin/python.
"$root/.venv/bin/python" -m pip --python "$venv/bin/python" install --quiet --disable-pip-version-check \
  --no-compile "$work/src" >&2
# clbagent's nginx module of the L7 metrics (scripts/build-nginx-module.sh, run by setup.sh), built
# for the builder's nginx: the agent loads it only where the host's nginx is that same build (the
# version and signature its .abi names), else counts through the joined variable (docs/metrics.md).
module=$root/clbagent/nginx/module/ngx_http_clb_metrics_module.so
if [ -f "$module" ] && [ -f "$module.abi" ]; then
  install -D -m 0644 -t "$venv/lib/python$pyver/site-packages/clbagent/nginx/module" "$module" "$module.abi"
else
  echo "build-deb: no built nginx module ($module): the package counts L7 metrics without it" >&2
fi
rm -rf "$venv/lib/python$pyver/site-packages/"*.dist-info/direct_url.json "$venv/bin/"[Aa]ctivate*
# Paths as they will be on the host: the scripts' interpreter line and the venv's record of itself.
grep -rlI --null "$stage" "$venv/bin" "$venv/pyvenv.cfg" | xargs -0 -r sed -i "s|$stage||g"
! grep -rlI "$stage" "$venv" || die "build paths left in the files above"

# Byte-compiled here with the host's file times fixed, so the .pyc files are valid after dpkg
# unpacks them (timestamp checks) and name the installed paths in tracebacks.
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
find "$stage" -exec touch -h -d "@$epoch" {} +
"$venv/bin/python" -m compileall -q -j0 --invalidation-mode timestamp -s "$stage" -p / "$venv/lib" >&2
find "$stage" -exec touch -h -d "@$epoch" {} +

# The version names the content: a digest of every installed file but the derived .pyc.
digest=$(cd "$stage" && find . ! -name '*.pyc' \( -type f -o -type l \) -print0 | LC_ALL=C sort -z |
  xargs -0 sh -c 'for f; do printf "%s %s\n" "$f" "$(if [ -L "$f" ]; then readlink "$f"; else sha256sum <"$f"; fi)"; done' sh |
  sha256sum | cut -c1-12)
mkdir -p "$stage/DEBIAN"
cat >"$stage/DEBIAN/control" <<EOF
Package: clbagent
Version: $version+$digest
Architecture: $arch
Maintainer: clbagent maintainers <root@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Depends: $pypkg
Section: net
Priority: optional
Description: data-plane agent of a cloud load balancer (nginx L7, IPVS L4)
 A virtual environment at $prefix with clbagent and its Python dependencies,
 byte-compiled for $pypkg. The systemd unit and configuration are installed
 by the Ansible role.
EOF
mkdir -p "$(dirname "$out")"
SOURCE_DATE_EPOCH=$epoch dpkg-deb --root-owner-group -Zzstd -z3 --build "$stage" "$out" >/dev/null
echo "$out"
