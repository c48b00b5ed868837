# gcc under the shim: compile and link a threaded C program and a library (the driver, cc1, as
# and ld all run under it), print what was built, and run the program.
# Usage: bash gcc.sh WORKDIR CORPUS_DIR
set -euo pipefail
cd "$1"
gcc -O2 -Wall -Wextra -Werror -pthread -o threads "$2/threads.c" -ldl
gcc -O2 -Wall -Wextra -Werror -shared -fPIC -o plugin.so "$2/plugin.c"
sha256sum threads plugin.so
./threads ./plugin.so
