/* securememory's compiled core: the only code that makes a system call on a secret's pages.
 *
 * It owns a Region: some pages with a layout (guard pages, inner pages, a canary, the data) and a
 * backing (private anonymous memory, a memfd_secret file, or a sealed memfd), and every system
 * call made on them. It also owns the access transitions: the first access to begin makes the
 * inner pages readable, the last to end makes them no-access again, each inside one C call made
 * with the GIL held, so no Python signal handler (and no other Python thread) can run between the
 * mprotect and the count that goes with it.
 *
 * State is protected by the GIL; the only other lock is the mutex of the condition a close()
 * waits on, which is never held while waiting for the GIL.
 *
 * Linux is where this is built and tested. The macOS branches (minherit, memset_s, getentropy; no
 * MADV_DONTDUMP, no memfd) are written from the man pages and are not tested here.
 */
#define PY_SSIZE_T_CLEAN
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* as pyconfig.h of 3.9 and 3.10 defines it: no redefinition warning */
#endif
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
#include <sys/prctl.h>
#include <sys/syscall.h>
#ifndef MADV_DONTDUMP
#define MADV_DONTDUMP 16
#endif
#ifndef MADV_DONTFORK
#define MADV_DONTFORK 10
#endif
#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#endif
#ifndef MFD_ALLOW_SEALING
#define MFD_ALLOW_SEALING 0x0002U
#endif
#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#define F_SEAL_SEAL 0x0001
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#endif
#if !defined(SYS_memfd_secret) && (defined(__x86_64__) || defined(__aarch64__))
#define SYS_memfd_secret 447
#endif
#endif /* __linux__ */

#ifdef __APPLE__
#include <mach/vm_inherit.h>
#endif

#ifndef MAP_ANONYMOUS
#define MAP_ANONYMOUS MAP_ANON
#endif

/* -- constants shared with the region layer (see _native.pyi) -------------------------------- */

enum { BACKING_ANONYMOUS = 0, BACKING_SECRETMEM = 1, BACKING_MEMFD = 2 };
enum { ST_FILLING = 0, ST_OPEN = 1, ST_CLOSING = 2, ST_CLOSED = 3, ST_QUARANTINED = 4, ST_INERT = 5 };
/* F_PURGED: purge() wiped it while it was being filled or accessed; the fill's end or the last
 * access's end then finishes the job (frees it, or unmaps what purge left mapped). */
enum { F_INHERITABLE = 1, F_OWNER = 2, F_CANARY_FAILED = 4, F_LINKED = 8, F_EXITED = 16, F_PURGED = 32 };
enum { EXPORT_NONE = 0, EXPORT_READ = 1, EXPORT_WRITE = 2 };
#define CANARY_HALF 16

/* -- process-wide state (GIL) ----------------------------------------------------------------- */

typedef struct Holder {
    struct Holder *next;
    unsigned long thread; /* PyThread_get_thread_ident() of the thread that began the access */
    PyObject *context;    /* the contextvars.Context it ran in (a task under asyncio), or NULL */
    pid_t pid;            /* the process it began in: after a fork, the child's copy is inert */
} Holder;

typedef struct RegionObject {
    PyObject_HEAD
    /* What an access reads and writes, together in the first 80 bytes (two cache lines at
     * most): an access of one of 10,000 cold secrets then misses on no other line of it. */
    unsigned char *inner; /* the locked, protected pages */
    unsigned char *data;  /* the secret's bytes */
    size_t inner_len, size, canary_len;
    Holder *holders; /* the accesses running now */
    pid_t pid;       /* the process that mapped it */
    uint32_t count, exports;
    uint8_t backing, state, export_mode, flags;
    /* the rest */
    unsigned char *base; /* the whole mapping */
    size_t mapped, inner_offset, data_offset;
    struct RegionObject *prev, *next; /* every region this process has mapped and not unmapped */
    PyObject *spec;                   /* what the layer above says this region is (or None) */
    PyObject *site_file;              /* where the user created it, for the ResourceWarning */
    int site_line;
    int fd; /* a shareable region's file descriptor, else -1 */
} RegionObject;

static pid_t current_pid;
static RegionObject *regions; /* head of the list of mapped regions */
static Py_ssize_t live_count;
static unsigned long long created_total;
static size_t bytes_mapped, bytes_locked, bytes_quarantined;
static int exiting;
static size_t page_size;
static pthread_mutex_t wait_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wait_cond = PTHREAD_COND_INITIALIZER;

static PyObject *SecureMemoryError, *SecretClosedError, *CanaryError;
static PyObject *explain_hook; /* Python callable (op, errno, length) -> exception instance */
static PyObject *release_method; /* memoryview.release, unbound */

static PyTypeObject RegionType, AccessType;

/* -- small helpers ----------------------------------------------------------------------------- */

/* A wipe the compiler cannot remove: the barrier says the memory is read afterwards. */
static void secure_zero(void *p, size_t n) {
    if (n == 0) return;
#ifdef __APPLE__
    memset_s(p, n, 0, n);
#else
    memset(p, 0, n);
    __asm__ __volatile__("" : : "r"(p) : "memory");
#endif
}

/* Vector registers that copied or compared secret bytes keep them until other code overwrites
 * them, and a signal frame or the dynamic linker's lazy binding can spill them onto the stack:
 * zero them when an access ends. All vector registers are caller-saved in the SysV ABI. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
static int cpu_avx, cpu_avx512;
__attribute__((noinline, target("avx"))) static void scrub_avx(void) {
    __asm__ __volatile__("vzeroall" ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",
                         "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14",
                         "xmm15", "memory");
}
__attribute__((noinline, target("avx512f"))) static void scrub_avx512_high(void) {
    __asm__ __volatile__(
        "vpxord %%zmm16, %%zmm16, %%zmm16\n\tvpxord %%zmm17, %%zmm17, %%zmm17\n\t"
        "vpxord %%zmm18, %%zmm18, %%zmm18\n\tvpxord %%zmm19, %%zmm19, %%zmm19\n\t"
        "vpxord %%zmm20, %%zmm20, %%zmm20\n\tvpxord %%zmm21, %%zmm21, %%zmm21\n\t"
        "vpxord %%zmm22, %%zmm22, %%zmm22\n\tvpxord %%zmm23, %%zmm23, %%zmm23\n\t"
        "vpxord %%zmm24, %%zmm24, %%zmm24\n\tvpxord %%zmm25, %%zmm25, %%zmm25\n\t"
        "vpxord %%zmm26, %%zmm26, %%zmm26\n\tvpxord %%zmm27, %%zmm27, %%zmm27\n\t"
        "vpxord %%zmm28, %%zmm28, %%zmm28\n\tvpxord %%zmm29, %%zmm29, %%zmm29\n\t"
        "vpxord %%zmm30, %%zmm30, %%zmm30\n\tvpxord %%zmm31, %%zmm31, %%zmm31" ::
            : "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24",
              "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "memory");
}
__attribute__((noinline)) static void scrub_sse(void) {
    __asm__ __volatile__(
        "pxor %%xmm0, %%xmm0\n\tpxor %%xmm1, %%xmm1\n\tpxor %%xmm2, %%xmm2\n\t"
        "pxor %%xmm3, %%xmm3\n\tpxor %%xmm4, %%xmm4\n\tpxor %%xmm5, %%xmm5\n\t"
        "pxor %%xmm6, %%xmm6\n\tpxor %%xmm7, %%xmm7\n\tpxor %%xmm8, %%xmm8\n\t"
        "pxor %%xmm9, %%xmm9\n\tpxor %%xmm10, %%xmm10\n\tpxor %%xmm11, %%xmm11\n\t"
        "pxor %%xmm12, %%xmm12\n\tpxor %%xmm13, %%xmm13\n\tpxor %%xmm14, %%xmm14\n\t"
        "pxor %%xmm15, %%xmm15" ::
            : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
              "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "memory");
}
static void scrub_registers(void) {
    if (cpu_avx) scrub_avx();
    else scrub_sse();
    if (cpu_avx512) scrub_avx512_high();
}
static void detect_cpu(void) {
    __builtin_cpu_init();
    cpu_avx = __builtin_cpu_supports("avx");
    cpu_avx512 = __builtin_cpu_supports("avx512f");
}
#else
static void scrub_registers(void) {}
static void detect_cpu(void) {}
#endif

static void wake_closers(void) {
    pthread_mutex_lock(&wait_mutex);
    pthread_cond_broadcast(&wait_cond);
    pthread_mutex_unlock(&wait_mutex);
}

/* Raise the exception for a failed system call. The region layer's hook turns (op, errno,
 * length) into the typed error with a message a person can act on (the memlock budget, the
 * vm.max_map_count limit); without a hook, a plain SecureMemoryError. */
static void raise_os(const char *op, int err, size_t length) {
    if (explain_hook != NULL) {
        PyObject *exc = PyObject_CallFunction(explain_hook, "sin", op, err, (Py_ssize_t)length);
        if (exc != NULL) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
        return;
    }
    PyObject *msg = PyUnicode_FromFormat("%s failed: %s (errno %d)", op, strerror(err), err);
    if (msg == NULL) return;
    PyObject *exc = PyObject_CallFunction(SecureMemoryError, "Oi", msg, err);
    Py_DECREF(msg);
    if (exc != NULL) {
        PyErr_SetObject(SecureMemoryError, exc);
        Py_DECREF(exc);
    }
}

/* -- the test hook: fail the nth call of one system call, or record every call -------------- */
/* Tests observe the real core: they make one named call fail with an errno (as the kernel
 * would), or record the sequence of calls (to check that a wipe comes before an unmap). Off, it
 * costs a load and a branch per call. */

