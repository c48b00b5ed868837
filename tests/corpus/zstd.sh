# zstd under the shim: compress a file of a few MB in 1 MiB jobs with two worker threads,
# decompress it, compare with the original. Usage: bash zstd.sh WORKDIR (which holds `input`)
set -euo pipefail
cd "$1"
zstd -q -T2 -3 -B1048576 input -o input.zst
sha256sum input.zst
zstd -q -d input.zst -o roundtrip
cmp input roundtrip
echo "zstd round trip: identical"
