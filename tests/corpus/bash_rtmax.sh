# bash under the shim: a trap on SIGRTMAX, and on every real-time signal from SIGRTMIN to
# SIGRTMAX. bash 5.2 fixes RTMAX at 64 when it is built, the shim's reserved signal: the shim
# shares the number, so the trap runs as without it (before, it was refused and the signal lost).
# Usage: bash bash_rtmax.sh
set -euo pipefail
got=no
trap 'got=yes' RTMAX
kill -s RTMAX $$
echo "trap RTMAX: $([ "$got" = yes ] && echo received || echo not received)"
first=$(kill -l RTMIN) top=$(kill -l RTMAX)
missing=()
for ((n = first; n <= top; n++)); do
  if ((n == top)); then name=RTMAX; else name="RTMIN+$((n - first))"; fi
  got=no
  trap 'got=yes' "$name"
  kill -s "$name" $$
  trap - "$name"
  [ "$got" = yes ] || missing+=("$name")
done
echo "RTMIN..RTMAX: ${missing[*]:-all received}"
