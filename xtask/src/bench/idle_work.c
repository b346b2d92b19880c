/* One of the many mostly idle processes: wakes every PERIOD_MS, burns
 * about BURN_US of CPU in its own function (so the profiler samples it
 * now and then and has to name it), and sleeps again, until killed.
 * Each copy is linked with its own build id. With PERIOD_MS 0 it burns
 * once and exits (the churn's short-lived process).
 * Usage: idle_work PERIOD_MS BURN_US */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

__attribute__((noinline)) static uint64_t burn(double us) {
    uint64_t x = 1;
    double end = now_us() + us;
    while (now_us() < end)
        for (int i = 0; i < 1000; i++)
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    return x;
}

int main(int argc, char **argv) {
    long period_ms = argc > 1 ? atol(argv[1]) : 1000;
    double burn_us = argc > 2 ? atof(argv[2]) : 1000;
    struct timespec pause = {period_ms / 1000, (period_ms % 1000) * 1000000L};
    volatile uint64_t sink = 0;
    if (period_ms == 0) {
        sink = burn(burn_us);
        return 0;
    }
    for (;;) {
        sink += burn(burn_us);
        nanosleep(&pause, NULL);
    }
}
