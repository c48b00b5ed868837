# bash under the shim: a trap on SIGRTMAX, and on every real-time signal from SIGRTMIN to
# SIGRTMAX. While the shim reserves the top signal and SIGRTMAX still names it, bash's trap on
# it is refused (bash ignores the error) and the signal goes to the shim's handler: lost.
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
