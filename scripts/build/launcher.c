/*
 * The front of the single-file `audiotag`: a static launcher with the one-folder PyInstaller build appended.
 *
 * File layout:  [this program, linked statically] [payload: zstd-compressed ustar of the one-folder build]
 *               [trailer: struct trailer, written by scripts/build/pack_binary.py]
 *
 * On start it looks for <cache>/<id>/ (id = version + payload hash, so every build gets its own folder).
 *  - Found: start the program at once (the common case: a stat, an exec).
 *  - Missing: unpack the payload into <cache>/.<id>.partial-XXXXXX/ (mkdtemp), then rename() it to <cache>/<id>.
 *    The rename is atomic, so a folder under its final name is always complete; when several copies start at once, each
 *    unpacks its own partial folder, one rename wins and the others delete theirs. A partial folder left by a
 *    killed launcher is locked by nobody (flock) and is deleted by the next launcher that unpacks. Nothing is
 *    written anywhere else: not to /tmp, not next to the binary.
 * <cache> is $AUDIOTAG_CACHE_DIR, else $XDG_CACHE_HOME/audiotag, else $HOME/.cache/audiotag, else the home
 * folder from /etc/passwd + /.cache/audiotag.
 *
 * The program is started through the dynamic loader shipped in the bundle (the build host's glibc), with the
 * bundle as its only library path:  <dir>/_internal/ld-linux-x86-64.so.2 --library-path <dir>/_internal
 * --argv0 <dir>/audiotag <dir>/audiotag ARGS...  So the server's own glibc is never used and its version does
 * not matter; this launcher is static for the same reason. PyInstaller's bootloader restarts itself once
 * through /proc/self/exe (the same loader) with LD_LIBRARY_PATH pointing at the bundle.
 * The one variable it sets is ORT_DISABLE_TELEMETRY=1 (when unset): see main().
 *
 * Build: gcc -static -O2 -o launcher scripts/build/launcher.c -l:libzstd.a  (scripts/build/build_binary.sh does it).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#define TRAILER_MAGIC "AUDIOTAG-SFX-v1"
#define LOADER "_internal/ld-linux-x86-64.so.2"
#define LIBDIR "_internal"
#define PROGRAM "audiotag"
#define STALE_SECONDS 10 /* a partial folder younger than this may not be locked by its owner yet */

struct trailer {               /* little-endian, at the very end of the file */
    char magic[16];            /* TRAILER_MAGIC, NUL-padded */
    uint64_t payload_offset;   /* where the zstd stream starts */
    uint64_t payload_size;     /* its length in bytes */
    char id[64];               /* cache folder name: "<version>-<sha256 of payload, 16 hex>", NUL-padded */
};

static const char *self_name = "audiotag";
static char partial_dir[4096]; /* set while unpacking, so die() can remove it */

static void rm_tree(const char *path);

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: launcher: ", self_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    if (partial_dir[0]) rm_tree(partial_dir);
    exit(127);
}

static int join(char *out, size_t size, const char *a, const char *b) {
    int n = snprintf(out, size, "%s/%s", a, b);
    return n < 0 || (size_t)n >= size ? -1 : 0;
}

/* This executable's path: /proc/self/exe, else argv[0] (absolute, relative, or looked up on PATH). */
static void find_self(const char *argv0, char *out, size_t size) {
    ssize_t n = readlink("/proc/self/exe", out, size - 1);
    if (n > 0) {
        out[n] = 0;
        return;
    }
    if (strchr(argv0, '/')) {
        if (!realpath(argv0, out)) die("cannot resolve %s: %s", argv0, strerror(errno));
        return;
    }
    const char *path = getenv("PATH");
    char dir[4096], candidate[4096];
    while (path && *path) {
        size_t len = strcspn(path, ":");
        snprintf(dir, sizeof dir, "%.*s", (int)len, path);
        if (join(candidate, sizeof candidate, len ? dir : ".", argv0) == 0 && access(candidate, X_OK) == 0 &&
            realpath(candidate, out))
            return;
        path += len + (path[len] == ':');
    }
    die("cannot find my own file (no /proc/self/exe and %s is not on PATH)", argv0);
}