enum { OP_MMAP, OP_MUNMAP, OP_MPROTECT, OP_MLOCK, OP_MADVISE, OP_MEMFD, OP_FTRUNCATE, OP_GETRANDOM,
       OP_WIPE, N_OPS };
static const char *const op_names[N_OPS] = {"mmap",   "munmap",    "mprotect",  "mlock", "madvise",
                                            "memfd",  "ftruncate", "getrandom", "wipe"};
static int inject_op = -1, inject_errno, inject_skip;
static PyObject *trace; /* a list while recording, else NULL */

static int hook(int op, const void *addr, size_t len, int arg) {
    if (trace != NULL) {
        PyObject *t = Py_BuildValue("(snni)", op_names[op], (Py_ssize_t)(uintptr_t)addr,
                                    (Py_ssize_t)len, arg);
        if (t == NULL || PyList_Append(trace, t) < 0) PyErr_Clear();
        Py_XDECREF(t);
    }
    if (op == inject_op) {
        if (inject_skip-- == 0) {
            inject_op = -1;
            return inject_errno;
        }
    }
    return 0;
}

#define HOOKED(op, addr, len, arg, call)                                                      \
    do {                                                                                       \
        int e_ = (trace != NULL || inject_op >= 0) ? hook(op, addr, len, arg) : 0;             \
        if (e_) {                                                                              \
            errno = e_;                                                                        \
            return -1;                                                                         \
        }                                                                                      \
        return call;                                                                           \
    } while (0)

static int sys_mprotect(void *p, size_t n, int prot) {
    HOOKED(OP_MPROTECT, p, n, prot, mprotect(p, n, prot));
}
static int sys_munmap(void *p, size_t n) { HOOKED(OP_MUNMAP, p, n, 0, munmap(p, n)); }
static int sys_mlock(void *p, size_t n) { HOOKED(OP_MLOCK, p, n, 0, mlock(p, n)); }
static int sys_madvise(void *p, size_t n, int advice) {
    HOOKED(OP_MADVISE, p, n, advice, madvise(p, n, advice));
}
static void *sys_mmap(void *p, size_t n, int prot, int flags, int fd) {
    int e = (trace != NULL || inject_op >= 0) ? hook(OP_MMAP, p, n, prot) : 0;
    if (e) {
        errno = e;
        return MAP_FAILED;
    }
    return mmap(p, n, prot, flags, fd, 0);
}

static void wipe_region_bytes(void *p, size_t n) {
    if (trace != NULL) hook(OP_WIPE, p, n, 0);
    secure_zero(p, n);
}

