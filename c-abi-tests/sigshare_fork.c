/* sigshare_fork: fork() while another thread changes the program's disposition of rseqrt's
 * reserved signal, and the child still runs that disposition.
 *
 *   sigshare_fork FORKS
 *
 * rseqrt keeps the program's disposition of the shared number in a sequence lock that
 * sigaction() makes odd while it writes. A fork() can copy it odd: the writer thread does not
 * exist in the child, so without rseqrt's fork-child reset the child's first delivery of the
 * number would wait for that writer for ever. One thread sets the disposition to one of two
 * handlers in a loop; the main thread forks FORKS times; each child raises the number and must
 * run one of the two handlers, then exit 0. A child that has not exited after 2 s is killed and
 * counts as hung (a child that runs a handler exits within a millisecond). Exit 0: every child
 * ran a handler; 1: some child hung or failed; 2: setup. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <rseqrt.h>

static volatile sig_atomic_t ran;
static atomic_int stop;
static atomic_long writes;
static int reserved;

static void handler_one(int sig) { (void)sig; ran = 1; }
static void handler_two(int sig) { (void)sig; ran = 2; }

static void *writer(void *arg)
{
    (void)arg;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    while (!atomic_load(&stop)) {
        sa.sa_handler = (atomic_load(&writes) & 1) ? handler_two : handler_one;
        if (sigaction(reserved, &sa, NULL) != 0) {
            fprintf(stderr, "sigaction: %s\n", strerror(errno));
            exit(2);
        }
        atomic_fetch_add(&writes, 1);
    }
    return NULL;
}

/* The child's status, waiting at most 2 s (then SIGKILL): -1 when it hung. */
static int wait_child(pid_t pid)
{
    for (int i = 0; i < 20000; i++) {
        int status;
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            return status;
        nanosleep(&(struct timespec){.tv_nsec = 100 * 1000}, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

int main(int argc, char **argv)
{
    int forks = argc == 2 ? atoi(argv[1]) : 0;
    reserved = rseqrt_signal();
    if (forks <= 0 || reserved <= 0) {
        fprintf(stderr, "usage: %s FORKS (rseqrt must reserve a signal: %d)\n", argv[0], reserved);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler_one;
    sigemptyset(&sa.sa_mask);
    if (sigaction(reserved, &sa, NULL) != 0)
        return 2;
    pthread_t t;
    if (pthread_create(&t, NULL, writer, NULL) != 0)
        return 2;
    while (atomic_load(&writes) < 1000)
        sched_yield();
    int hung = 0, failed = 0;
    for (int i = 0; i < forks; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "fork: %s\n", strerror(errno));
            return 2;
        }
        if (pid == 0) {
            raise(reserved);
            _exit(ran == 1 || ran == 2 ? 0 : 3);
        }
        int status = wait_child(pid);
        if (status == -1)
            hung++;
        else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            failed++;
    }
    atomic_store(&stop, 1);
    pthread_join(t, NULL);
    printf("forks: %d while another thread made %ld sigaction() calls on signal %d: %d children hung, %d failed\n",
           forks, atomic_load(&writes), reserved, hung, failed);
    return hung || failed ? 1 : 0;
}
