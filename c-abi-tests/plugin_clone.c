/* plugin_clone: a plugin that starts threads with clone() itself. Loaded with RTLD_DEEPBIND, its
 * clone() binds to the C library's own, not to an interposer's. */
#define _GNU_SOURCE
#include <sched.h>
#include <sys/types.h>

__attribute__((visibility("default"))) int plugin_clone(int (*fn)(void *), void *stack, int flags, void *arg,
                                                        pid_t *ptid, void *tls, pid_t *ctid)
{
    return clone(fn, stack, flags, arg, ptid, tls, ctid);
}