static int fill_random_bytes(unsigned char *p, size_t n) {
    if (trace != NULL || inject_op >= 0) {
        int e = hook(OP_GETRANDOM, p, n, 0);
        if (e) return e;
    }
    while (n > 0) {
#if defined(__linux__) && defined(SYS_getrandom)
        long got = syscall(SYS_getrandom, p, n, 0);
        if (got < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
#elif defined(__APPLE__)
        size_t chunk = n > 256 ? 256 : n;
        if (getentropy(p, chunk) != 0) return errno;
        long got = (long)chunk;
#else
        return ENOSYS;
#endif
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

static int exclude_and_detach(unsigned char *base, size_t length) {
    /* Left out of core dumps, and not inherited by a forked child (which sees no mapping). */
#ifdef __linux__
    if (sys_madvise(base, length, MADV_DONTDUMP) != 0) return -1;
    if (sys_madvise(base, length, MADV_DONTFORK) != 0) return -1;
#elif defined(__APPLE__)
    if (minherit(base, length, VM_INHERIT_NONE) != 0) return -1;
#endif
    return 0;
}

/* -- the list of mapped regions and the counters ---------------------------------------------- */

static void link_region(RegionObject *r) {
    r->prev = NULL;
    r->next = regions;
    if (regions != NULL) regions->prev = r;
    regions = r;
    r->flags |= F_LINKED;
}

static void unlink_region(RegionObject *r) {
    if (!(r->flags & F_LINKED)) return;
    if (r->prev != NULL) r->prev->next = r->next;
    else regions = r->next;
    if (r->next != NULL) r->next->prev = r->prev;
    r->prev = r->next = NULL;
    r->flags &= ~F_LINKED;
}

static int is_live(const RegionObject *r) {
    return r->state == ST_FILLING || r->state == ST_OPEN || r->state == ST_CLOSING;
}

/* -- canary ------------------------------------------------------------------------------------ */
/* A guarded region's canary fills the inner pages in front of the data: zeros from the start of
 * the inner pages; R, 16 random bytes; C = ~R, the 16 bytes right before the data. Intact means
 * exactly that: any change, including a uniform overwrite of the whole area, is seen. It lives
 * only in the region's own locked, undumpable pages. R and C sit next to the data, in its cache
 * line for a small secret, so the check at each access end reads no other line. */
#define CANARY_R(r) ((r)->data - 2 * CANARY_HALF)
#define CANARY_C(r) ((r)->data - CANARY_HALF)

static void canary_init(RegionObject *r, const unsigned char random16[CANARY_HALF]) {
    unsigned char *R = CANARY_R(r), *C = CANARY_C(r);
    for (int i = 0; i < CANARY_HALF; i++) {
        R[i] = random16[i];
        C[i] = (unsigned char)~random16[i];
    }
}

/* At the end of each access: R and C only (the 32 bytes right before the data, where an
 * underflow lands first), not the whole page, so an access of one of 10,000 cold secrets reads
 * no line but its data's. The whole canary is checked when freed. */
static int canary_ends_intact(const RegionObject *r) {
    const unsigned char *R = CANARY_R(r), *C = CANARY_C(r);
    unsigned char diff = 0;
    for (int i = 0; i < CANARY_HALF; i++) diff |= (unsigned char)(R[i] ^ (unsigned char)~C[i]);
    return diff == 0;
}

static int canary_intact(const RegionObject *r) {
    if (!canary_ends_intact(r)) return 0;
    const unsigned char *R = CANARY_R(r);
    /* the zeros in front of R, a word at a time (the inner pages are page-aligned) */
    const uint64_t *w = (const uint64_t *)(const void *)r->inner;
    size_t words = (size_t)(R - r->inner) / 8;
    uint64_t a = 0, b = 0, c = 0, d = 0;
    size_t i = 0;
    for (; i + 4 <= words; i += 4) a |= w[i], b |= w[i + 1], c |= w[i + 2], d |= w[i + 3];
    for (; i < words; i++) a |= w[i];
    unsigned char tail = 0;
    for (const unsigned char *p = (const unsigned char *)(w + words); p < R; p++) tail |= *p;
    return (a | b | c | d) == 0 && tail == 0;
}

/* == sharing across processes (issue 12) ====================================================
 * A shareable region's inner pages are a file (memfd_secret, or a sealed memfd) that other
 * processes map too: a forked child of an inheritable region, or a process that received its
 * descriptor. Its *live marker* is 16 bytes: the canary's random half R (guarded layouts; R == ~C
 * while live) or SHARE_MAGIC at the start of the inner pages (plain layouts, whose data then
 * starts 16 bytes in). The creator's wipe zeroes the marker first, then everything, so a
 * process that maps the pages but did not create them checks the marker at the start of each
 * access and fails cleanly (SecretClosedError) instead of reading zeros. Not guaranteed: an
 * access already running in another process while the creator wipes reads the bytes being wiped
 * (a close() waits only for this process's accesses). */
#define SHARE_MARK 16
#ifndef SECRETMEM_MAGIC
#define SECRETMEM_MAGIC 0x5345434d
#endif
#ifndef F_GET_SEALS
#define F_GET_SEALS 1034
#endif
#ifndef F_SEAL_WRITE
#define F_SEAL_WRITE 0x0008
#endif
static const unsigned char SHARE_MAGIC[SHARE_MARK] = "securememory\x01shr";

/* 1 if the live marker of a shareable region is there (its creator has not wiped it). */
static int share_marker_live(const RegionObject *r) {
    if (r->canary_len) {
        const unsigned char *R = CANARY_R(r), *C = CANARY_C(r);
        unsigned char any = 0, diff = 0;
        for (int i = 0; i < CANARY_HALF; i++) {
            any |= R[i];
            diff |= (unsigned char)(R[i] ^ (unsigned char)~C[i]);
        }
        return any != 0 && diff == 0;
    }
    return memcmp(r->inner, SHARE_MAGIC, SHARE_MARK) == 0;
}

/* The creator of a shareable region: the marker is zeroed before the rest of the wipe. */
static void share_marker_clear(RegionObject *r) {
    secure_zero(r->canary_len ? CANARY_R(r) : r->inner, SHARE_MARK);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* Check that a descriptor received from another process is the backing a region of this
 * layout expects: a memfd_secret file, or a memfd sealed against shrinking, growing and further
 * sealing (not against writes), of exactly inner_len bytes. 0, or -1 with ValueError set. */
#ifdef __linux__
#include <sys/vfs.h>
#endif
static int share_check_fd(int fd, int backing, size_t inner_len) {
#ifdef __linux__
    struct stat st;
    if (fstat(fd, &st) != 0) {
        raise_os("fstat", errno, 0);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        PyErr_Format(PyExc_ValueError,
                     "the descriptor is not a securememory secret: it is not a memory file "
                     "(st_mode %o)", (unsigned)st.st_mode);
        return -1;
    }
    if (backing == BACKING_SECRETMEM) {
        struct statfs fs;
        if (fstatfs(fd, &fs) != 0) {
            raise_os("fstatfs", errno, 0);
            return -1;
        }
        if ((unsigned long)fs.f_type != (unsigned long)SECRETMEM_MAGIC) {
            PyErr_Format(PyExc_ValueError,
                         "the descriptor is not a securememory secret: a secretmem secret's "
                         "descriptor is a memfd_secret file, this one is on a filesystem of type "
                         "0x%lx", (unsigned long)fs.f_type);
            return -1;
        }
    } else {
        int seals = fcntl(fd, F_GET_SEALS);
        int want = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
        if (seals < 0 || (seals & (want | F_SEAL_WRITE)) != want) {
            PyErr_SetString(PyExc_ValueError,
                            "the descriptor is not a securememory secret: it is not a memfd "
                            "sealed against shrinking, growing and resealing");
            return -1;
        }
    }
    if ((size_t)st.st_size != inner_len) {
        PyErr_Format(PyExc_ValueError,
                     "the descriptor's file has %lld bytes; a secret of this size and "
                     "implementation has %zu", (long long)st.st_size, inner_len);
        return -1;
    }
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) { /* never inherited by an exec'd program */
        raise_os("fcntl(F_SETFD)", errno, 0);
        return -1;
    }
    return 0;
#else
    (void)fd;
    (void)backing;
    (void)inner_len;
    PyErr_SetString(SecureMemoryError, "sharing secrets needs Linux (memfd)");
    return -1;
#endif
}
/* == end of sharing across processes ======================================================== */

static void raise_canary(void) {
    PyErr_SetString(CanaryError,
                    "the canary in front of the secret changed: memory before the data was "
                    "overwritten; the secret has been wiped and freed");
}

/* -- mapping, freeing -------------------------------------------------------------------------- */

static int protect(RegionObject *r, int prot) { return sys_mprotect(r->inner, r->inner_len, prot); }

static int open_backing_fd(int backing, size_t length, const char **op) {
    int fd = -1;
#ifdef __linux__
    if (backing == BACKING_SECRETMEM) {
#ifdef SYS_memfd_secret
        *op = "memfd_secret";
        int e = (trace != NULL || inject_op >= 0) ? hook(OP_MEMFD, NULL, length, backing) : 0;
        if (e) {
            errno = e;
            return -1;
        }
        fd = (int)syscall(SYS_memfd_secret, (unsigned int)O_CLOEXEC);
#else
        errno = ENOSYS;
        *op = "memfd_secret";
        return -1;
#endif
    } else {
        *op = "memfd_create";
        int e = (trace != NULL || inject_op >= 0) ? hook(OP_MEMFD, NULL, length, backing) : 0;
        if (e) {
            errno = e;
            return -1;
        }
        fd = (int)syscall(SYS_memfd_create, "securememory", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    }
    if (fd < 0) return -1;
    *op = "ftruncate";
    if (((trace != NULL || inject_op >= 0) && (errno = hook(OP_FTRUNCATE, NULL, length, 0)) != 0) ||
        ftruncate(fd, (off_t)length) != 0)
        goto fail;
    if (backing == BACKING_MEMFD) {
        *op = "fcntl(F_ADD_SEALS)";
        if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) goto fail;
    }
    return fd;
fail : {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
}
#else
    (void)backing;
    (void)length;
    *op = "memfd";
    errno = ENOSYS;
    return -1;
#endif
}

/* Map the region's address range and its inner pages. With fd >= 0 the inner pages are that
 * file (a region received from, or inherited by, another process); else a new backing. On
 * failure nothing is left mapped or open and the exception is set. */
static int map_region(RegionObject *r, int fd) {
    const char *op = "mmap";
    size_t fail_len = r->mapped;
    int created_fd = -1;
    unsigned char *base = sys_mmap(NULL, r->mapped, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
    if (base == MAP_FAILED) {
        raise_os(op, errno, fail_len);
        return -1;
    }
    unsigned char *inner = base + r->inner_offset;
    if (r->backing != BACKING_ANONYMOUS) {
        if (fd < 0) {
            fd = created_fd = open_backing_fd(r->backing, r->inner_len, &op);
            if (fd < 0) goto fail;
        }
        op = "mmap";
        fail_len = r->inner_len;
        int prot = created_fd >= 0 ? PROT_READ | PROT_WRITE : PROT_NONE;
        if (sys_mmap(inner, r->inner_len, prot, MAP_SHARED | MAP_FIXED, fd) == MAP_FAILED)
            goto fail;
    }
    op = "madvise";
    if (exclude_and_detach(base, r->mapped) != 0) goto fail;
    if (r->backing != BACKING_SECRETMEM) {
        /* mlock while accessible: it faults every page in, so Locked: shows them at once. A
         * received region is made readable only for the lock. */
        op = "mprotect";
        int prot = (r->backing == BACKING_ANONYMOUS || created_fd >= 0) ? PROT_READ | PROT_WRITE
                                                                         : PROT_READ;
        if (r->backing == BACKING_ANONYMOUS || created_fd < 0) {
            if (sys_mprotect(inner, r->inner_len, prot) != 0) goto fail;
        }
        op = "mlock";
        fail_len = r->inner_len;
        if (sys_mlock(inner, r->inner_len) != 0) goto fail;
        if (created_fd < 0 && r->backing != BACKING_ANONYMOUS) {
            op = "mprotect";
            if (sys_mprotect(inner, r->inner_len, PROT_NONE) != 0) goto fail;
        }
    }
    r->base = base;
    r->inner = inner;
    r->data = inner + r->data_offset;
    if (r->backing != BACKING_ANONYMOUS && (r->flags & F_INHERITABLE || created_fd < 0)) {
        r->fd = fd; /* kept: shareable */
    } else if (created_fd >= 0) {
        close(created_fd);
    }
    return 0;
fail : {
    int e = errno;
    sys_munmap(base, r->mapped);
    if (created_fd >= 0) close(created_fd);
    raise_os(op, e, fail_len);
    return -1;
}
}

/* Wipe (if this process owns the contents), unlock and unmap; 1 if the canary was intact (or
 * there is none), 0 if not, -1 with an exception if a system call failed (after doing all that
 * could be done: the region is closed either way and never touched again). With live buffer
 * exports (a view that outlived its access), the range is replaced by fresh no-access memory
 * instead of being unmapped, so a stale view faults instead of reading what is mapped there
 * next; it is unmapped when the last such view goes. */
/* Give a closed region's range back: unmap it or, while a view of it lives, replace it with
 * fresh no-access memory (quarantined, unmapped when the last view goes); close its file. Returns
 * the name of a call that failed (its errno in *err), or NULL. */
static const char *release_mapping(RegionObject *r, int *err) {
    const char *op = NULL;
    if (r->exports > 0) {
        void *p = sys_mmap(r->base, r->mapped, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                           -1);
        if (p == MAP_FAILED) {
            *err = errno, op = "mmap (quarantine)";
            r->state = ST_CLOSED;
            unlink_region(r);
        } else {
            r->state = ST_QUARANTINED;
            bytes_quarantined += r->mapped;
        }
    } else {
        if (sys_munmap(r->base, r->mapped) != 0) *err = errno, op = "munmap";
        unlink_region(r);
    }
    if (r->fd >= 0) {
        close(r->fd);
        r->fd = -1;
    }
    return op;
}

static int free_region(RegionObject *r) {
    int intact = 1, err = 0;
    const char *op = NULL;
    int was_live = is_live(r);
    if (r->pid != current_pid || r->state == ST_INERT) {
        /* inherited over fork: the range is not ours (MADV_DONTFORK left a hole) */
        r->state = ST_INERT;
        unlink_region(r);
        if (r->fd >= 0 && r->pid != current_pid) { /* this process's copy, never mapped here */
            close(r->fd);
            r->fd = -1;
        }
        return 1;
    }
    if (!was_live) return 1;
    r->state = ST_CLOSED;
    if (r->flags & F_OWNER) {
        if (protect(r, PROT_READ | PROT_WRITE) == 0) {
            if (r->canary_len && !canary_intact(r)) intact = 0;
            if (r->backing != BACKING_ANONYMOUS) share_marker_clear(r);
            wipe_region_bytes(r->inner, r->inner_len);
        } else {
            err = errno;
            op = "mprotect (the pages could not be wiped; the kernel zeroes them before reuse)";
        }
    }
    live_count--;
    bytes_mapped -= r->mapped;
    bytes_locked -= r->inner_len;
    int release_err = 0;
    const char *release_op = release_mapping(r, &release_err);
    if (release_op != NULL && !err) err = release_err, op = release_op;
    if (!intact) r->flags |= F_CANARY_FAILED;
    wake_closers();
    if (err) {
        raise_os(op, err, r->mapped);
        return -1;
    }
    return intact;
}

/* Free after a failure whose exception is already set: a second failure is chained to it. */
static void free_keeping_error(RegionObject *r) {
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    if (free_region(r) < 0) {
        PyObject *t2, *v2, *tb2;
        PyErr_Fetch(&t2, &v2, &tb2);
        PyErr_NormalizeException(&t2, &v2, &tb2);
        PyErr_NormalizeException(&t, &v, &tb);
        if (v2 != NULL && v != NULL) PyException_SetContext(v2, v); /* steals v */
        else Py_XDECREF(v);
        Py_XDECREF(t);
        Py_XDECREF(tb);
        PyErr_Restore(t2, v2, tb2);
        return;
    }
    PyErr_Restore(t, v, tb);
}

/* -- the access transitions -------------------------------------------------------------------- */

static int remap_in_child(RegionObject *r);
static int leave(RegionObject *r, Holder *h, PyObject *view);

static void raise_closed(RegionObject *r) {
    PyErr_SetString(SecretClosedError, r->flags & F_EXITED
                                           ? "the secret was wiped at interpreter exit"
                                           : "the secret is closed");
}

static int check_usable(RegionObject *r) {
    if (r->pid != current_pid) {
        if ((r->flags & F_INHERITABLE) && r->fd >= 0 && is_live(r)) return remap_in_child(r);
        PyErr_SetString(SecureMemoryError,
                        "this secret belongs to the process that forked this one: a forked child "
                        "has no mapping of it. Create secrets after the fork, or create it with "
                        "inheritable=True");
        return -1;
    }
    if (r->state != ST_OPEN) {
        raise_closed(r);
        return -1;
    }
    return 0;
}

static PyObject *current_context(void) {
    PyThreadState *ts = PyThreadState_Get();
    return ts->context; /* borrowed; NULL until the thread first uses contextvars */
}

/* Begin an access: count it, make the pages readable if it is the first, record who holds it,
 * and (with want_view) hand out a new read-only view. Undone completely if anything fails.
 * Returns the view, or Py_None (borrowed) without want_view, or NULL with an exception. */
static PyObject *enter(RegionObject *r, Holder *h, int want_view) {
    if (check_usable(r) < 0) return NULL;
    if (r->count == 0) {
        if (protect(r, PROT_READ) != 0) {
            int e = errno;
            raise_os("mprotect", e, r->inner_len);
            free_keeping_error(r); /* fail closed */
            return NULL;
        }
        if (!(r->flags & F_OWNER) && !share_marker_live(r)) {
            protect(r, PROT_NONE);
            PyErr_SetString(SecretClosedError,
                            "the secret was closed (and wiped) by the process that created it");
            return NULL;
        }
    }
    r->count++;
    h->thread = PyThread_get_thread_ident();
    h->context = current_context();
    Py_XINCREF(h->context);
    h->pid = current_pid;
    h->next = r->holders;
    r->holders = h;
    if (!want_view) return Py_None;
    r->export_mode = EXPORT_READ;
    PyObject *view = PyMemoryView_FromObject((PyObject *)r);
    r->export_mode = EXPORT_NONE;
    if (view == NULL) {
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        leave(r, h, NULL);
        PyErr_Clear();
        PyErr_Restore(t, v, tb);
    }
    return view;
}

/* Release an access's view. Returns the reference to it the access held, for the caller to drop
 * once the access has ended, or NULL when it was dropped here: a view held by nothing else and
 * with no weak reference (the usual case) is deallocated, which releases it as
 * memoryview.release() does and runs no Python code. (A weak reference's callback would run
 * Python code, and with it signal handlers, inside the access's end: such a view, like one the
 * caller kept, is released by the call and dropped after.) memoryview.release() raises
 * BufferError if something still holds a buffer from this very view (then it lives on, counted
 * in r->exports, and free_region quarantines the range). */
static PyObject *release_view(PyObject *view) {
    if (Py_REFCNT(view) == 1 && ((PyMemoryViewObject *)view)->weakreflist == NULL) {
        Py_DECREF(view);
        return NULL;
    }
    PyObject *res = PyObject_CallOneArg(release_method, view);
    if (res == NULL) PyErr_Clear();
    else Py_DECREF(res);
    return view;
}

/* A region purge() wiped and closed while an access ran stayed mapped for that access; when
 * the last one ends, unmap it (or quarantine it while a view of it lives) and close its file. */
static void release_purged(RegionObject *r) {
    r->flags &= ~F_PURGED;
    int err = 0;
    (void)release_mapping(r, &err); /* nothing to report to: the access's end has its own */
}

/* End an access begun by enter(h): release the view (the reference to it is consumed), uncount
 * it; the last one checks the canary and makes the pages no-access, and destroys the region if a
 * close() is waiting for it. Fails closed: a region that cannot be made no-access again is wiped
 * and freed. */
static int leave(RegionObject *r, Holder *h, PyObject *view) {
    int rc = 0;
    PyObject *context = h->context;
    h->context = NULL;
    PyObject *held = (view != NULL && view != Py_None) ? release_view(view) : NULL;
    if (h->pid != current_pid) { /* begun before a fork, in the parent: nothing here is ours */
        Py_XDECREF(context);
        Py_XDECREF(held);
        return 0;
    }
    for (Holder **p = &r->holders; *p != NULL; p = &(*p)->next) {
        if (*p == h) {
            *p = h->next;
            break;
        }
    }
    h->next = NULL;
    r->count--;
    if (r->count == 0 && r->pid == current_pid) {
        if (r->state == ST_OPEN || r->state == ST_CLOSING) {
            if (r->canary_len && (r->flags & F_OWNER) && !canary_ends_intact(r)) {
                if (free_region(r) < 0) PyErr_Clear(); /* the canary is what to report */
                r->flags |= F_CANARY_FAILED;
                raise_canary();
                rc = -1;
            } else if (protect(r, PROT_NONE) != 0) {
                raise_os("mprotect", errno, r->inner_len);
                free_keeping_error(r);
                rc = -1;
            } else if (r->state == ST_CLOSING) {
                int intact = free_region(r); /* the whole canary is checked here */
                if (intact < 0) {
                    rc = -1;
                } else if (intact == 0) {
                    raise_canary();
                    rc = -1;
                }
            }
        } else if (r->state == ST_CLOSED && (r->flags & F_EXITED)) {
            protect(r, PROT_NONE); /* wiped at exit (or purged) while this access ran */
            if (r->flags & F_PURGED) release_purged(r);
        }
    }
    scrub_registers();
    Py_XDECREF(context);
    Py_XDECREF(held); /* the access has ended: a weak reference's callback may run now */
    return rc;
}

/* -- the buffer protocol: views only through enter() or a filling region's writable view ---- */

static int region_getbuffer(PyObject *self, Py_buffer *view, int flags) {
    RegionObject *r = (RegionObject *)self;
    if (r->export_mode == EXPORT_NONE) {
        PyErr_SetString(PyExc_BufferError,
                        "a secret's memory is readable only inside an access: use "
                        "secret.access() or secret.with_bytes()");
        return -1;
    }
    if (PyBuffer_FillInfo(view, self, r->data, (Py_ssize_t)r->size,
                          r->export_mode != EXPORT_WRITE, flags) != 0)
        return -1;
    r->exports++;
    return 0;
}

static void region_releasebuffer(PyObject *self, Py_buffer *view) {
    (void)view;
    RegionObject *r = (RegionObject *)self;
    r->exports--;
    if (r->exports == 0 && r->state == ST_QUARANTINED) {
        if (r->pid == current_pid) sys_munmap(r->base, r->mapped);
        bytes_quarantined -= r->mapped;
        r->state = ST_CLOSED;
        unlink_region(r);
    }
}

static PyBufferProcs region_as_buffer = {region_getbuffer, region_releasebuffer};

/* -- Region: construction ---------------------------------------------------------------------- */

static PyObject *Region_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"size",      "mapped",   "inner_offset", "inner_len",
                             "data_offset", "canary_len", "backing",    "inheritable",
                             "fd",        "spec",     "site_file",    "site_line", NULL};
    Py_ssize_t size, mapped, inner_offset, inner_len, data_offset, canary_len;
    int backing, inheritable = 0, fd = -1, site_line = 0;
    PyObject *spec = Py_None, *site_file = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nnnnnni|$piOOi", kwlist, &size, &mapped,
                                     &inner_offset, &inner_len, &data_offset, &canary_len,
                                     &backing, &inheritable, &fd, &spec, &site_file, &site_line))
        return NULL;
    size_t ps = page_size;
    if (size <= 0 || inner_len <= 0 || inner_offset < 0 || data_offset < 0 || canary_len < 0 ||
        (size_t)inner_len % ps || (size_t)inner_offset % ps || (size_t)mapped % ps ||
        inner_offset + inner_len > mapped || data_offset + size > inner_len ||
        (canary_len && (canary_len < 2 * CANARY_HALF || canary_len != data_offset)) ||
        backing < BACKING_ANONYMOUS || backing > BACKING_MEMFD ||
        (fd >= 0 && backing == BACKING_ANONYMOUS) ||
        (backing != BACKING_ANONYMOUS && !canary_len && data_offset < SHARE_MARK)) {
        PyErr_SetString(PyExc_ValueError, "inconsistent region layout");
        if (fd >= 0) close(fd);
        return NULL;
    }
    /* A received descriptor is this region's from now on: closed on every failure too. */
    if (fd >= 0 && share_check_fd(fd, backing, (size_t)inner_len) != 0) {
        close(fd);
        return NULL;
    }
    RegionObject *r = (RegionObject *)type->tp_alloc(type, 0);
    if (r == NULL) {
        if (fd >= 0) close(fd);
        return NULL;
    }
    r->mapped = (size_t)mapped;
    r->inner_offset = (size_t)inner_offset;
    r->inner_len = (size_t)inner_len;
    r->data_offset = (size_t)data_offset;
    r->size = (size_t)size;
    r->canary_len = (size_t)canary_len;
    r->backing = (uint8_t)backing;
    r->fd = -1;
    r->pid = current_pid;
    r->state = ST_CLOSED; /* until mapped: a failed construction frees nothing */
    r->flags = (uint8_t)((inheritable ? F_INHERITABLE : 0) | (fd < 0 ? F_OWNER : 0));
    Py_INCREF(spec);
    r->spec = spec;
    Py_INCREF(site_file);
    r->site_file = site_file;
    r->site_line = site_line;
    if (map_region(r, fd) != 0) {
        if (fd >= 0) close(fd);
        Py_DECREF(r);
        return NULL;
    }
    if (fd >= 0) { /* received: its creator's marker must be there (not wiped, not foreign) */
        int readable = protect(r, PROT_READ) == 0;
        int e = errno;
        int live = readable && share_marker_live(r);
        protect(r, PROT_NONE);
        if (!live) {
            sys_munmap(r->base, r->mapped);
            close(r->fd);
            r->fd = -1;
            if (!readable) raise_os("mprotect", e, r->inner_len);
            else
                PyErr_SetString(SecretClosedError,
                                "the received secret was already closed (wiped) by the process "
                                "that created it, or the descriptor holds no securememory secret");
            Py_DECREF(r);
            return NULL;
        }
    }
    if (r->flags & F_OWNER && !r->canary_len && r->backing != BACKING_ANONYMOUS)
        memcpy(r->inner, SHARE_MAGIC, SHARE_MARK); /* still writable: being filled */
    if (r->flags & F_OWNER && r->canary_len) {
        unsigned char rnd[CANARY_HALF];
        int e = fill_random_bytes(rnd, sizeof rnd);
        if (e == 0) canary_init(r, rnd);
        secure_zero(rnd, sizeof rnd);
        if (e != 0) {
            sys_munmap(r->base, r->mapped);
            if (r->fd >= 0) close(r->fd), r->fd = -1;
            raise_os("getrandom", e, CANARY_HALF);
            Py_DECREF(r);
            return NULL;
        }
    }
    /* A region made from a received descriptor starts no-access; a new one writable. */
    r->state = (r->flags & F_OWNER) ? ST_FILLING : ST_OPEN;
    link_region(r);
    live_count++;
    created_total++;
    bytes_mapped += r->mapped;
    bytes_locked += r->inner_len;
    return (PyObject *)r;
}