/* Home folder from /etc/passwd, for when HOME is unset (e.g. under `env -i`). No NSS: this binary is static. */
static int passwd_home(char *out, size_t size) {
    FILE *f = fopen("/etc/passwd", "r");
    char line[1024];
    unsigned long uid = getuid();
    if (!f) return -1;
    while (fgets(line, sizeof line, f)) {
        char *field[7] = {0};
        char *p = line;
        int i;
        for (i = 0; i < 7 && p; i++) {
            field[i] = p;
            p = strchr(p, ':');
            if (p) *p++ = 0;
        }
        if (i == 7 && field[2] && strtoul(field[2], NULL, 10) == uid && field[5][0] == '/') {
            snprintf(out, size, "%s", field[5]);
            fclose(f);
            return 0;
        }
    }
    fclose(f);
    return -1;
}

static void cache_root(char *out, size_t size) {
    const char *dir = getenv("AUDIOTAG_CACHE_DIR");
    const char *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    char pw[2048];
    if (dir && dir[0]) snprintf(out, size, "%s", dir);
    else if (xdg && xdg[0] == '/') snprintf(out, size, "%s/audiotag", xdg);
    else if (home && home[0] == '/') snprintf(out, size, "%s/.cache/audiotag", home);
    else if (passwd_home(pw, sizeof pw) == 0) snprintf(out, size, "%s/.cache/audiotag", pw);
    else die("no cache folder: set AUDIOTAG_CACHE_DIR (or HOME) to a writable folder");
}

static int mkdirs(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) < 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(buf, 0755) < 0 && errno != EEXIST ? -1 : 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path) < 0 && errno != ENOENT ? -1 : 0;
}

static void rm_tree(const char *path) { nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* Delete partial folders whose launcher died (its flock is gone) -- never the live ones. */
static void remove_dead_partials(const char *root) {
    DIR *d = opendir(root);
    struct dirent *e;
    char path[4096];
    struct stat st;
    if (!d) return;
    while ((e = readdir(d))) {
        if (e->d_name[0] != '.' || !strstr(e->d_name, ".partial-")) continue;
        if (join(path, sizeof path, root, e->d_name) < 0 || lstat(path, &st) < 0 || !S_ISDIR(st.st_mode)) continue;
        if (time(NULL) - st.st_mtime < STALE_SECONDS) continue;
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) continue;
        if (flock(fd, LOCK_EX | LOCK_NB) == 0) rm_tree(path);
        close(fd);
    }
    closedir(d);
}

/* ---- ustar reader fed by the zstd stream ---- */

struct untar {
    const char *dest;      /* folder to unpack into */
    unsigned char header[512];
    size_t have;           /* bytes of header collected */
    uint64_t left;         /* bytes of file data still to write */
    uint64_t pad;          /* padding bytes to skip after the data */
    int fd;                /* file being written, or -1 */
    int done;              /* two zero blocks seen */
    char name[4096];
};

static uint64_t octal(const unsigned char *p, size_t n) {
    uint64_t v = 0;
    for (size_t i = 0; i < n && p[i]; i++) {
        if (p[i] == ' ') continue;
        if (p[i] < '0' || p[i] > '7') die("corrupt payload (bad number in archive header)");
        v = v * 8 + (p[i] - '0');
    }
    return v;
}

static void safe_name(const char *name) {
    if (name[0] == '/' || strstr(name, "..")) die("corrupt payload (unsafe path %s)", name);
}

