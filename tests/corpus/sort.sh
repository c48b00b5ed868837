# sort under the shim: a file larger than sort's buffer, so that it sorts buffer by buffer into
# temporary files (TMPDIR is the work directory) and merges them; each buffer holds enough lines
# (GNU sort's threshold is 128 Ki lines per thread) that --parallel=2 sorts it in two threads.
# Measured with strace on coreutils 9.1: -S 12M on this input creates 4 threads and 5
# temporary files; -S 1M creates none (its buffers are below the threshold).
# Usage: bash sort.sh WORKDIR (which holds `input`)
set -euo pipefail
cd "$1"
sort --parallel=2 -S 12M -T . -o sorted input
sort -c sorted
wc -l < sorted
sha256sum sorted
sort --parallel=2 -S 12M -T . -u -r input | sha256sum
