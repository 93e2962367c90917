#!/usr/bin/env bash
# pyarrow-sid.sh [DIR] makes a Python with pyarrow (and pyarrow.flight) for the tests that run
# the README's pyarrow clients, and prints the command that runs it (its last line).
#
# PyPI is out of reach on the machines this project is built on and Debian 12 has no
# python3-pyarrow, but Debian unstable does (Apache Arrow 25): the script bootstraps a minimal
# sid root in DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/wattagg/pyarrow-sid) with Debian's
# debootstrap and installs python3-pyarrow and python3-numpy there. The interpreter runs in it
# with chroot, so it shares the host's network: a server on 127.0.0.1 is reachable. It needs
# root (chroot, debootstrap) and about 800 MB; a second run reuses the root. The tests take the
# command from WATTAGG_PYARROW:
#
#	export WATTAGG_PYARROW="$(scripts/pyarrow-sid.sh | tail -1)"
#
# Debian unstable moves daily; when the bootstrap fails, the script says so and exits non-zero,
# and .ci/run carries on without the pyarrow tests (they skip when WATTAGG_PYARROW is unset).
set -euo pipefail
dir=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/wattagg/pyarrow-sid}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
check='import pyarrow, pyarrow.flight, numpy; print("pyarrow", pyarrow.__version__, "numpy", numpy.__version__)'

if [ -x "$dir/usr/bin/python3" ] && chroot "$dir" python3 -c "$check" >&2; then
	echo "chroot $dir python3"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "pyarrow-sid.sh: needs root (debootstrap and chroot)" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! command -v debootstrap >/dev/null; then
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if [ ! -x "$dir/usr/bin/apt-get" ]; then
	rm -rf "$dir.part"
	mkdir -p "$(dirname "$dir")"
	echo "pyarrow-sid.sh: bootstrapping Debian sid into $dir (about a minute)" >&2
	if ! debootstrap --variant=minbase sid "$dir.part" "$mirror" >"$log" 2>&1; then
		tail -20 "$log" >&2
		echo "pyarrow-sid.sh: debootstrap of sid failed (log above)" >&2
		exit 1
	fi
	rm -rf "$dir"
	mv "$dir.part" "$dir"
fi
echo "pyarrow-sid.sh: installing python3-pyarrow python3-numpy in $dir" >&2
# The mirror this project reaches may serve a sid whose Release file is past its Valid-Until
# date (seen: 27 days): accept it, as debootstrap does.
apt=(chroot "$dir" apt-get -o Acquire::Check-Valid-Until=false)
if ! { "${apt[@]}" update -qq && "${apt[@]}" install -y -qq --no-install-recommends python3-pyarrow python3-numpy; } >"$log" 2>&1; then
	tail -20 "$log" >&2
	echo "pyarrow-sid.sh: apt-get install python3-pyarrow in sid failed (log above)" >&2
	exit 1
fi
chroot "$dir" python3 -c "$check" >&2
echo "chroot $dir python3"