static void begin_entry(struct untar *t) {
    const unsigned char *h = t->header;
    char name[260], path[4096];
    int zero = 1;
    for (int i = 0; i < 512; i++) zero &= h[i] == 0;
    if (zero) {
        t->done = 1;
        return;
    }
    if (memcmp(h + 257, "ustar", 5) != 0) die("corrupt payload (not a ustar archive)");
    if (h[345]) snprintf(name, sizeof name, "%.155s/%.100s", (const char *)h + 345, (const char *)h);
    else snprintf(name, sizeof name, "%.100s", (const char *)h);
    safe_name(name);
    if (join(path, sizeof path, t->dest, name) < 0) die("path too long: %s", name);
    unsigned mode = (unsigned)octal(h + 100, 8) & 0777;
    uint64_t size = octal(h + 124, 12);
    switch (h[156]) {
    case '5':
        if (mkdir(path, mode | 0700) < 0 && errno != EEXIST) die("cannot create %s: %s", path, strerror(errno));
        break;
    case '2': {
        char target[101];
        snprintf(target, sizeof target, "%.100s", (const char *)h + 157);
        if (symlink(target, path) < 0) die("cannot create %s: %s", path, strerror(errno));
        break;
    }
    case '0':
    case 0:
        t->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode | 0600);
        if (t->fd < 0) die("cannot create %s: %s", path, strerror(errno));
        snprintf(t->name, sizeof t->name, "%s", path);
        t->left = size;
        t->pad = (512 - size % 512) % 512;
        if (size == 0) {
            close(t->fd);
            t->fd = -1;
        }
        break;
    default:
        die("corrupt payload (entry type %c)", h[156]);
    }
}

static void untar_feed(struct untar *t, const unsigned char *p, size_t n) {
    while (n && !t->done) {
        if (t->left) {
            size_t k = n < t->left ? n : (size_t)t->left;
            for (size_t off = 0; off < k;) {
                ssize_t w = write(t->fd, p + off, k - off);
                if (w < 0 && errno == EINTR) continue;
                if (w < 0) die("cannot write %s: %s", t->name, strerror(errno));
                off += (size_t)w;
            }
            p += k, n -= k, t->left -= k;
            if (!t->left) {
                if (close(t->fd) < 0) die("cannot write %s: %s", t->name, strerror(errno));
                t->fd = -1;
            }
        } else if (t->pad) {
            size_t k = n < t->pad ? n : (size_t)t->pad;
            p += k, n -= k, t->pad -= k;
        } else {
            size_t k = 512 - t->have;
            if (k > n) k = n;
            memcpy(t->header + t->have, p, k);
            p += k, n -= k, t->have += k;
            if (t->have == 512) {
                t->have = 0;
                begin_entry(t);
            }
        }
    }
}

static void unpack(int self_fd, const struct trailer *tr, const char *dest) {
    ZSTD_DCtx *z = ZSTD_createDCtx();
    size_t in_cap = ZSTD_DStreamInSize(), out_cap = ZSTD_DStreamOutSize();
    unsigned char *in = malloc(in_cap), *out = malloc(out_cap);
    struct untar t = {.dest = dest, .fd = -1};
    uint64_t pos = tr->payload_offset, end = tr->payload_offset + tr->payload_size;
    size_t ret = 1;
    if (!z || !in || !out) die("out of memory");
    while (pos < end) {
        size_t want = end - pos < in_cap ? (size_t)(end - pos) : in_cap;
        ssize_t got = pread(self_fd, in, want, (off_t)pos);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) die("cannot read the payload: %s", got < 0 ? strerror(errno) : "file is truncated");
        pos += (uint64_t)got;
        ZSTD_inBuffer ib = {in, (size_t)got, 0};
        ZSTD_outBuffer ob;
        do { /* until this chunk is consumed and the decoder holds nothing back */
            ob = (ZSTD_outBuffer){out, out_cap, 0};
            ret = ZSTD_decompressStream(z, &ob, &ib);
            if (ZSTD_isError(ret)) die("corrupt payload (%s)", ZSTD_getErrorName(ret));
            untar_feed(&t, out, ob.pos);
        } while (ib.pos < ib.size || ob.pos == out_cap);
    }
    if (ret != 0 || !t.done || t.fd >= 0) die("corrupt payload (archive ends early)");
    ZSTD_freeDCtx(z);
    free(in);
    free(out);
}

