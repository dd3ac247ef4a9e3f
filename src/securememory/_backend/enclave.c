/* ==== sealed enclaves (issue 11) ================================================================
 *
 * #included by _native.c (after its statics, before its method table). An enclave is a small
 * object holding nonce || XChaCha20-Poly1305 ciphertext || tag inline in ordinary memory; only
 * the process-wide key and the plaintext of an open need locked pages.
 *
 * The crypto is libsodium's (the copy PyNaCl bundles): the Python layer hands this core three
 * function pointers once (enclave_setup). Nothing here is hand-written cryptography.
 *
 * One locked mapping per process ("the keyring"), charged once however many enclaves exist:
 *
 *   [guard][key page: L | K scratch | R ][pool: EK_SLOTS slots of EK_SLOT bytes][guard]
 *
 * - The key K is never stored whole while idle: L is random, R = BLAKE2b(L) xor K (memguard's
 *   coffer). K is recombined into the scratch only for one seal or open and wiped right after;
 *   rekey() draws a new L and recomputes R.
 * - The pages are memfd_secret where the kernel has it (locked, undumpable, out of the kernel's
 *   direct map; never mprotect'ed, so an open makes no system call), else private anonymous pages,
 *   mlock'ed and MADV_DONTDUMP. Both are MADV_DONTFORK: a forked child has no mapping of them.
 * - An open decrypts into a free slot (a bitmap, under the GIL), hands out a read-only view of
 *   it, and wipes the slot when the block ends. A slot whose view was kept (a slice) is wiped
 *   and not reused until that view goes, so a kept view reads zeros, never another plaintext.
 *   An enclave larger than a slot, or an open when every slot is busy, gets a dedicated locked
 *   mapping for the length of the block.
 * - libsodium keeps the AEAD's subkey and state on the stack (and wipes the subkey itself); the
 *   stack below the caller is burned and the vector registers scrubbed after every call.
 *
 * State is protected by the GIL: no call here releases it.
 */

#include <stddef.h>

typedef int (*ek_encrypt_fn)(unsigned char *c, unsigned long long *clen, const unsigned char *m,
                             unsigned long long mlen, const unsigned char *ad,
                             unsigned long long adlen, const unsigned char *nsec,
                             const unsigned char *npub, const unsigned char *k);
typedef int (*ek_decrypt_fn)(unsigned char *m, unsigned long long *mlen, unsigned char *nsec,
                             const unsigned char *c, unsigned long long clen,
                             const unsigned char *ad, unsigned long long adlen,
                             const unsigned char *npub, const unsigned char *k);
typedef int (*ek_hash_fn)(unsigned char *out, size_t outlen, const unsigned char *in,
                          unsigned long long inlen, const unsigned char *key, size_t keylen,
                          const unsigned char *salt, const unsigned char *personal);

#define EK_KEY 32
#define EK_NONCE 24
#define EK_TAG 16
#define EK_OVERHEAD (EK_NONCE + EK_TAG)
#define EK_SLOT 512
#define EK_SLOTS 32
#define EK_POOL_PAGES ((EK_SLOT * EK_SLOTS + 4095) / 4096)
#define EK_BURN 6144
#define EK_NONCE_CACHE 2040 /* 85 nonces per getrandom */

static const unsigned char ek_personal[16] = "securememory-key";

static struct {
    ek_encrypt_fn encrypt;
    ek_decrypt_fn decrypt;
    ek_hash_fn hash;
    int backing; /* BACKING_SECRETMEM or BACKING_ANONYMOUS, for the keyring */
    unsigned char *map;  /* the keyring mapping (guards included), NULL if none in this process */
    size_t mapped, inner_len;
    unsigned char *left, *scratch, *right, *pool;
    pid_t pid;          /* the process the keyring and key belong to */
    uint32_t key_id;    /* the key enclaves carry; bumped by purge and by a new key after fork */
    int have_key;
    uint32_t busy;      /* slot bitmap */
    uint32_t retired;   /* slots wiped but still exported by a kept view */
    unsigned long long opens, seals;
    unsigned char nonces[EK_NONCE_CACHE];
    size_t nonce_pos;
    pid_t nonce_pid;
} ek = {.nonce_pos = EK_NONCE_CACHE};

typedef struct {
    PyObject_VAR_HEAD
    pid_t pid;       /* the process that sealed it */
    uint32_t key_id; /* the key that sealed it */
    uint32_t size;   /* plaintext length */
    uint8_t closed;
    unsigned char blob[1]; /* nonce || ciphertext || tag */
} EnclaveObject;

#define EK_BASICSIZE offsetof(EnclaveObject, blob)

