#!/usr/bin/env bash
# Builds clbagent's own nginx module (clbagent/nginx/module: the L7 metrics' values as numbers for
# the Lua log phase, docs/metrics.md) against the installed nginx, from Debian's nginx-dev tree
# (/usr/share/nginx/src), with the flags Debian's nginx was configured with, as Debian builds its
# own dynamic modules. The result goes next to the source (not in git):
#   ngx_http_clb_metrics_module.so       the module
#   ngx_http_clb_metrics_module.so.abi   "<nginx version> <module signature>", which the renderer
#                                        compares with the installed nginx before loading the module
# Run by scripts/setup.sh; does nothing when the module is newer than its source and was built for
# the installed nginx.
set -euo pipefail
cd "$(dirname "$0")/.."
src=/usr/share/nginx/src
dir=$PWD/clbagent/nginx/module
so=$dir/ngx_http_clb_metrics_module.so
nginx=${CLBAGENT_NGINX:-/usr/sbin/nginx}

die() { echo "build-nginx-module: $*" >&2; exit 1; }
[ -f "$src/conf_flags" ] || die "no $src/conf_flags (the nginx-dev package)"
version=$("$nginx" -v 2>&1 | sed -n 's|^nginx version: nginx/\([0-9.]*\).*|\1|p')
[ -n "$version" ] || die "cannot read the version of $nginx"
if [ -f "$so" ] && [ -f "$so.abi" ] && [ "$so" -nt "$dir/ngx_http_clb_metrics_module.c" ] &&
  [ "$so" -nt "$dir/config" ] && [ "$(cut -d' ' -f1 "$so.abi")" = "$version" ]; then
  exit 0
fi
# nginx-dev's headers must be those of the nginx that will load the module.
grep -q "NGINX_VERSION *\"$version\"" "$src/src/core/nginx.h" || die "nginx-dev is not nginx $version"

work=$(mktemp -d /tmp/clb-nginx-module.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp -a "$src/." "$work/"
(
  cd "$work"
  . ./conf_flags
  ./configure --with-cc-opt="-O2 -fPIC" --with-ld-opt="-fPIC" "${NGX_CONF_FLAGS[@]}" \
    --add-dynamic-module="$dir" >"$work/configure.log" 2>&1 || { tail -20 "$work/configure.log" >&2; exit 1; }
  make -s -j"$(nproc)" -f objs/Makefile modules >"$work/make.log" 2>&1 || { tail -30 "$work/make.log" >&2; exit 1; }
)
# The signature nginx compares when it loads a module (NGX_MODULE_SIGNATURE, a string in the .so).
sig=$(grep -aoE '[0-9]+,[0-9]+,[0-9]+,[01]{20,}' "$work/objs/ngx_http_clb_metrics_module.so" | head -1)
[ -n "$sig" ] || die "no module signature in the built module"
install -m 0644 "$work/objs/ngx_http_clb_metrics_module.so" "$so.tmp"
strip --strip-unneeded "$so.tmp"
echo "$version $sig" >"$so.abi.tmp"
mv "$so.tmp" "$so"
mv "$so.abi.tmp" "$so.abi"
echo "build-nginx-module: built $so for nginx $version"