/* Unpack into a locked partial folder beside the final one, then rename it into place. */
static void install(int self_fd, const struct trailer *tr, const char *root, const char *final_dir) {
    char *partial = partial_dir;
    if (mkdirs(root) < 0) die("cannot create cache folder %s: %s (set AUDIOTAG_CACHE_DIR)", root, strerror(errno));
    remove_dead_partials(root);
    if (snprintf(partial_dir, sizeof partial_dir, "%s/.%s.partial-XXXXXX", root, tr->id) >= (int)sizeof partial_dir ||
        !mkdtemp(partial_dir)) {
        partial_dir[0] = 0;
        die("cannot create a folder in %s: %s (set AUDIOTAG_CACHE_DIR)", root, strerror(errno));
    }
    /* The lock tells remove_dead_partials() that we are alive. Where flock is not supported, nobody can take
       it either, so the folder is simply never removed by others: no lock is still safe. */
    int lock = open(partial, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (lock < 0) die("cannot open %s: %s", partial, strerror(errno));
    flock(lock, LOCK_EX | LOCK_NB);
    unpack(self_fd, tr, partial);
    if (chmod(partial, 0755) < 0) die("cannot chmod %s: %s", partial, strerror(errno));
    if (rename(partial, final_dir) < 0) {
        if (errno != EEXIST && errno != ENOTEMPTY) die("cannot rename %s: %s", partial, strerror(errno));
        rm_tree(partial); /* another copy finished first: use its folder */
    }
    partial_dir[0] = 0;
    close(lock);
}

int main(int argc, char **argv) {
    char self[4096], root[4096], dir[4096], loader[4096], libdir[4096], program[4096];
    struct trailer tr;
    struct stat st;
    if (argc > 0 && argv[0][0]) {
        const char *slash = strrchr(argv[0], '/');
        self_name = slash ? slash + 1 : argv[0];
    }
    find_self(argc > 0 ? argv[0] : "audiotag", self, sizeof self);
    int fd = open(self, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0) die("cannot open %s: %s", self, strerror(errno));
    if (st.st_size < (off_t)sizeof tr || pread(fd, &tr, sizeof tr, st.st_size - (off_t)sizeof tr) != sizeof tr ||
        memcmp(tr.magic, TRAILER_MAGIC, sizeof TRAILER_MAGIC) != 0 || tr.id[sizeof tr.id - 1] != 0 ||
        tr.payload_offset + tr.payload_size + sizeof tr != (uint64_t)st.st_size)
        die("%s has no payload (a bare launcher, or a damaged file)", self);
    if (strchr(tr.id, '/') || tr.id[0] == '.' || !tr.id[0]) die("corrupt trailer");

    cache_root(root, sizeof root);
    if (join(dir, sizeof dir, root, tr.id) < 0 || join(loader, sizeof loader, dir, LOADER) < 0 ||
        join(libdir, sizeof libdir, dir, LIBDIR) < 0 || join(program, sizeof program, dir, PROGRAM) < 0)
        die("cache path too long: %s", root);
    if (stat(dir, &st) < 0) {
        install(fd, &tr, root, dir);
        if (stat(dir, &st) < 0) die("cannot find %s after unpacking: %s", dir, strerror(errno));
    }
    close(fd);
    /* Run only code that this user (or root) unpacked and that nobody else can have changed. */
    if ((st.st_uid != getuid() && st.st_uid != 0) || (st.st_mode & 022))
        die("%s is not owned by you or is writable by others: delete it, or set AUDIOTAG_CACHE_DIR", dir);

    /* The bundled program (PyInstaller's bootloader) restarts itself through /proc/self/exe; without /proc it
       would fall back to the server's own loader and C library and fail with a cryptic "GLIBC_2.xx not found". */
    if (access("/proc/self/exe", F_OK) < 0)
        die("needs /proc (the bundled program starts through /proc/self/exe): mount it, e.g. mount -t proc proc /proc");
    char **args = calloc((size_t)argc + 7, sizeof *args);
    if (!args) die("out of memory");
    int n = 0;
    args[n++] = loader;
    args[n++] = "--library-path";
    args[n++] = libdir;
    args[n++] = "--argv0";
    args[n++] = program;
    args[n++] = program;
    for (int i = 1; i < argc; i++) args[n++] = argv[i];
    args[n] = NULL;
    /* onnxruntime 1.31's telemetry writes $TMPDIR/.ses and ~/.cache/Microsoft/... on every run (and would
       upload): off, unless the user set the variable. */
    setenv("ORT_DISABLE_TELEMETRY", "1", 0);
    execv(loader, args);
    die("cannot start %s: %s (if the cache folder is damaged, delete %s; if its file system is mounted noexec, "
        "set AUDIOTAG_CACHE_DIR elsewhere)", loader, strerror(errno), dir);
}
