/* The physical floor of the securememory benchmarks: timing loops in C, compiled at run time
 * (`cc -O2 -shared -fPIC`) and loaded into the benchmark process with ctypes.
 *
 * Each floor_* timing function runs a whole batch in C and returns the nanoseconds per operation
 * (CLOCK_MONOTONIC, the clock of Python's perf_counter_ns), or a negative errno on failure. The
 * ctypes call around a batch is outside the timed region, and it releases the GIL: so the floor
 * is measured in the same process and under the same conditions (a busy thread, two threads at
 * once) as the Python code it is compared with, round by round.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static long page_size(void) { return sysconf(_SC_PAGESIZE); }

/* A thread that is busy without holding Python's GIL: ctypes releases the GIL for this call,
 * which spins on its CPU until *stop becomes non-zero. */
void spin_until(volatile int *stop) {
    while (!__atomic_load_n(stop, __ATOMIC_RELAXED)) {
    }
}

/* One locked page, no-access, as a secret's page is between accesses, between two unlocked
 * no-access guard pages so that its VMA never merges with a neighbour (a merged VMA would make
 * each mprotect split and re-merge it). NULL on failure. */
void *floor_page_new(void) {
    long page = page_size();
    unsigned char *base = mmap(NULL, 3 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return NULL;
    unsigned char *p = base + page;
    if (mprotect(p, page, PROT_READ | PROT_WRITE) != 0 || mlock(p, page) != 0) goto fail;
    memset(p, 0x5a, page);
    if (mprotect(p, page, PROT_NONE) != 0) goto fail;
    return p;
fail:
    munmap(base, 3 * page);
    return NULL;
}

void floor_page_free(void *p) {
    long page = page_size();
    munmap((unsigned char *)p - page, 3 * page);
}

/* mprotect(PROT_READ) + mprotect(PROT_NONE) of one page, batch times. */
double floor_mprotect_pairs(void *p, long batch) {
    long page = page_size();
    uint64_t t0 = now_ns();
    for (long i = 0; i < batch; i++) {
        if (mprotect(p, page, PROT_READ) != 0) return -errno;
        if (mprotect(p, page, PROT_NONE) != 0) return -errno;
    }
    return (double)(now_ns() - t0) / (double)batch;
}

/* mmap + mlock + munlock + munmap of one page, batch times. */
double floor_map_lock_cycles(long batch) {
    long page = page_size();
    uint64_t t0 = now_ns();
    for (long i = 0; i < batch; i++) {
        void *p = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return -errno;
        if (mlock(p, page) != 0) return -errno;
        if (munlock(p, page) != 0) return -errno;
        if (munmap(p, page) != 0) return -errno;
    }
    return (double)(now_ns() - t0) / (double)batch;
}

/* explicit_bzero of 32 bytes, batch times. */
double floor_bzero_32(long batch) {
    unsigned char buf[32];
    uint64_t t0 = now_ns();
    for (long i = 0; i < batch; i++) explicit_bzero(buf, sizeof buf);
    return (double)(now_ns() - t0) / (double)batch;
}

#ifndef SYS_memfd_secret
#define SYS_memfd_secret 447
#endif
#include <fcntl.h>
#include <sys/syscall.h>

/* N live regions in one of securememory's layouts, and pages picked among them at random. */
#define SAMPLE 1024

struct regions {
    long n, mapped, inner_offset, inner_len;
    unsigned char **inner; /* each region's inner pages */
    unsigned char *picks[SAMPLE];
};

void floor_regions_free(struct regions *r) {
    for (long i = 0; i < r->n; i++)
        if (r->inner[i]) munmap(r->inner[i] - r->inner_offset, (size_t)r->mapped);
    free(r->inner);
    free(r);
}

/* One region of the layout (the whole mapping `mapped` bytes, the inner pages at `inner_offset`)
 * made with the system calls securememory makes, in its order: mmap no-access; for secretmem, a
 * memfd_secret file of the inner pages' size mapped over them (closed: the mapping keeps it);
 * MADV_DONTDUMP and MADV_DONTFORK over the whole; else mprotect RW and mlock of the inner pages;
 * write; mprotect none. 0 or -errno. */
static int region_new(struct regions *r, long i, int secretmem) {
    size_t len = (size_t)r->inner_len;
    unsigned char *base = mmap(NULL, (size_t)r->mapped, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return -errno;
    unsigned char *p = base + r->inner_offset;
    r->inner[i] = p;
    if (secretmem) {
        int fd = (int)syscall(SYS_memfd_secret, (unsigned int)O_CLOEXEC);
        if (fd < 0) return -errno;
        int bad = ftruncate(fd, (off_t)len) != 0 ||
                  mmap(p, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED;
        int e = errno;
        close(fd);
        if (bad) return -e;
    }
    if (madvise(base, (size_t)r->mapped, MADV_DONTDUMP) != 0 ||
        madvise(base, (size_t)r->mapped, MADV_DONTFORK) != 0)
        return -errno;
    if (!secretmem && (mprotect(p, len, PROT_READ | PROT_WRITE) != 0 || mlock(p, len) != 0))
        return -errno;
    memset(p, 0x5a, len);
    if (mprotect(p, len, PROT_NONE) != 0) return -errno;
    return 0;
}

/* N regions of a securememory layout (see region_new); NULL with errno set on failure. */
struct regions *floor_regions_new(long n, long mapped, long inner_offset, long inner_len,
                                  int secretmem, uint64_t seed) {
    struct regions *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->n = n;
    r->mapped = mapped;
    r->inner_offset = inner_offset;
    r->inner_len = inner_len;
    r->inner = calloc((size_t)n, sizeof *r->inner);
    if (!r->inner) {
        free(r);
        return NULL;
    }
    int e = 0;
    for (long i = 0; i < n && e == 0; i++) e = -region_new(r, i, secretmem);
    if (e != 0) {
        floor_regions_free(r);
        errno = e;
        return NULL;
    }
    uint64_t x = seed | 1; /* xorshift64 */
    for (int i = 0; i < SAMPLE; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r->picks[i] = r->inner[x % (uint64_t)n];
    }
    return r;
}

/* The mprotect pair on the inner pages of regions picked at random, batch times. */
double floor_mprotect_among(struct regions *r, long batch) {
    size_t len = (size_t)r->inner_len;
    uint64_t t0 = now_ns();
    for (long i = 0; i < batch; i++) {
        unsigned char *p = r->picks[i % SAMPLE];
        if (mprotect(p, len, PROT_READ) != 0) return -errno;
        if (mprotect(p, len, PROT_NONE) != 0) return -errno;
    }
    return (double)(now_ns() - t0) / (double)batch;
}

/* sodium_malloc(32) + sodium_free, batch times, called from C through the library's own
 * function pointers (handed over by ctypes): the peer of a guarded create+close without any
 * call overhead of ours. */
double floor_sodium_malloc_free(void *(*sodium_malloc)(size_t), void (*sodium_free)(void *),
                                long batch) {
    uint64_t t0 = now_ns();
    for (long i = 0; i < batch; i++) {
        void *p = sodium_malloc(32);
        if (p == NULL) return -ENOMEM;
        sodium_free(p);
    }
    return (double)(now_ns() - t0) / (double)batch;
}

/* The floor of a secretmem secret's life: memfd_secret + ftruncate(1 page) + mmap + munmap +
 * close, batch times (the kernel's part; the pages are never touched, as ours are by the
 * canary and the data). */
double floor_secretmem_cycles(long batch) {
    long page = page_size();
    uint64_t t0 = now_ns();
    for (long i = 0; i < batch; i++) {
        int fd = (int)syscall(SYS_memfd_secret, (unsigned int)O_CLOEXEC);
        if (fd < 0) return -errno;
        if (ftruncate(fd, page) != 0) return -errno;
        void *p = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) return -errno;
        if (munmap(p, page) != 0) return -errno;
        close(fd);
    }
    return (double)(now_ns() - t0) / (double)batch;
}

/* memguard's published Enclave.Open design, its system calls only (no crypto, which only adds
 * to it): each open makes two LockedBuffers (one for the key recombined from the coffer, one for
 * the plaintext), each mmap'ed with a guard page on either side, the inner page mlock'ed and
 * the guard pages made no-access; the key buffer is destroyed before Open returns and the
 * plaintext buffer when the caller is done (munlock + munmap each). Issue 11. */
static int memguard_buffer(unsigned char **base, long page) {
    *base = mmap(NULL, 3 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (*base == MAP_FAILED) return -errno;
    unsigned char *inner = *base + page;
    if (mprotect(*base, page, PROT_NONE) != 0 || mprotect(inner + page, page, PROT_NONE) != 0 ||
        mlock(inner, page) != 0) {
        int e = errno;
        munmap(*base, 3 * page);
        return -e;
    }
    inner[0] = 1;
    return 0;
}

static int memguard_destroy(unsigned char *base, long page) {
    unsigned char *inner = base + page;
    explicit_bzero(inner, 32);
    if (munlock(inner, page) != 0 || munmap(base, 3 * page) != 0) return -errno;
    return 0;
}

double floor_memguard_opens(long batch) {
    long page = page_size();
    unsigned char *key, *plain;
    uint64_t t0 = now_ns();
    for (long i = 0; i < batch; i++) {
        int e = memguard_buffer(&key, page);
        if (e) return e;
        e = memguard_buffer(&plain, page);
        if (e) return e;
        if ((e = memguard_destroy(key, page)) != 0) return e;
        if ((e = memguard_destroy(plain, page)) != 0) return e;
    }
    return (double)(now_ns() - t0) / (double)batch;
}
