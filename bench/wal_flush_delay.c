/*
 * An emulated slower WAL device for the benchmark (not part of the tests): preloaded into a
 * PostgreSQL cluster by scripts/cluster.sh when CAMPFIRE_WAL_FLUSH_DELAY_US is set, it makes every
 * fdatasync() (how PostgreSQL flushes its WAL on Linux, wal_sync_method = fdatasync) take that
 * many microseconds longer, as on a network disk. The local disk the benchmark usually runs on
 * flushes in ~0.25 ms; a network-attached volume can take a millisecond or more, and how a design
 * waits on its flushes (one at a time under a lock, or grouped) decides how it fares there. Other
 * syncs (data files at checkpoints, which use fsync()) are left alone.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <time.h>

int fdatasync(int fd)
{
    static int (*real_fdatasync)(int);
    static long delay_us = -1;

    if (real_fdatasync == NULL)
        real_fdatasync = (int (*)(int)) dlsym(RTLD_NEXT, "fdatasync");
    if (delay_us < 0)
    {
        const char *setting = getenv("CAMPFIRE_WAL_FLUSH_DELAY_US");

        delay_us = setting ? atol(setting) : 0;
    }
    int result = real_fdatasync(fd);
    int saved_errno = errno;

    if (delay_us > 0)
    {
        struct timespec delay = {delay_us / 1000000, (delay_us % 1000000) * 1000};

        /* Backends are signalled often (latches): sleep out the rest after each one. */
        while (nanosleep(&delay, &delay) == -1 && errno == EINTR)
            ;
    }
    errno = saved_errno;
    return result;
}
