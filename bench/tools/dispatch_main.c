/*
 * Profiling aid for bench/callgrind.py, preloaded into the gateway under valgrind only.
 *
 * Swift's async main ends in dispatch_main(), which exits the main thread with
 * pthread_exit and parks it in libdispatch's signal loop; valgrind 3.19 crashes
 * ("the 'impossible' happened") when the next thread is created after that. This
 * dispatch_main drains the main queue on the main thread instead, so the process
 * runs as it would, with callgrind counting its instructions.
 */
#include <poll.h>
#include <stdint.h>
#include <unistd.h>

extern int _dispatch_get_main_queue_handle_4CF(void);
extern void _dispatch_main_queue_callback_4CF(void *message);

void dispatch_main(void) {
    int fd = _dispatch_get_main_queue_handle_4CF();
    for (;;) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, 100) > 0 && (p.revents & POLLIN)) {
            uint64_t value;
            (void)!read(fd, &value, sizeof value);
        }
        _dispatch_main_queue_callback_4CF(0);
    }
}