typedef struct OpeningObject {
    PyObject_HEAD
    EnclaveObject *enclave;
    PyObject *view;
    unsigned char *buf;  /* the plaintext: a slot, or the data of a dedicated mapping */
    unsigned char *map;  /* the dedicated mapping, or NULL */
    size_t mapped;
    struct OpeningObject *prev, *next; /* openings holding plaintext now (purge wipes them) */
    pid_t pid;           /* the process whose scratch holds the plaintext */
    int slot;
    int exports;
    uint8_t state;       /* 0 made, 1 entered, 2 ended */
    uint8_t allow_view;
    uint8_t linked;
} OpeningObject;

static PyTypeObject EnclaveCoreType, OpeningType;
static PyObject *ek_setup_hook;    /* called once, before the first seal: hands over libsodium */
static PyObject *ek_refusal_hook;  /* says why an object cannot be sealed (and wipes it) */
static OpeningObject *ek_openings;
static int ek_types_ready;

/* -- stack and registers ---------------------------------------------------------------------- */

/* Zero the stack below the caller, where the AEAD and the hash just kept their state. */
__attribute__((noinline)) static void ek_burn_stack(void) {
    unsigned char area[EK_BURN];
    secure_zero(area, sizeof area);
}

/* -- the keyring ------------------------------------------------------------------------------- */

