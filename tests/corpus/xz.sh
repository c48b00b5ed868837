# xz under the shim: compress a file of a few MB in 1 MiB blocks with two threads (liblzma's
# worker threads), decompress it (with two threads where liblzma can), compare with the original.
# Usage: bash xz.sh WORKDIR (which holds `input`)
set -euo pipefail
cd "$1"
xz -T2 -3 --block-size=1MiB -k input
xz --robot -l input.xz | cut -f 1-5
sha256sum input.xz
xz -T2 -d -c input.xz > roundtrip
cmp input roundtrip
echo "xz round trip: identical"