static void Region_finalize(PyObject *self) {
    RegionObject *r = (RegionObject *)self;
    if (!is_live(r)) return;
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    if (r->pid != current_pid) {
        free_region(r); /* inert */
    } else {
        /* a view received from another process is only unmapped: nothing to warn about */
        if (r->state != ST_FILLING && !exiting && r->site_file != Py_None &&
            (r->flags & F_OWNER)) {
            if (PyErr_ResourceWarning(self, 1,
                                      "a secret of %zu bytes created at %S:%d was never closed; "
                                      "the garbage collector wiped it",
                                      r->size, r->site_file, r->site_line) < 0)
                PyErr_WriteUnraisable(self);
        }
        if (free_region(r) < 0) PyErr_WriteUnraisable(self);
    }
    PyErr_Restore(t, v, tb);
}

static void Region_dealloc(PyObject *self) {
    RegionObject *r = (RegionObject *)self;
    if (PyObject_CallFinalizerFromDealloc(self) < 0) return; /* resurrected */
    unlink_region(r);
    Py_CLEAR(r->spec);
    Py_CLEAR(r->site_file);
    Py_TYPE(self)->tp_free(self);
}

/* -- Region: methods ---------------------------------------------------------------------------- */

static PyObject *Region_finish(RegionObject *r, PyObject *noargs) {
    /* The fill is done: no view of it may survive, and the pages become no-access. */
    (void)noargs;
    if (r->state != ST_FILLING || r->pid != current_pid) {
        PyErr_SetString(PyExc_RuntimeError, "finish() on a region that is not being filled");
        return NULL;
    }
    if (r->flags & F_PURGED) { /* purge() ran while it was being filled */
        r->flags &= ~F_PURGED;
        PyErr_SetString(SecretClosedError, "purge() ran while the secret was being made");
        free_keeping_error(r);
        return NULL;
    }
    if (r->exports > 0) {
        PyErr_SetString(PyExc_ValueError,
                        "the fill kept a view of the new secret's pages; it has been wiped");
        free_keeping_error(r);
        return NULL;
    }
    if (protect(r, PROT_NONE) != 0) {
        raise_os("mprotect", errno, r->inner_len);
        free_keeping_error(r);
        return NULL;
    }
    r->state = ST_OPEN;
    scrub_registers();
    Py_RETURN_NONE;
}

