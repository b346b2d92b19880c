/* The CPU-bound benchmark workload: THREADS threads each doing the same
 * fixed amount of hashing through a few call levels, then exit. Its wall
 * time, alone and under each profiler, is the benchmark's measure.
 * Usage: cpu_work THREADS ROUNDS */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static long rounds;

__attribute__((noinline)) static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

__attribute__((noinline)) static uint64_t inner(uint64_t seed) {
    for (int i = 0; i < 1000; i++)
        seed = mix(seed + (uint64_t)i);
    return seed;
}

__attribute__((noinline)) static uint64_t outer(uint64_t seed) {
    for (long r = 0; r < rounds; r++)
        seed = inner(seed) + (uint64_t)r;
    return seed;
}

static void *worker(void *arg) {
    uint64_t *seed = arg;
    *seed = outer(*seed);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s THREADS ROUNDS\n", argv[0]);
        return 2;
    }
    int threads = atoi(argv[1]);
    rounds = atol(argv[2]);
    pthread_t ids[64];
    uint64_t seeds[64];
    if (threads < 1 || threads > 64)
        return 2;
    for (int t = 0; t < threads; t++) {
        seeds[t] = (uint64_t)t + 1;
        pthread_create(&ids[t], NULL, worker, &seeds[t]);
    }
    uint64_t sum = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(ids[t], NULL);
        sum ^= seeds[t];
    }
    printf("%llu\n", (unsigned long long)sum);
    return 0;
}