static int ek_map_keyring(void) {
    size_t ps = page_size;
    size_t pool_bytes = (size_t)EK_SLOT * EK_SLOTS;
    size_t inner = ps + ((pool_bytes + ps - 1) / ps) * ps;
    size_t mapped = inner + 2 * ps;
    const char *op = "mmap";
    int fd = -1;
    unsigned char *base = sys_mmap(NULL, mapped, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
    if (base == MAP_FAILED) {
        raise_os(op, errno, mapped);
        return -1;
    }
    unsigned char *in = base + ps;
    if (ek.backing == BACKING_SECRETMEM) {
        fd = open_backing_fd(BACKING_SECRETMEM, inner, &op);
        if (fd < 0) goto fail;
        op = "mmap";
        if (sys_mmap(in, inner, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd) == MAP_FAILED)
            goto fail;
        close(fd);
        fd = -1;
    } else {
        op = "mprotect";
        if (sys_mprotect(in, inner, PROT_READ | PROT_WRITE) != 0) goto fail;
    }
    op = "madvise";
    if (exclude_and_detach(base, mapped) != 0) goto fail;
    if (ek.backing != BACKING_SECRETMEM) {
        op = "mlock";
        if (sys_mlock(in, inner) != 0) goto fail;
    }
    secure_zero(in, inner); /* fault every page in now (secretmem too) */
    ek.map = base;
    ek.mapped = mapped;
    ek.inner_len = inner;
    ek.left = in;
    ek.scratch = in + 1024;
    ek.right = in + 2048;
    ek.pool = in + ps;
    ek.busy = ek.retired = 0;
    ek.pid = current_pid;
    return 0;
fail : {
    int e = errno;
    sys_munmap(base, mapped);
    if (fd >= 0) close(fd);
    raise_os(op, e, inner);
    return -1;
}
}

/* K = BLAKE2b(L) xor R into the scratch. */
static void ek_recombine(void) {
    ek.hash(ek.scratch, EK_KEY, ek.left, EK_KEY, NULL, 0, NULL, ek_personal);
    for (int i = 0; i < EK_KEY; i++) ek.scratch[i] ^= ek.right[i];
}

/* From K in the scratch: a new L, and R = BLAKE2b(L) xor K; the scratch is wiped. The new L is
 * drawn where R goes (R is recomputed either way), so a failed draw leaves L as it was and R is
 * rebuilt from it: the key survives a failed rekey. */
static int ek_split(void) {
    int e = fill_random_bytes(ek.right, EK_KEY);
    if (e == 0) memcpy(ek.left, ek.right, EK_KEY);
    ek.hash(ek.right, EK_KEY, ek.left, EK_KEY, NULL, 0, NULL, ek_personal);
    for (int i = 0; i < EK_KEY; i++) ek.right[i] ^= ek.scratch[i];
    secure_zero(ek.scratch, EK_KEY);
    return e;
}

static void ek_after_crypto(void) {
    secure_zero(ek.scratch, EK_KEY);
    ek_burn_stack();
    scrub_registers();
}

/* The keyring and a key in this process, made on first use (and after a fork or a purge). */
static int ek_ready(void) {
    if (ek.encrypt == NULL && ek_setup_hook != NULL) {
        PyObject *r = PyObject_CallNoArgs(ek_setup_hook);
        if (r == NULL) return -1;
        Py_DECREF(r);
    }
    if (ek.encrypt == NULL) {
        PyErr_SetString(SecureMemoryError, "the enclave core is not set up (enclave_setup)");
        return -1;
    }
    if (ek.map != NULL && ek.pid != current_pid) {
        /* forked: the parent's keyring is not mapped here (MADV_DONTFORK); never touch it */
        ek.map = NULL;
        ek.have_key = 0;
        ek.key_id++;
        ek_openings = NULL;
    }
    if (ek.map == NULL && ek_map_keyring() < 0) return -1;
    if (!ek.have_key) {
        int e = fill_random_bytes(ek.scratch, EK_KEY);
        if (e == 0) e = ek_split();
        if (e != 0) {
            secure_zero(ek.scratch, EK_KEY);
            raise_os("getrandom", e, EK_KEY);
            return -1;
        }
        ek.key_id++;
        ek.have_key = 1;
    }
    return 0;
}

static int ek_nonce(unsigned char *out) {
    if (ek.nonce_pid != current_pid) { /* never a nonce drawn before a fork */
        ek.nonce_pos = EK_NONCE_CACHE;
        ek.nonce_pid = current_pid;
    }
    if (ek.nonce_pos + EK_NONCE > EK_NONCE_CACHE) {
        int e = fill_random_bytes(ek.nonces, EK_NONCE_CACHE);
        if (e != 0) {
            raise_os("getrandom", e, EK_NONCE_CACHE);
            return -1;
        }
        ek.nonce_pos = 0;
    }
    memcpy(out, ek.nonces + ek.nonce_pos, EK_NONCE);
    memset(ek.nonces + ek.nonce_pos, 0, EK_NONCE);
    ek.nonce_pos += EK_NONCE;
    return 0;
}

/* -- scratch for plaintext: a slot, or a dedicated locked mapping ------------------------------ */

typedef struct {
    unsigned char *buf, *map;
    size_t mapped;
    int slot;
} EkScratch;

static int ek_take(size_t n, EkScratch *s) {
    s->map = NULL;
    s->mapped = 0;
    s->slot = -1;
    uint32_t used = ek.busy | ek.retired;
    if (n <= EK_SLOT && used != 0xFFFFFFFFu) {
        int i = __builtin_ctz(~used);
        ek.busy |= 1u << i;
        s->slot = i;
        s->buf = ek.pool + (size_t)i * EK_SLOT;
        return 0;
    }
    size_t ps = page_size;
    size_t inner = ((n + ps - 1) / ps) * ps;
    size_t mapped = inner + 2 * ps;
    const char *op = "mmap";
    unsigned char *base = sys_mmap(NULL, mapped, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
    if (base == MAP_FAILED) {
        raise_os(op, errno, mapped);
        return -1;
    }
    op = "mprotect";
    if (sys_mprotect(base + ps, inner, PROT_READ | PROT_WRITE) != 0) goto fail;
    op = "madvise";
    if (exclude_and_detach(base, mapped) != 0) goto fail;
    op = "mlock";
    if (sys_mlock(base + ps, inner) != 0) goto fail;
    s->map = base;
    s->mapped = mapped;
    s->buf = base + ps;
    return 0;
fail : {
    int e = errno;
    sys_munmap(base, mapped);
    raise_os(op, e, inner);
    return -1;
}
}

/* Wipe n bytes of the scratch and give it back (a slot still exported is only wiped). */
static void ek_give(EkScratch *s, size_t n, int exported) {
    secure_zero(s->buf, n);
    if (s->slot >= 0) {
        ek.busy &= ~(1u << s->slot);
        if (exported) ek.retired |= 1u << s->slot;
    } else if (!exported && s->map != NULL) {
        sys_munmap(s->map, s->mapped);
        s->map = NULL;
    }
}

/* -- seal and open ----------------------------------------------------------------------------- */

static int ek_usable(EnclaveObject *e) {
    if (e->closed) {
        PyErr_SetString(SecretClosedError, "the enclave is closed");
        return -1;
    }
    if (e->pid != current_pid) {
        PyErr_SetString(SecureMemoryError,
                        "this enclave was sealed by the process that forked this one: a forked "
                        "child has no copy of its key. Seal enclaves after the fork");
        return -1;
    }
    if (ek.map == NULL || ek.pid != current_pid || !ek.have_key || e->key_id != ek.key_id) {
        PyErr_SetString(SecureMemoryError,
                        "this enclave's key was destroyed by purge(): it can never be opened");
        return -1;
    }
    return 0;
}

/* Decrypt e into out (at least e->size bytes); 0, or -1 with an exception. */
static int ek_decrypt_into(EnclaveObject *e, unsigned char *out) {
    unsigned long long mlen = 0;
    ek_recombine();
    int rc = ek.decrypt(out, &mlen, NULL, e->blob + EK_NONCE, (unsigned long long)e->size + EK_TAG,
                        NULL, 0, e->blob, ek.scratch);
    ek_after_crypto();
    ek.opens++;
    if (rc != 0) {
        secure_zero(out, e->size);
        PyErr_SetString(SecureMemoryError,
                        "the enclave's ciphertext does not authenticate: its memory was changed");
        return -1;
    }
    return 0;
}

static EnclaveObject *ek_alloc(PyTypeObject *type, size_t n) {
    EnclaveObject *e = (EnclaveObject *)type->tp_alloc(type, (Py_ssize_t)(n + EK_OVERHEAD));
    if (e == NULL) return NULL;
    e->pid = current_pid;
    e->size = (uint32_t)n;
    e->closed = 1; /* until sealed */
    return e;
}

/* Seal src into e (allocated by ek_alloc). The allocation comes first because it may run the
 * garbage collector, and a finalizer may purge(): from ek_ready() to the encryption no Python
 * code runs, so the key sealed under is the live one, never a purged (zeroed) one. */
static int ek_seal_into(EnclaveObject *e, const unsigned char *src, size_t n) {
    if (ek_ready() < 0) return -1;
    e->key_id = ek.key_id;
    if (ek_nonce(e->blob) < 0) return -1;
    unsigned long long clen = 0;
    ek_recombine();
    int rc = ek.encrypt(e->blob + EK_NONCE, &clen, src, (unsigned long long)n, NULL, 0, NULL,
                        e->blob, ek.scratch);
    ek_after_crypto();
    ek.seals++;
    if (rc != 0) {
        PyErr_SetString(SecureMemoryError, "the AEAD refused to encrypt");
        return -1;
    }
    e->closed = 0;
    return 0;
}

static EnclaveObject *ek_seal_bytes(PyTypeObject *type, const unsigned char *src, size_t n) {
    EnclaveObject *e = ek_alloc(type, n);
    if (e != NULL && ek_seal_into(e, src, n) < 0) Py_CLEAR(e);
    return e;
}

static int ek_check_size(Py_ssize_t n) {
    if (n <= 0 || n > (1 << 30)) {
        PyErr_Format(PyExc_ValueError, "an enclave holds between 1 and %d bytes, got %zd",
                     1 << 30, n);
        return -1;
    }
    return 0;
}

static int ek_check_type(PyObject *t) {
    if (!PyType_Check(t) || !PyType_IsSubtype((PyTypeObject *)t, &EnclaveCoreType)) {
        PyErr_SetString(PyExc_TypeError, "expected a subclass of EnclaveCore");
        return -1;
    }
    return 0;
}

/* EnclaveCore.seal(data) (a classmethod): a new enclave holding a copy of data's bytes. A
 * writable source is wiped afterwards, also on failure. What is not a C-contiguous buffer goes
 * to the refusal hook, which says why (and wipes a non-contiguous writable source). */
static PyObject *Enclave_seal(PyObject *cls, PyObject *src) {
    Py_buffer v;
    if (PyUnicode_Check(src) || !PyObject_CheckBuffer(src) ||
        PyObject_GetBuffer(src, &v, PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        if (ek_refusal_hook != NULL) {
            PyObject *r = PyObject_CallOneArg(ek_refusal_hook, src);
            if (r == NULL) return NULL;
            Py_DECREF(r);
        }
        PyErr_Format(PyExc_TypeError, "cannot seal %.100s: expected a bytes-like object",
                     Py_TYPE(src)->tp_name);
        return NULL;
    }
    EnclaveObject *e = NULL;
    if (v.len == 0) PyErr_SetString(PyExc_ValueError, "cannot seal 0 bytes");
    else if (ek_check_size(v.len) == 0) e = ek_seal_bytes((PyTypeObject *)cls, v.buf, (size_t)v.len);
    if (!v.readonly) secure_zero(v.buf, (size_t)v.len);
    PyBuffer_Release(&v);
    return (PyObject *)e;
}

static PyObject *mod_enclave_hooks(PyObject *m, PyObject *args) {
    /* enclave_hooks(setup, refuse): see ek_setup_hook and ek_refusal_hook. */
    (void)m;
    PyObject *setup, *refuse;
    if (!PyArg_ParseTuple(args, "OO", &setup, &refuse)) return NULL;
    Py_INCREF(setup);
    Py_XSETREF(ek_setup_hook, setup);
    Py_INCREF(refuse);
    Py_XSETREF(ek_refusal_hook, refuse);
    Py_RETURN_NONE;
}

/* enclave_seal_view(cls, buffer): seal without wiping (a secret's own view, for Secret.seal). */
static PyObject *mod_enclave_seal_view(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *cls, *src;
    if (!PyArg_ParseTuple(args, "OO", &cls, &src) || ek_check_type(cls) < 0) return NULL;
    Py_buffer v;
    if (PyObject_GetBuffer(src, &v, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    EnclaveObject *e = NULL;
    if (ek_check_size(v.len) == 0) e = ek_seal_bytes((PyTypeObject *)cls, v.buf, (size_t)v.len);
    PyBuffer_Release(&v);
    return (PyObject *)e;
}

/* enclave_random(cls, n): n bytes from getrandom, written only into locked scratch. */
static PyObject *mod_enclave_random(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *cls;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "On", &cls, &n) || ek_check_type(cls) < 0 || ek_check_size(n) < 0)
        return NULL;
    EnclaveObject *e = ek_alloc((PyTypeObject *)cls, (size_t)n); /* first: see ek_seal_into */
    if (e == NULL) return NULL;
    EkScratch s;
    if (ek_ready() < 0 || ek_take((size_t)n, &s) < 0) {
        Py_DECREF(e);
        return NULL;
    }
    int err = fill_random_bytes(s.buf, (size_t)n);
    if (err != 0) raise_os("getrandom", err, (size_t)n);
    if (err != 0 || ek_seal_into(e, s.buf, (size_t)n) < 0) Py_CLEAR(e);
    ek_give(&s, (size_t)n, 0);
    return (PyObject *)e;
}

/* -- EnclaveCore: the object ------------------------------------------------------------------- */

static void Enclave_dealloc(PyObject *self) { Py_TYPE(self)->tp_free(self); }

static PyObject *Enclave_open(EnclaveObject *e, PyObject *noargs) {
    (void)noargs;
    OpeningObject *o = PyObject_GC_New(OpeningObject, &OpeningType);
    if (o == NULL) return NULL;
    Py_INCREF(e);
    o->enclave = e;
    o->view = NULL;
    o->buf = o->map = NULL;
    o->mapped = 0;
    o->prev = o->next = NULL;
    o->slot = -1;
    o->exports = 0;
    o->state = 0;
    o->allow_view = 0;
    o->linked = 0;
    PyObject_GC_Track(o);
    return (PyObject *)o;
}

static PyObject *Enclave_decrypt_into(EnclaveObject *e, PyObject *dst) {
    /* _decrypt_into(writable buffer of exactly size bytes): for open_secret. */
    if (ek_usable(e) < 0) return NULL;
    Py_buffer v;
    if (PyObject_GetBuffer(dst, &v, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if ((size_t)v.len != e->size) {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError, "the destination must be exactly the enclave's size");
        return NULL;
    }
    int rc = ek_decrypt_into(e, v.buf);
    PyBuffer_Release(&v);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Enclave_close(EnclaveObject *e, PyObject *noargs) {
    /* Forget the ciphertext (it is not secret; zeroed anyway); idempotent. */
    (void)noargs;
    if (!e->closed) {
        e->closed = 1;
        secure_zero(e->blob, (size_t)e->size + EK_OVERHEAD);
    }
    Py_RETURN_NONE;
}

static Py_ssize_t Enclave_length(EnclaveObject *e) { return (Py_ssize_t)e->size; }

static PyObject *Enclave_get(EnclaveObject *e, void *which) {
    switch ((int)(intptr_t)which) {
    case 0:
        return PyLong_FromSize_t(e->size);
    case 1:
        return PyBool_FromLong(e->closed);
    case 2:
        return PyBytes_FromStringAndSize((const char *)e->blob, (Py_ssize_t)e->size + EK_OVERHEAD);
    default:
        return PyLong_FromUnsignedLong(e->key_id);
    }
}

static PyMethodDef Enclave_methods[] = {
    {"seal", (PyCFunction)Enclave_seal, METH_O | METH_CLASS,
     "seal(data): a new enclave holding a copy of data (any C-contiguous bytes-like object of "
     "1 byte to 1 GiB). A writable source (bytearray, writable memoryview...) is wiped right "
     "after, also on failure; a bytes source cannot be wiped and stays wherever it came from."},
    {"open", (PyCFunction)Enclave_open, METH_NOARGS,
     "open() -> context manager: `with e.open() as view:` a read-only view of the plaintext "
     "in locked scratch memory, wiped when the block ends."},
    {"_decrypt_into", (PyCFunction)Enclave_decrypt_into, METH_O, NULL},
    {"close", (PyCFunction)Enclave_close, METH_NOARGS, "Forget the ciphertext; idempotent."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Enclave_getset[] = {
    {"size", (getter)Enclave_get, NULL, "Length of the plaintext in bytes.", (void *)0},
    {"closed", (getter)Enclave_get, NULL, "Whether close() has run.", (void *)1},
    {"_sealed", (getter)Enclave_get, NULL, NULL, (void *)2},
    {"_key_id", (getter)Enclave_get, NULL, NULL, (void *)3},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Enclave_as_sequence = {.sq_length = (lenfunc)Enclave_length};

static PyTypeObject EnclaveCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "securememory._backend._native.EnclaveCore",
    .tp_basicsize = EK_BASICSIZE,
    .tp_itemsize = 1,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Ciphertext of a sealed enclave; opened only through the process's key.",
    .tp_dealloc = Enclave_dealloc,
    .tp_methods = Enclave_methods,
    .tp_getset = Enclave_getset,
    .tp_as_sequence = &Enclave_as_sequence,
};

/* -- Opening: the context manager of one open ------------------------------------------------- */

static void ek_link(OpeningObject *o) {
    o->prev = NULL;
    o->next = ek_openings;
    if (ek_openings != NULL) ek_openings->prev = o;
    ek_openings = o;
    o->linked = 1;
}

static void ek_unlink(OpeningObject *o) {
    if (!o->linked) return;
    if (o->prev != NULL) o->prev->next = o->next;
    else ek_openings = o->next;
    if (o->next != NULL) o->next->prev = o->prev;
    o->prev = o->next = NULL;
    o->linked = 0;
}

static PyObject *Opening_enter(OpeningObject *o, PyObject *noargs) {
    (void)noargs;
    if (o->state != 0) {
        PyErr_SetString(PyExc_RuntimeError, "this open() context was already entered; call "
                                            "open() again");
        return NULL;
    }
    EnclaveObject *e = o->enclave;
    if (ek_usable(e) < 0) return NULL;
    EkScratch s;
    if (ek_take(e->size, &s) < 0) return NULL;
    if (ek_decrypt_into(e, s.buf) < 0) {
        ek_give(&s, e->size, 0);
        return NULL;
    }
    o->buf = s.buf;
    o->map = s.map;
    o->mapped = s.mapped;
    o->slot = s.slot;
    o->pid = current_pid;
    o->state = 1;
    ek_link(o);
    o->allow_view = 1;
    PyObject *view = PyMemoryView_FromObject((PyObject *)o);
    o->allow_view = 0;
    if (view == NULL) {
        ek_unlink(o);
        ek_give(&s, e->size, 0);
        o->state = 2;
        return NULL;
    }
    o->view = view;
    Py_INCREF(view);
    return view;
}

static void ek_finish(OpeningObject *o);

static void ek_end(OpeningObject *o) {
    PyObject *view = o->view;
    o->view = NULL;
    PyObject *held = view != NULL ? release_view(view) : NULL;
    ek_finish(o); /* still exported: its slot is wiped and retired */
    Py_XDECREF(held);
}

static void ek_finish(OpeningObject *o) {
    EkScratch s = {o->buf, o->map, o->mapped, o->slot};
    o->state = 2;
    if (o->pid != current_pid) {
        /* forked inside the block: the parent's pages are not here, and the list it is on is
         * the parent's (this process starts its own): touch neither */
        o->linked = 0;
        o->prev = o->next = NULL;
        o->buf = NULL;
        return;
    }
    ek_unlink(o);
    if (o->buf == NULL) return;
    ek_give(&s, o->enclave->size, o->exports > 0);
    if (o->exports == 0) o->buf = NULL, o->map = NULL;
    scrub_registers();
}

static PyObject *Opening_exit(OpeningObject *o, PyObject *const *args, Py_ssize_t nargs) {
    (void)args;
    (void)nargs;
    if (o->state == 1) ek_end(o);
    Py_RETURN_NONE;
}

static int Opening_getbuffer(PyObject *self, Py_buffer *view, int flags) {
    OpeningObject *o = (OpeningObject *)self;
    if (!o->allow_view || o->state != 1) {
        PyErr_SetString(PyExc_BufferError,
                        "an enclave's plaintext is readable only inside `with e.open() as view`");
        return -1;
    }
    if (PyBuffer_FillInfo(view, self, o->buf, (Py_ssize_t)o->enclave->size, 1, flags) != 0)
        return -1;
    o->exports++;
    return 0;
}

static void Opening_releasebuffer(PyObject *self, Py_buffer *view) {
    (void)view;
    OpeningObject *o = (OpeningObject *)self;
    o->exports--;
    if (o->exports == 0 && o->state == 2 && o->buf != NULL) {
        /* the last kept view went: the (wiped) scratch can be reused */
        if (o->pid == current_pid) {
            if (o->slot >= 0) {
                if (ek.pid == current_pid) ek.retired &= ~(1u << o->slot);
            } else if (o->map != NULL) {
                sys_munmap(o->map, o->mapped);
            }
        }
        o->buf = o->map = NULL;
    }
}

static PyBufferProcs Opening_as_buffer = {Opening_getbuffer, Opening_releasebuffer};

/* The view it hands out is a buffer of the opening itself, and the opening keeps the view: a
 * cycle. An opening abandoned inside its block (its view dropped, never exited) is therefore
 * found by the garbage collector, whose tp_clear ends it: the slot is wiped. */
static int Opening_traverse(OpeningObject *o, visitproc visit, void *arg) {
    Py_VISIT(o->view);
    Py_VISIT(o->enclave);
    return 0;
}

static void ek_abandon(OpeningObject *o) {
    if (o->state == 1) { /* abandoned inside the block: end it */
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        ek_end(o);
        PyErr_Restore(t, v, tb);
    }
}

static int Opening_clear(OpeningObject *o) {
    ek_abandon(o); /* releases and drops the view; the enclave is kept until dealloc */
    return 0;
}

static void Opening_dealloc(OpeningObject *o) {
    PyObject_GC_UnTrack(o);
    ek_abandon(o);
    Py_XDECREF(o->view);
    Py_DECREF(o->enclave);
    PyObject_GC_Del(o);
}

static PyMethodDef Opening_methods[] = {
    {"__enter__", (PyCFunction)Opening_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))Opening_exit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject OpeningType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "securememory._backend._native.EnclaveOpening",
    .tp_basicsize = sizeof(OpeningObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One open of an enclave: `with enclave.open() as view:`.",
    .tp_dealloc = (destructor)Opening_dealloc,
    .tp_traverse = (traverseproc)Opening_traverse,
    .tp_clear = (inquiry)Opening_clear,
    .tp_methods = Opening_methods,
    .tp_as_buffer = &Opening_as_buffer,
};

/* -- module functions -------------------------------------------------------------------------- */

static PyObject *mod_enclave_core(PyObject *m, PyObject *noargs) {
    /* The EnclaveCore type (readied and added to the module on first call), for the Python
     * layer to subclass. */
    (void)noargs;
    if (!ek_types_ready) {
        if (PyType_Ready(&EnclaveCoreType) < 0 || PyType_Ready(&OpeningType) < 0) return NULL;
        Py_INCREF(&EnclaveCoreType);
        if (PyModule_AddObject(m, "EnclaveCore", (PyObject *)&EnclaveCoreType) < 0) {
            Py_DECREF(&EnclaveCoreType);
            return NULL;
        }
        Py_INCREF(&OpeningType);
        if (PyModule_AddObject(m, "EnclaveOpening", (PyObject *)&OpeningType) < 0) {
            Py_DECREF(&OpeningType);
            return NULL;
        }
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
        PyModule_AddIntConstant(m, "SCRUBS_VECTOR_REGISTERS", 1);
#else
        PyModule_AddIntConstant(m, "SCRUBS_VECTOR_REGISTERS", 0);
#endif
        ek_types_ready = 1;
    }
    Py_INCREF(&EnclaveCoreType);
    return (PyObject *)&EnclaveCoreType;
}

static PyObject *mod_enclave_setup(PyObject *m, PyObject *args) {
    /* enclave_setup(encrypt, decrypt, blake2b, backing): libsodium's
     * crypto_aead_xchacha20poly1305_ietf_encrypt/_decrypt and
     * crypto_generichash_blake2b_salt_personal as addresses, and the keyring's backing. */
    (void)m;
    unsigned long long enc, dec, hash;
    int backing;
    if (!PyArg_ParseTuple(args, "KKKi", &enc, &dec, &hash, &backing)) return NULL;
    if (!enc || !dec || !hash ||
        (backing != BACKING_SECRETMEM && backing != BACKING_ANONYMOUS)) {
        PyErr_SetString(PyExc_ValueError, "enclave_setup: bad function address or backing");
        return NULL;
    }
    if (ek.encrypt != NULL) Py_RETURN_NONE; /* once per process */
    ek.encrypt = (ek_encrypt_fn)(uintptr_t)enc;
    ek.decrypt = (ek_decrypt_fn)(uintptr_t)dec;
    ek.hash = (ek_hash_fn)(uintptr_t)hash;
    ek.backing = backing;
    Py_RETURN_NONE;
}

static PyObject *mod_enclave_rekey(PyObject *m, PyObject *noargs) {
    /* A new split of the same key: new L, R = BLAKE2b(L) xor K. Enclaves stay valid. */
    (void)m;
    (void)noargs;
    if (ek_ready() < 0) return NULL;
    ek_recombine();
    int e = ek_split();
    ek_after_crypto();
    if (e != 0) {
        raise_os("getrandom", e, EK_KEY);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *mod_enclave_purge(PyObject *m, PyObject *noargs) {
    /* Destroy the key (every enclave sealed so far can never be opened), wipe the plaintext of
     * every open running now, and wipe and close every secret this process owns. Returns the
     * number of secrets closed. */
    (void)m;
    (void)noargs;
    if (ek.map != NULL && ek.pid == current_pid) {
        secure_zero(ek.left, page_size);
        for (OpeningObject *o = ek_openings; o != NULL; o = o->next)
            if (o->buf != NULL && o->pid == current_pid) secure_zero(o->buf, o->enclave->size);
        secure_zero(ek.pool, (size_t)EK_SLOT * EK_SLOTS);
    }
    ek.have_key = 0;
    ek.key_id++;
    Py_ssize_t n = 0;
    RegionObject *r = regions;
    while (r != NULL) {
        RegionObject *next = r->next;
        if (r->pid == current_pid && r->state == ST_FILLING) {
            /* being written through a view now: freeing it would fault the writer; the end of
             * the fill wipes and frees it and raises (Region_finish) */
            r->flags |= F_PURGED;
            n++;
        } else if (r->pid == current_pid && is_live(r)) {
            if (r->count == 0) {
                if (free_region(r) < 0) PyErr_Clear();
            } else { /* an access runs: wipe and close, keep it mapped until the last ends */
                wipe_in_place(r, F_PURGED);
            }
            n++;
        }
        r = next;
    }
    wake_closers();
    scrub_registers();
    return PyLong_FromSsize_t(n);
}

static PyObject *mod_enclave_stats(PyObject *m, PyObject *noargs) {
    /* (keyring address, keyring bytes locked, key present, slots busy, slots retired, opens,
     *  seals, backing) */
    (void)m;
    (void)noargs;
    int here = ek.map != NULL && ek.pid == current_pid;
    return Py_BuildValue("(nniiiKKi)", here ? (Py_ssize_t)(uintptr_t)(ek.map + page_size) : 0,
                         here ? (Py_ssize_t)ek.inner_len : 0, here && ek.have_key,
                         __builtin_popcount(ek.busy), __builtin_popcount(ek.retired), ek.opens,
                         ek.seals, ek.backing);
}

static PyObject *mod_enclave_reveal(PyObject *m, PyObject *arg) {
    /* The live proofs only: write the key's two halves (L || R, 64 bytes) to a file descriptor
     * straight from the keyring (no copy in this process's memory), so a test can compute the
     * key and search the process for it. As read_byte, it hands out what it protects. */
    (void)m;
    int fd = (int)PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    if (ek_ready() < 0) return NULL;
    if (write(fd, ek.left, EK_KEY) != EK_KEY || write(fd, ek.right, EK_KEY) != EK_KEY) {
        raise_os("write", errno, 2 * EK_KEY);
        return NULL;
    }
    Py_RETURN_NONE;
}

#define ENCLAVE_METHODS                                                                          \
    {"enclave_core", mod_enclave_core, METH_NOARGS, NULL},                                       \
        {"enclave_setup", mod_enclave_setup, METH_VARARGS, NULL},                                \
        {"enclave_hooks", mod_enclave_hooks, METH_VARARGS, NULL},                                \
        {"enclave_seal_view", mod_enclave_seal_view, METH_VARARGS, NULL},                                  \
        {"enclave_random", mod_enclave_random, METH_VARARGS, NULL},                              \
        {"enclave_rekey", mod_enclave_rekey, METH_NOARGS, NULL},                                 \
        {"enclave_purge", mod_enclave_purge, METH_NOARGS, NULL},                                 \
        {"enclave_stats", mod_enclave_stats, METH_NOARGS, NULL},                                 \
        {"enclave_reveal", mod_enclave_reveal, METH_O, NULL},

/* ==== end of sealed enclaves ================================================================== */
