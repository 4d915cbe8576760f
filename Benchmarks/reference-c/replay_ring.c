/*
 * A plain C anti-replay window: the RFC 6479 ring of 64-bit blocks with one spare block,
 * RFC 4303 Appendix A2.2 ESN inference (Seqh stays 0 in case B when Th = 0), check before
 * the integrity check and update after it. The yardstick for `ikeha-demo bench replay`:
 * same command line, same packet patterns, same output line.
 *
 *   replay_ring --window W [--esn] --pattern inorder|jitter|replay --count N
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct window {
    uint64_t top;
    uint64_t size;
    uint64_t mask; /* blocks - 1 */
    int esn;
    uint64_t *blocks;
};

static uint64_t infer(const struct window *w, uint32_t seql) {
    if (!w->esn) return seql;
    uint32_t tl = (uint32_t)w->top, th = (uint32_t)(w->top >> 32);
    uint32_t bl = tl - (uint32_t)w->size + 1;
    uint32_t seqh;
    if (tl >= (uint32_t)w->size - 1)
        seqh = (seql >= bl || th == UINT32_MAX) ? th : th + 1;
    else
        seqh = seql >= bl ? (th == 0 ? 0 : th - 1) : th;
    return ((uint64_t)seqh << 32) | seql;
}

/* 0: may be new, 1: replayed, 2: stale */
static int check(const struct window *w, uint64_t seq) {
    if (seq > w->top) return 0;
    if (seq == 0 || w->top - seq >= w->size) return 2;
    return (w->blocks[(seq >> 6) & w->mask] >> (seq & 63)) & 1;
}

static int commit(struct window *w, uint64_t seq) {
    if (seq > w->top) {
        if (!w->esn && seq > UINT32_MAX) return 2;
        uint64_t cur = w->top >> 6, diff = (seq >> 6) - cur;
        if (diff > w->mask + 1) diff = w->mask + 1;
        for (uint64_t i = 1; i <= diff; i++) w->blocks[(cur + i) & w->mask] = 0;
        w->top = seq;
    } else if (seq == 0 || w->top - seq >= w->size) {
        return 2;
    }
    uint64_t *block = &w->blocks[(seq >> 6) & w->mask];
    uint64_t bit = 1ULL << (seq & 63);
    if (*block & bit) return 1;
    *block |= bit;
    return 0;
}

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

__attribute__((noinline)) static long run(struct window *w, const uint32_t *wires, long count) {
    long accepted = 0;
    for (long i = 0; i < count; i++) {
        uint64_t seq = infer(w, wires[i]);
        if (check(w, seq) == 0 && commit(w, seq) == 0) accepted++;
    }
    return accepted;
}

int main(int argc, char **argv) {
    uint64_t size = 0;
    long count = 0;
    int esn = 0;
    const char *pattern = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--window") && i + 1 < argc) size = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--count") && i + 1 < argc) count = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--pattern") && i + 1 < argc) pattern = argv[++i];
        else if (!strcmp(argv[i], "--esn")) esn = 1;
        else { fprintf(stderr, "unknown argument %s\n", argv[i]); return 2; }
    }
    if (size < 32 || count <= 0 || !pattern) {
        fprintf(stderr, "usage: replay_ring --window W [--esn] --pattern inorder|jitter|replay --count N\n");
        return 2;
    }
    uint64_t needed = (size + 63) / 64 + 1, blocks = 1;
    while (blocks < needed) blocks <<= 1;
    struct window w = {0, size, blocks - 1, esn, calloc(blocks, sizeof(uint64_t))};
    uint32_t *wires = malloc(sizeof(uint32_t) * (size_t)count);
    uint64_t base = esn ? 0xFFFF0000ULL : 0, state = 42;
    for (long i = 0; i < count; i++) {
        uint64_t seq;
        if (!strcmp(pattern, "inorder")) seq = base + 1 + (uint64_t)i;
        else if (!strcmp(pattern, "jitter")) seq = base + 1 + (uint64_t)i + splitmix64(&state) % (size / 2);
        else if (!strcmp(pattern, "replay")) seq = base + 1 + (uint64_t)i / 2;
        else { fprintf(stderr, "unknown pattern %s\n", pattern); return 2; }
        wires[i] = (uint32_t)seq;
    }
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    long accepted = run(&w, wires, count);
    clock_gettime(CLOCK_MONOTONIC, &end);
    double ns = (double)(end.tv_sec - start.tv_sec) * 1e9 + (double)(end.tv_nsec - start.tv_nsec);
    printf("accepted=%ld ns_per_op=%.3f\n", accepted, ns / (double)count);
    free(wires);
    free(w.blocks);
    return 0;
}
