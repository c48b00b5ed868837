# bash under the shim: traps on real-time signals from SIGRTMIN up to SIGRTMAX-1 (the shim keeps
# only the top one), raised by bash itself and by a child while bash waits for it. Signals are
# named relative to RTMIN and RTMAX, never printed as numbers: the output means the same
# wherever the top signal is hidden. Usage: bash bash_rt.sh
set -euo pipefail
for sig in RTMIN RTMIN+1 RTMIN+2 RTMIN+7 RTMIN+15 RTMAX-14 RTMAX-7 RTMAX-2 RTMAX-1; do
  trap "echo got $sig" "$sig"
  kill -s "$sig" $$
done
trap 'echo got RTMIN+3 from a child' RTMIN+3
( kill -s RTMIN+3 $$ ) &
# The trap may interrupt the wait for every child (status 128+n): then wait again.
wait || wait
# Every real-time signal below the top one: each handled, raised and received.
first=$(kill -l RTMIN) top=$(kill -l RTMAX)
missing=()
for ((n = first; n < top; n++)); do
  name="RTMIN+$((n - first))"
  got=no
  trap 'got=yes' "$name"
  kill -s "$name" $$
  trap - "$name"
  [ "$got" = yes ] || missing+=("$name")
done
echo "RTMIN..RTMAX-1: ${missing[*]:-all received}"
