// A context-switch storm: two processes hand one byte back and forth over
// two pipes, so every hand-off blocks one and wakes the other. Both run on
// CPU 0, so each hand-off is one context switch from one to the other
// (several hundred thousand a second), not a wake-up of an idle CPU.
//
//   storm SECONDS
//
// Prints "round_trips=N seconds=S" for the parent's side.
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 5;
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    CPU_SET(0, &cpus);
    if (sched_setaffinity(0, sizeof cpus, &cpus)) return 1;
    int there[2], back[2];
    if (pipe(there) || pipe(back)) return 1;
    char byte = 'x';
    pid_t child = fork();
    if (child == 0) {
        close(there[1]);
        close(back[0]);
        // Echo until the parent closes its end.
        while (read(there[0], &byte, 1) == 1)
            if (write(back[1], &byte, 1) != 1) break;
        _exit(0);
    }
    close(there[0]);
    close(back[1]);
    long trips = 0;
    double start = now(), end = start + seconds;
    while (1) {
        if (write(there[1], &byte, 1) != 1 || read(back[0], &byte, 1) != 1) return 1;
        trips++;
        if ((trips & 1023) == 0 && now() >= end) break;
    }
    double took = now() - start;
    close(there[1]);
    waitpid(child, NULL, 0);
    printf("round_trips=%ld seconds=%.3f\n", trips, took);
    return 0;
}
