/* The README's unmodified program (examples/unload.c), as a binary built against glibc older
 * than 2.34 sees it: its dlclose reference is dlclose@GLIBC_2.2.5. The preload shim must
 * interpose that version too. */
__asm__(".symver dlclose,dlclose@GLIBC_2.2.5");
#include "../examples/unload.c"