static PyObject *Region_writable_view(RegionObject *r, PyObject *noargs) {
    (void)noargs;
    if (r->state != ST_FILLING || r->pid != current_pid) {
        PyErr_SetString(PyExc_RuntimeError, "only a region being filled has a writable view");
        return NULL;
    }
    r->export_mode = EXPORT_WRITE;
    PyObject *view = PyMemoryView_FromObject((PyObject *)r);
    r->export_mode = EXPORT_NONE;
    return view;
}

static PyObject *Region_fill_random(RegionObject *r, PyObject *noargs) {
    (void)noargs;
    if (r->state != ST_FILLING || r->pid != current_pid) {
        PyErr_SetString(PyExc_RuntimeError, "fill_random() on a region that is not being filled");
        return NULL;
    }
    int e = fill_random_bytes(r->data, r->size);
    if (e != 0) {
        raise_os("getrandom", e, r->size);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Region_free(RegionObject *r, PyObject *noargs) {
    /* Wipe and free now (no waiting: no access may be running); CanaryError, after the wipe, if
     * the canary was found changed. */
    (void)noargs;
    if (r->count > 0 && r->pid == current_pid && is_live(r)) {
        PyErr_SetString(PyExc_RuntimeError, "free() while an access is running");
        return NULL;
    }
    int intact = free_region(r);
    if (intact < 0) return NULL;
    if (intact == 0) {
        raise_canary();
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Region_begin_close(RegionObject *r, PyObject *noargs) {
    /* Refuse new accesses; free at once if none runs, else the last one to end frees it.
     * Returns True once the region is freed by this call, False if it waits for accesses. */
    (void)noargs;
    if (r->pid != current_pid || !is_live(r)) {
        if (r->pid != current_pid) free_region(r);
        Py_RETURN_TRUE;
    }
    r->state = ST_CLOSING;
    if (r->count > 0) Py_RETURN_FALSE;
    int intact = free_region(r);
    if (intact < 0) return NULL;
    if (intact == 0) {
        raise_canary();
        return NULL;
    }
    Py_RETURN_TRUE;
}

static PyObject *Region_close_if_idle(RegionObject *r, PyObject *noargs) {
    /* close()'s common case in one step: with no access running in this process, free it now
     * (as _begin_close would) and return True; else change nothing and return False. */
    if (r->pid == current_pid && is_live(r) && r->count > 0) Py_RETURN_FALSE;
    return Region_begin_close(r, noargs);
}

static PyObject *Region_cancel_close(RegionObject *r, PyObject *noargs) {
    (void)noargs;
    if (r->state == ST_CLOSING && r->pid == current_pid) r->state = ST_OPEN;
    Py_RETURN_NONE;
}

static PyObject *Region_wait_closed(RegionObject *r, PyObject *noargs) {
    /* Block (the GIL released) until the region is freed; Python signal handlers still run
     * every 50 ms, and an exception from one ends the wait (the region stays closing and is
     * freed by the last access to end). */
    (void)noargs;
    while (r->pid == current_pid && is_live(r)) {
        pthread_mutex_lock(&wait_mutex);
        Py_BEGIN_ALLOW_THREADS struct timeval now;
        gettimeofday(&now, NULL);
        struct timespec until = {now.tv_sec, (long)now.tv_usec * 1000 + 50000000L};
        if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&wait_cond, &wait_mutex, &until);
        pthread_mutex_unlock(&wait_mutex);
        Py_END_ALLOW_THREADS if (PyErr_CheckSignals() < 0) return NULL;
    }
    if (r->flags & F_CANARY_FAILED) {
        raise_canary();
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Region_holders(RegionObject *r, PyObject *noargs) {
    /* [(thread ident, context or None)] of the accesses running now in this process. */
    (void)noargs;
    PyObject *out = PyList_New(0);
    if (out == NULL || r->pid != current_pid) return out;
    for (Holder *h = r->holders; h != NULL; h = h->next) {
        PyObject *item = Py_BuildValue("(kO)", h->thread, h->context ? h->context : Py_None);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    return out;
}

static PyObject *Region_with_bytes(RegionObject *r, PyObject *action) {
    Holder h = {0};
    PyObject *view = enter(r, &h, 1);
    if (view == NULL) return NULL;
    PyObject *result = PyObject_CallOneArg(action, view);
    if (result == NULL) {
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        if (leave(r, &h, view) < 0) { /* the leave error wins; the action's is its context */
            PyObject *t2, *v2, *tb2;
            PyErr_Fetch(&t2, &v2, &tb2);
            PyErr_NormalizeException(&t, &v, &tb);
            PyErr_NormalizeException(&t2, &v2, &tb2);
            if (tb != NULL && v != NULL) PyException_SetTraceback(v, tb);
            PyException_SetContext(v2, v);
            Py_XDECREF(t);
            Py_XDECREF(tb);
            PyErr_Restore(t2, v2, tb2);
        } else {
            PyErr_Restore(t, v, tb);
        }
        return NULL;
    }
    int rc = leave(r, &h, view);
    if (rc < 0) {
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

typedef struct {
    PyObject_HEAD
    RegionObject *region;
    PyObject *view; /* while entered */
    Holder holder;
} AccessObject;

/* Access objects kept for reuse (under the GIL): `with s.access()` allocates nothing. */
#define ACCESS_FREELIST 16
static AccessObject *access_free[ACCESS_FREELIST];
static int access_free_n;

static PyObject *Region_access(RegionObject *r, PyObject *noargs) {
    (void)noargs;
    AccessObject *a;
    if (access_free_n > 0) {
        a = access_free[--access_free_n];
        (void)PyObject_Init((PyObject *)a, &AccessType);
    } else if ((a = PyObject_New(AccessObject, &AccessType)) == NULL) {
        return NULL;
    }
    Py_INCREF(r);
    a->region = r;
    a->view = NULL;
    memset(&a->holder, 0, sizeof a->holder);
    return (PyObject *)a;
}

static PyObject *Region_copy_out(RegionObject *r, PyObject *args) {
    /* copy_out(buffer, offset) -> n: copy up to len(buffer) bytes from `offset` into a writable
     * buffer during one access; the registers that carried them are scrubbed. */
    Py_buffer dst;
    Py_ssize_t offset;
    if (!PyArg_ParseTuple(args, "w*n", &dst, &offset)) return NULL;
    if (offset < 0) {
        PyBuffer_Release(&dst);
        PyErr_SetString(PyExc_ValueError, "negative offset");
        return NULL;
    }
    Holder h = {0};
    if (enter(r, &h, 0) == NULL) {
        PyBuffer_Release(&dst);
        return NULL;
    }
    size_t n = 0;
    if ((size_t)offset < r->size) {
        n = r->size - (size_t)offset;
        if ((size_t)dst.len < n) n = (size_t)dst.len;
        memcpy(dst.buf, r->data + offset, n);
    }
    PyBuffer_Release(&dst);
    if (leave(r, &h, NULL) < 0) return NULL;
    return PyLong_FromSize_t(n);
}

static PyObject *Region_read_bytes(RegionObject *r, PyObject *args) {
    /* read_bytes(offset, n, stop) -> bytes: up to n bytes from offset, ending after the first
     * byte equal to stop (a value 0-255) if it comes first (stop=-1: none). One copy: the
     * returned object. */
    Py_ssize_t offset, n;
    int stop;
    if (!PyArg_ParseTuple(args, "nni", &offset, &n, &stop)) return NULL;
    if (offset < 0 || n < 0) {
        PyErr_SetString(PyExc_ValueError, "negative offset or length");
        return NULL;
    }
    Holder h = {0};
    if (enter(r, &h, 0) == NULL) return NULL;
    size_t avail = (size_t)offset < r->size ? r->size - (size_t)offset : 0;
    size_t k = (size_t)n < avail ? (size_t)n : avail;
    if (stop >= 0 && k > 0) {
        const unsigned char *hit = memchr(r->data + offset, stop, k);
        if (hit != NULL) k = (size_t)(hit - (r->data + offset)) + 1;
    }
    PyObject *out = PyBytes_FromStringAndSize(k ? (const char *)r->data + offset : NULL,
                                              (Py_ssize_t)k);
    if (leave(r, &h, NULL) < 0) {
        Py_XDECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *Region_raw_protect(RegionObject *r, PyObject *arg) {
    /* Set the inner pages' protection without counting (0 none, 1 read, 3 read-write): for a
     * region's own fill and for the live proofs, which act as a buggy program would. */
    long prot = PyLong_AsLong(arg);
    if (prot == -1 && PyErr_Occurred()) return NULL;
    if (prot != PROT_NONE && prot != PROT_READ && prot != (PROT_READ | PROT_WRITE)) {
        PyErr_SetString(PyExc_ValueError, "protection must be 0, 1 or 3");
        return NULL;
    }
    if (r->pid != current_pid || !is_live(r)) {
        PyErr_SetString(SecureMemoryError, "the region is not mapped in this process");
        return NULL;
    }
    if (protect(r, (int)prot) != 0) {
        raise_os("mprotect", errno, r->inner_len);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Region_get_addr(RegionObject *r, void *which) {
    switch ((intptr_t)which) {
    case 0: return PyLong_FromVoidPtr(r->base);
    case 1: return PyLong_FromVoidPtr(r->inner);
    default: return PyLong_FromVoidPtr(r->data);
    }
}

static PyObject *Region_get_size(RegionObject *r, void *which) {
    switch ((intptr_t)which) {
    case 0: return PyLong_FromSize_t(r->size);
    case 1: return PyLong_FromSize_t(r->mapped);
    case 2: return PyLong_FromSize_t(r->inner_len);
    case 3: return PyLong_FromSize_t(r->canary_len);
    case 4: return PyLong_FromUnsignedLong(r->count);
    case 5: return PyLong_FromUnsignedLong(r->exports);
    case 6: return PyLong_FromLong(r->state);
    case 7: return PyLong_FromLong(r->fd);
    case 8: return PyLong_FromLong(r->backing);
    case 9: return PyBool_FromLong(r->flags & F_CANARY_FAILED);
    case 10: return PyBool_FromLong(r->flags & F_INHERITABLE);
    case 11: return PyBool_FromLong(r->flags & F_OWNER);
    default: return PyBool_FromLong(r->state != ST_OPEN && r->state != ST_FILLING);
    }
}

static PyObject *Region_get_spec(RegionObject *r, void *unused) {
    (void)unused;
    Py_INCREF(r->spec);
    return r->spec;
}

static Py_ssize_t Region_length(PyObject *self) {
    RegionObject *r = (RegionObject *)self;
    if (check_usable(r) < 0) return -1;
    return (Py_ssize_t)r->size;
}

/* == sharing across processes (issue 12): a region's descriptor for sending ================ */
static PyObject *Region_dup_fd(RegionObject *r, PyObject *noargs) {
    /* A new close-on-exec duplicate of a shareable region's descriptor (the caller closes it),
     * taken under the GIL with the state check, so a close() in another thread cannot swap the
     * descriptor number for another file between the check and the send. */
    (void)noargs;
    if (check_usable(r) < 0) return NULL;
    if (r->fd < 0) {
        PyErr_SetString(SecureMemoryError,
                        "this secret's pages are private to this process (it was not created "
                        "with inheritable=True), so it cannot be passed to another process. "
                        "Create it with inheritable=True");
        return NULL;
    }
    int fd = fcntl(r->fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
        raise_os("fcntl(F_DUPFD_CLOEXEC)", errno, 0);
        return NULL;
    }
    return PyLong_FromLong(fd);
}
/* == end of sharing across processes ======================================================== */

static PyMethodDef Region_methods[] = {
    {"access", (PyCFunction)Region_access, METH_NOARGS,
     "A context manager: `with region.access() as view:` (one counted access)."},
    {"with_bytes", (PyCFunction)Region_with_bytes, METH_O,
     "Call action(view) inside one counted access; return its result."},
    {"copy_out", (PyCFunction)Region_copy_out, METH_VARARGS, NULL},
    {"read_bytes", (PyCFunction)Region_read_bytes, METH_VARARGS, NULL},
    {"_finish", (PyCFunction)Region_finish, METH_NOARGS, NULL},
    {"_writable_view", (PyCFunction)Region_writable_view, METH_NOARGS, NULL},
    {"_fill_random", (PyCFunction)Region_fill_random, METH_NOARGS, NULL},
    {"_free", (PyCFunction)Region_free, METH_NOARGS, NULL},
    {"_begin_close", (PyCFunction)Region_begin_close, METH_NOARGS, NULL},
    {"_close_if_idle", (PyCFunction)Region_close_if_idle, METH_NOARGS, NULL},
    {"_cancel_close", (PyCFunction)Region_cancel_close, METH_NOARGS, NULL},
    {"_wait_closed", (PyCFunction)Region_wait_closed, METH_NOARGS, NULL},
    {"_holders", (PyCFunction)Region_holders, METH_NOARGS, NULL},
    {"_raw_protect", (PyCFunction)Region_raw_protect, METH_O, NULL},
    {"_dup_fd", (PyCFunction)Region_dup_fd, METH_NOARGS, NULL}, /* sharing (issue 12) */
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Region_getset[] = {
    {"_base", (getter)Region_get_addr, NULL, NULL, (void *)0},
    {"_inner", (getter)Region_get_addr, NULL, NULL, (void *)1},
    {"_data", (getter)Region_get_addr, NULL, NULL, (void *)2},
    {"_size", (getter)Region_get_size, NULL, NULL, (void *)0},
    {"_mapped", (getter)Region_get_size, NULL, NULL, (void *)1},
    {"_inner_len", (getter)Region_get_size, NULL, NULL, (void *)2},
    {"_canary_len", (getter)Region_get_size, NULL, NULL, (void *)3},
    {"_count", (getter)Region_get_size, NULL, NULL, (void *)4},
    {"_exports", (getter)Region_get_size, NULL, NULL, (void *)5},
    {"_state", (getter)Region_get_size, NULL, NULL, (void *)6},
    {"_fd", (getter)Region_get_size, NULL, NULL, (void *)7},
    {"_backing", (getter)Region_get_size, NULL, NULL, (void *)8},
    {"_canary_failed", (getter)Region_get_size, NULL, NULL, (void *)9},
    {"_inheritable", (getter)Region_get_size, NULL, NULL, (void *)10},
    {"_owner", (getter)Region_get_size, NULL, NULL, (void *)11},
    {"closed", (getter)Region_get_size, NULL, "Whether close() has run (or is running).",
     (void *)12},
    {"_spec", (getter)Region_get_spec, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Region_as_sequence = {.sq_length = Region_length};

static PyTypeObject RegionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "securememory._backend._native.Region",
    .tp_basicsize = sizeof(RegionObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Pages with a layout and a backing; every system call on them is made here.",
    .tp_new = Region_new,
    .tp_dealloc = Region_dealloc,
    .tp_finalize = Region_finalize,
    .tp_methods = Region_methods,
    .tp_getset = Region_getset,
    .tp_as_buffer = &region_as_buffer,
    .tp_as_sequence = &Region_as_sequence,
};

/* -- Access: the context manager of one access --------------------------------------------- */

static PyObject *Access_enter(AccessObject *a, PyObject *noargs) {
    (void)noargs;
    if (a->view != NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this access() context is already entered; call access() again");
        return NULL;
    }
    PyObject *view = enter(a->region, &a->holder, 1);
    if (view == NULL) return NULL;
    a->view = view;
    Py_INCREF(view);
    return view;
}

static PyObject *Access_exit(AccessObject *a, PyObject *const *args, Py_ssize_t nargs) {
    (void)args;
    (void)nargs;
    PyObject *view = a->view;
    if (view == NULL) Py_RETURN_NONE;
    a->view = NULL;
    if (leave(a->region, &a->holder, view) < 0) return NULL;
    Py_RETURN_NONE;
}

static void Access_dealloc(AccessObject *a) {
    if (a->view != NULL) { /* abandoned inside an access: end it */
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        PyObject *view = a->view;
        a->view = NULL;
        if (leave(a->region, &a->holder, view) < 0) PyErr_WriteUnraisable((PyObject *)a);
        PyErr_Restore(t, v, tb);
    }
    Py_DECREF(a->region);
    if (access_free_n < ACCESS_FREELIST) access_free[access_free_n++] = a;
    else PyObject_Free(a);
}

static PyMethodDef Access_methods[] = {
    {"__enter__", (PyCFunction)Access_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))Access_exit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject AccessType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "securememory._backend._native.Access",
    .tp_basicsize = sizeof(AccessObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One access of a secret: `with secret.access() as view:`.",
    .tp_dealloc = (destructor)Access_dealloc,
    .tp_methods = Access_methods,
};

/* -- fork ------------------------------------------------------------------------------------- */

/* In a forked child, before any Python code runs: every region belongs to the parent. Those
 * made inheritable keep their descriptor and are mapped again, by this process, on first use;
 * the others become inert (never wiped, protected or unmapped here: MADV_DONTFORK left a hole
 * that this process may map something else into). Nothing here allocates or calls Python. */
static void atfork_prepare(void) { pthread_mutex_lock(&wait_mutex); }
static void atfork_parent(void) { pthread_mutex_unlock(&wait_mutex); }
static void atfork_child(void) {
    pthread_mutex_init(&wait_mutex, NULL);
    pthread_cond_init(&wait_cond, NULL);
    current_pid = getpid();
    live_count = 0;
    bytes_mapped = bytes_locked = bytes_quarantined = 0;
    RegionObject *r = regions;
    regions = NULL;
    while (r != NULL) {
        RegionObject *next = r->next;
        r->prev = r->next = NULL;
        r->flags &= ~F_LINKED;
        r->holders = NULL;
        r->count = 0;
        if ((r->flags & F_INHERITABLE) && r->fd >= 0 && is_live(r)) {
            r->flags &= ~F_OWNER; /* the creator's close wipes; this process only unmaps */
            if (r->state != ST_OPEN) r->state = ST_OPEN;
        } else {
            r->state = ST_INERT;
            if (r->fd >= 0) close(r->fd); /* this process's copy of a shared region's file */
            r->fd = -1;
        }
        r = next;
    }
}

static int remap_in_child(RegionObject *r) {
    int fd = r->fd;
    r->fd = -1;
    pid_t old = r->pid;
    r->pid = current_pid;
    uint8_t flags = r->flags;
    r->flags &= ~F_OWNER;
    if (map_region(r, fd) != 0) {
        r->pid = old;
        r->fd = fd;
        r->flags = flags;
        return -1;
    }
    link_region(r);
    live_count++;
    bytes_mapped += r->mapped;
    bytes_locked += r->inner_len;
    return 0;
}

/* -- module functions ---------------------------------------------------------------------------- */

static PyObject *mod_counters(PyObject *m, PyObject *noargs) {
    (void)m;
    (void)noargs;
    return Py_BuildValue("(nKnnn)", live_count, created_total, (Py_ssize_t)bytes_mapped,
                         (Py_ssize_t)bytes_locked, (Py_ssize_t)bytes_quarantined);
}

/* Wipe a live region in place and close it, unmapping nothing: an access still running reads
 * zeros instead of faulting (its pages stay readable until it ends). The exit wipe does this to
 * every region; purge() to those an access is running in (with F_PURGED: the last access's end
 * then unmaps). */
static void wipe_in_place(RegionObject *r, int flags) {
    r->state = ST_CLOSED;
    r->flags |= F_EXITED | flags;
    if ((r->flags & F_OWNER) && protect(r, PROT_READ | PROT_WRITE) == 0) {
        if (r->backing != BACKING_ANONYMOUS) share_marker_clear(r);
        wipe_region_bytes(r->inner, r->inner_len);
        protect(r, r->count ? PROT_READ : PROT_NONE);
    }
    live_count--;
    bytes_mapped -= r->mapped;
    bytes_locked -= r->inner_len;
    unlink_region(r);
}

static PyObject *mod_wipe_all(PyObject *m, PyObject *noargs) {
    /* At interpreter exit: wipe every live region this process owns and close it, but unmap
     * nothing, so a thread still inside an access (a daemon thread) reads zeros instead of
     * faulting. Returns how many were wiped. */
    (void)m;
    (void)noargs;
    exiting = 1;
    Py_ssize_t n = 0;
    RegionObject *r = regions;
    while (r != NULL) {
        RegionObject *next = r->next;
        if (r->pid == current_pid && is_live(r)) {
            wipe_in_place(r, 0);
            n++;
        }
        r = next;
    }
    wake_closers();
    return PyLong_FromSsize_t(n);
}

static PyObject *mod_current_context(PyObject *m, PyObject *noargs) {
    (void)m;
    (void)noargs;
    PyObject *ctx = current_context();
    if (ctx == NULL) Py_RETURN_NONE;
    Py_INCREF(ctx);
    return ctx;
}

static PyObject *mod_set_explain(PyObject *m, PyObject *hook) {
    (void)m;
    Py_INCREF(hook);
    Py_XSETREF(explain_hook, hook);
    Py_RETURN_NONE;
}

static PyObject *mod_secretmem_errno(PyObject *m, PyObject *noargs) {
    /* 0 if memfd_secret works here, else the errno it fails with. */
    (void)m;
    (void)noargs;
#if defined(__linux__) && defined(SYS_memfd_secret)
    int fd = (int)syscall(SYS_memfd_secret, (unsigned int)O_CLOEXEC);
    if (fd < 0) return PyLong_FromLong(errno);
    close(fd);
    return PyLong_FromLong(0);
#else
    return PyLong_FromLong(ENOSYS);
#endif
}

static int writable_buffer(PyObject *obj, Py_buffer *view) {
    return PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_STRIDES);
}

static void zero_strided(char *p, int dim, const Py_buffer *v) {
    if (dim == v->ndim - 1) {
        for (Py_ssize_t i = 0; i < v->shape[dim]; i++)
            secure_zero(p + i * v->strides[dim], (size_t)v->itemsize);
        return;
    }
    for (Py_ssize_t i = 0; i < v->shape[dim]; i++) zero_strided(p + i * v->strides[dim], dim + 1, v);
}

static PyObject *mod_wipe(PyObject *m, PyObject *obj) {
    /* Zero any writable buffer in place (contiguous or not) with a wipe the compiler keeps. */
    (void)m;
    Py_buffer v;
    if (writable_buffer(obj, &v) < 0) return NULL;
    if (PyBuffer_IsContiguous(&v, 'A') || v.ndim == 0) secure_zero(v.buf, (size_t)v.len);
    else zero_strided(v.buf, 0, &v);
    PyBuffer_Release(&v);
    scrub_registers();
    Py_RETURN_NONE;
}

static PyObject *mod_fill_random(PyObject *m, PyObject *obj) {
    (void)m;
    Py_buffer v;
    if (PyObject_GetBuffer(obj, &v, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    int e = fill_random_bytes(v.buf, (size_t)v.len);
    size_t len = (size_t)v.len;
    PyBuffer_Release(&v);
    if (e != 0) {
        raise_os("getrandom", e, len);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *mod_copy_bytes(PyObject *m, PyObject *args) {
    /* copy_bytes(dst, src): copy all of src (any C-contiguous buffer, any item format, read as
     * raw bytes) into the start of a writable buffer; returns the byte count. */
    (void)m;
    PyObject *dsto, *srco;
    if (!PyArg_ParseTuple(args, "OO", &dsto, &srco)) return NULL;
    Py_buffer dst, src;
    if (PyObject_GetBuffer(dsto, &dst, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (PyObject_GetBuffer(srco, &src, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&dst);
        return NULL;
    }
    Py_ssize_t n = src.len;
    if (n > dst.len) {
        PyBuffer_Release(&dst);
        PyBuffer_Release(&src);
        PyErr_SetString(PyExc_ValueError, "the destination is too small");
        return NULL;
    }
    memcpy(dst.buf, src.buf, (size_t)n);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    scrub_registers();
    return PyLong_FromSsize_t(n);
}

static PyObject *mod_read_byte(PyObject *m, PyObject *arg) {
    /* Read one byte at an address, with no protection change: for the live proofs only (on a
     * no-access page the process dies of SIGSEGV, which is what they observe). */
    (void)m;
    void *p = PyLong_AsVoidPtr(arg);
    if (p == NULL && PyErr_Occurred()) return NULL;
    return PyLong_FromLong(*(volatile unsigned char *)p);
}

static PyObject *mod_write_byte(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *addr;
    int value;
    if (!PyArg_ParseTuple(args, "Oi", &addr, &value)) return NULL;
    void *p = PyLong_AsVoidPtr(addr);
    if (p == NULL && PyErr_Occurred()) return NULL;
    *(volatile unsigned char *)p = (unsigned char)value;
    Py_RETURN_NONE;
}

static PyObject *mod_drop_capability(PyObject *m, PyObject *arg) {
    /* prctl(PR_CAPBSET_DROP, cap): a program exec'd next lacks it even as root (Linux). */
    (void)m;
    long cap = PyLong_AsLong(arg);
    if (cap == -1 && PyErr_Occurred()) return NULL;
#ifdef __linux__
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
        raise_os("prctl(PR_CAPBSET_DROP)", errno, 0);
        return NULL;
    }
    Py_RETURN_NONE;
#else
    PyErr_SetString(SecureMemoryError, "capabilities are Linux-only");
    return NULL;
#endif
}

static PyObject *mod_inject(PyObject *m, PyObject *args) {
    /* inject(op, errno, skip=0): the (skip+1)th next call of `op` fails with errno; op None
     * clears it. For the tests. */
    (void)m;
    PyObject *op;
    int err = 0, skip = 0;
    if (!PyArg_ParseTuple(args, "O|ii", &op, &err, &skip)) return NULL;
    if (op == Py_None) {
        inject_op = -1;
        Py_RETURN_NONE;
    }
    const char *name = PyUnicode_AsUTF8(op);
    if (name == NULL) return NULL;
    for (int i = 0; i < N_OPS; i++) {
        if (strcmp(name, op_names[i]) == 0) {
            inject_op = i, inject_errno = err, inject_skip = skip;
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(PyExc_ValueError, "unknown system call %R", op);
    return NULL;
}

static PyObject *mod_trace(PyObject *m, PyObject *arg) {
    /* trace(list): record (op, address, length, arg) of each call into the list; trace(None)
     * stops. For the tests. */
    (void)m;
    if (arg != Py_None && !PyList_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "trace() takes a list or None");
        return NULL;
    }
    Py_XINCREF(arg == Py_None ? NULL : arg);
    Py_XSETREF(trace, arg == Py_None ? NULL : arg);
    Py_RETURN_NONE;
}

/* ==== ingress: from_env (issue 13) ===========================================================
 * take_environ(name, data, key, block_start, block_end, writable): remove the variable NAME from the C
 * environment and from Python's copy of it (the dict ``data``, os.environ's bytes mapping), wiping
 * each copy that can be reached before it is let go:
 *  - the string getenv() returns is overwritten in place (its value part), before unsetenv(), if
 *    it lies in one of the ``writable`` ranges, [(start, end), ...] from /proc/self/maps (a C
 *    extension may have putenv() a string literal in read-only memory);
 *  - every "NAME=..." string in [block_start, block_end), the initial environment block the kernel
 *    wrote on the stack at exec (what /proc/<pid>/environ shows), is overwritten too, also one
 *    that environ no longer points at (the variable was set again since);
 *  - the bytes object popped from ``data`` is zeroed before it is freed, when its reference count
 *    shows that nobody else holds it.
 * Returns (C strings wiped, 1 if the Python bytes object was wiped else 0). Another C thread
 * calling getenv() at the same moment may see the value emptied; keep from_env at start-up. */

static size_t wipe_env_strings(char *lo, char *hi, const char *name, size_t nlen) {
    size_t count = 0;
    char *p = lo;
    while (p < hi) {
        char *end = memchr(p, '\0', (size_t)(hi - p));
        if (end == NULL) end = hi;
        if ((size_t)(end - p) > nlen && memcmp(p, name, nlen) == 0 && p[nlen] == '=') {
            secure_zero(p + nlen + 1, (size_t)(end - p) - nlen - 1);
            count++;
        }
        p = end + 1;
    }
    return count;
}

static int in_writable(PyObject *ranges, uintptr_t lo, uintptr_t hi) {
    /* 1 if [lo, hi) lies inside one (start, end) pair of the list, 0 if not, -1 on error */
    Py_ssize_t n = PyList_GET_SIZE(ranges);
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long a, b;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(ranges, i), "KK", &a, &b)) return -1;
        if (a <= lo && hi <= b) return 1;
    }
    return 0;
}

static PyObject *mod_take_environ(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *name, *data, *key, *writable;
    unsigned long long lo, hi;
    if (!PyArg_ParseTuple(args, "SO!OKKO!", &name, &PyDict_Type, &data, &key, &lo, &hi,
                          &PyList_Type, &writable))
        return NULL;
    const char *cname = PyBytes_AS_STRING(name);
    size_t nlen = (size_t)PyBytes_GET_SIZE(name);
    if (nlen == 0 || strlen(cname) != nlen || memchr(cname, '=', nlen) != NULL) {
        PyErr_SetString(PyExc_ValueError, "an environment variable name is not empty and has no "
                                          "'=' or NUL byte");
        return NULL;
    }
    if (hi < lo) lo = hi = 0;
    Py_ssize_t wiped = 0;
    char *v = getenv(cname);
    if (v != NULL && !(lo && (uintptr_t)v >= lo && (uintptr_t)v < hi)) {
        size_t len = strlen(v);
        int ok = in_writable(writable, (uintptr_t)v, (uintptr_t)v + len + 1);
        if (ok < 0) return NULL;
        if (ok) { /* a string setenv() made, on the C heap */
            secure_zero(v, len);
            wiped++;
        }
    }
    if (lo) wiped += (Py_ssize_t)wipe_env_strings((char *)(uintptr_t)lo, (char *)(uintptr_t)hi,
                                                   cname, nlen);
    if (unsetenv(cname) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    int py_wiped = 0;
    PyObject *value = PyDict_GetItemWithError(data, key); /* borrowed */
    if (value == NULL && PyErr_Occurred()) return NULL;
    if (value != NULL) {
        Py_INCREF(value);
        if (PyDict_DelItem(data, key) < 0) {
            Py_DECREF(value);
            return NULL;
        }
        if (PyBytes_CheckExact(value) && Py_REFCNT(value) == 1) { /* ours alone: wipe, free */
            secure_zero(PyBytes_AS_STRING(value), (size_t)PyBytes_GET_SIZE(value));
            py_wiped = 1;
        }
        Py_DECREF(value);
    }
    scrub_registers();
    return Py_BuildValue("(ni)", wiped, py_wiped);
}

/* ==== end of ingress: from_env ================================================================ */

/* -- sealed enclaves (issue 11): their own file ------------------------------------------------ */
#include "enclave.c"

static PyMethodDef module_methods[] = {
    {"inject", mod_inject, METH_VARARGS, NULL},
    {"trace", mod_trace, METH_O, NULL},
    {"counters", mod_counters, METH_NOARGS,
     "(live regions, regions ever made, bytes mapped, bytes locked, bytes quarantined)"},
    {"wipe_all", mod_wipe_all, METH_NOARGS, NULL},
    {"current_context", mod_current_context, METH_NOARGS, NULL},
    {"set_explain", mod_set_explain, METH_O, NULL},
    {"secretmem_errno", mod_secretmem_errno, METH_NOARGS, NULL},
    {"wipe", mod_wipe, METH_O, NULL},
    {"fill_random", mod_fill_random, METH_O, NULL},
    {"copy_bytes", mod_copy_bytes, METH_VARARGS, NULL},
    {"read_byte", mod_read_byte, METH_O, NULL},
    {"write_byte", mod_write_byte, METH_VARARGS, NULL},
    {"drop_capability", mod_drop_capability, METH_O, NULL},
    {"take_environ", mod_take_environ, METH_VARARGS, NULL}, /* ingress: from_env */
    ENCLAVE_METHODS /* sealed enclaves (issue 11) */
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "securememory._backend._native",
    "securememory's compiled core: regions, their system calls and access transitions.", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    page_size = (size_t)sysconf(_SC_PAGESIZE);
    current_pid = getpid();
    detect_cpu();
    PyObject *errors = PyImport_ImportModule("securememory.errors");
    if (errors == NULL) return NULL;
    SecureMemoryError = PyObject_GetAttrString(errors, "SecureMemoryError");
    SecretClosedError = PyObject_GetAttrString(errors, "SecretClosedError");
    CanaryError = PyObject_GetAttrString(errors, "CanaryError");
    Py_DECREF(errors);
    if (!SecureMemoryError || !SecretClosedError || !CanaryError) return NULL;
    release_method = PyObject_GetAttrString((PyObject *)&PyMemoryView_Type, "release");
    if (release_method == NULL) return NULL;
    if (PyType_Ready(&RegionType) < 0 || PyType_Ready(&AccessType) < 0) return NULL;
    if (pthread_atfork(atfork_prepare, atfork_parent, atfork_child) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "pthread_atfork failed");
        return NULL;
    }
    PyObject *m = PyModule_Create(&native_module);
    if (m == NULL) return NULL;
    Py_INCREF(&RegionType);
    if (PyModule_AddObject(m, "Region", (PyObject *)&RegionType) < 0) return NULL;
    Py_INCREF(&AccessType);
    if (PyModule_AddObject(m, "Access", (PyObject *)&AccessType) < 0) return NULL;
    PyModule_AddIntConstant(m, "PAGE_SIZE", (long)page_size);
    PyModule_AddIntConstant(m, "ANONYMOUS", BACKING_ANONYMOUS);
    PyModule_AddIntConstant(m, "SECRETMEM", BACKING_SECRETMEM);
    PyModule_AddIntConstant(m, "MEMFD", BACKING_MEMFD);
    PyModule_AddIntConstant(m, "CANARY_MIN", 2 * CANARY_HALF);
#ifdef __linux__
    PyModule_AddIntConstant(m, "CAN_EXCLUDE_FROM_DUMPS", 1);
#else
    PyModule_AddIntConstant(m, "CAN_EXCLUDE_FROM_DUMPS", 0);
#endif
    return m;
}
