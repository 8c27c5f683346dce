/*
 * ufaas-agent: the main process of every ufaas container. It runs the commands the server
 * sends it and streams their output back over the container's attached stdio, so a task in
 * a live container costs a fork and an exec instead of a Docker exec (whose engine and runc
 * work is most of a warm task's time).
 *
 * Built static (see build.rs) so it runs in any image, even one without a libc or a shell.
 *
 * Server -> agent, on stdin: text lines, so that nothing we send can ever contain the
 * attach stream's detach-key sequence (Docker cuts an attach on it):
 *     <type> <job> [<base64 payload>]\n
 *   R  run      payload: u32 argc, u32 envc, u8 flags (1: stdin follows; 2: a u32 `keep`
 *               follows; 4: the job ends when its process does, its pipes closed then,
 *               whatever still holds them), [u32 keep], then cwd, argv[], env[] ("K=V", laid over the agent's
 *               own environment), each NUL-terminated. The first `keep` bytes of each of the
 *               job's streams are kept until the job is acknowledged, for G.
 *   I  stdin    payload: bytes for the job's stdin
 *   C  close    the job's stdin ends
 *   K  kill     payload: u32 signal, sent to the job's process group
 *   A  ack      forget an ended job
 *   Q  query    payload: a nonce; answered by Y (the nonce), one P or X per known job, then Z
 *   G  replay   payload: u32 stdout offset, u32 stderr offset: the kept output of the job
 *               from those offsets on, as o and e frames, then W; then X if it has ended.
 *               A restarted server asks for what it had not stored yet.
 *
 * Agent -> server, on stdout: binary frames  u8 type, u32 job, u32 length, payload
 * (integers little-endian):
 *   H  hello    payload: version text, once at start
 *   S  started  payload: u32 pid
 *   F  failed   payload: u32 exit code, message (the command never ran; the job has ended)
 *   O  stdout   payload: bytes
 *   E  stderr   payload: bytes
 *   X  exited   payload: u32 exit code (128 + signal when killed by one)
 *   P  running  (query answer)
 *   Y  sync     payload: the query's nonce
 *   Z  end      the end of a query's answer
 *   T  stopping payload: u32 signal: the container was told to stop (docker stop, the engine
 *               shutting down); it was passed on to every job, and we leave once they end
 *   o  stdout   payload: bytes, replayed (answer to G)
 *   e  stderr   payload: bytes, replayed
 *   W  replayed payload: u64 bytes the job has printed on stdout so far, u64 on stderr; empty
 *               when the job is unknown. Every O or E sent before it is covered by the
 *               replay; every one after it is new.
 *
 * The agent is the container's PID 1: it reaps every orphan, and no other process holds its
 * stdio (a task writing to /proc/1/fd/1 would otherwise corrupt the frames).
 *
 * A job ends once its process has exited and both its output pipes are closed, so nothing
 * it (or a child still holding them) printed is lost; X always follows all of its output.
 * Ended jobs are remembered until acknowledged, so a restarted server can learn how a job
 * that ran while it was away ended.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION "ufaas-agent/2"
#define MAX_LINE (96u << 20) /* the longest line we accept from the server */
#define CHUNK 65536
#define MAX_JOBS 4096

extern char **environ;

struct job {
    int used;
    uint32_t id;
    pid_t pid;      /* > 0 once started */
    int out_fd;     /* -1 once closed */
    int err_fd;
    int in_fd;      /* write end of the job's stdin, -1 when closed or /dev/null */
    char *pending;  /* stdin bytes not yet written */
    size_t pending_len, pending_off;
    int close_in;   /* close stdin once pending is written */
    int ends_with_process; /* flag 4: a child left holding the pipes does not keep it open */
    int reaped;
    uint32_t code;
    int ended;      /* X or F sent */
    unsigned long seq; /* for evicting the oldest ended job when the table is full */
    uint32_t keep;     /* bytes of each stream kept for a replay */
    unsigned char *kept[2];
    size_t kept_len[2];
    uint64_t sent[2];  /* bytes sent of each stream */
};

static struct job jobs[MAX_JOBS];
static unsigned long job_seq;
/* The signal that asked us to stop: we leave once no job runs. */
static int stopping;

/* ---- output to the server ---------------------------------------------------------- */

static void write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return; /* nobody reads our stdout any more: nothing useful to do */
        }
        p += n;
        len -= (size_t)n;
    }
}

static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = v & 0xff;
    p[1] = (v >> 8) & 0xff;
    p[2] = (v >> 16) & 0xff;
    p[3] = (v >> 24) & 0xff;
}

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void send_frame(char type, uint32_t job, const void *a, size_t alen, const void *b, size_t blen) {
    unsigned char hdr[9];
    hdr[0] = (unsigned char)type;
    put_u32(hdr + 1, job);
    put_u32(hdr + 5, (uint32_t)(alen + blen));
    /* One buffer, one write where it fits: frames from one job never interleave anyway
     * (we are single-threaded), this only saves system calls. */
    static unsigned char buf[9 + CHUNK + 64];
    if (alen + blen <= CHUNK + 64) {
        memcpy(buf, hdr, 9);
        if (alen) memcpy(buf + 9, a, alen);
        if (blen) memcpy(buf + 9 + alen, b, blen);
        write_all(1, buf, 9 + alen + blen);
    } else {
        write_all(1, hdr, 9);
        if (alen) write_all(1, a, alen);
        if (blen) write_all(1, b, blen);
    }
}

static void send_code(char type, uint32_t job, uint32_t code, const char *msg) {
    unsigned char c[4];
    put_u32(c, code);
    send_frame(type, job, c, 4, msg, msg ? strlen(msg) : 0);
}

/* ---- jobs -------------------------------------------------------------------------- */

static struct job *find_job(uint32_t id) {
    for (int i = 0; i < MAX_JOBS; i++)
        if (jobs[i].used && jobs[i].id == id) return &jobs[i];
    return NULL;
}

static void close_fd(int *fd) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

static void drop_stdin(struct job *j) {
    close_fd(&j->in_fd);
    free(j->pending);
    j->pending = NULL;
    j->pending_len = j->pending_off = 0;
}

static void forget(struct job *j) {
    close_fd(&j->out_fd);
    close_fd(&j->err_fd);
    drop_stdin(j);
    free(j->kept[0]);
    free(j->kept[1]);
    memset(j, 0, sizeof *j);
    j->out_fd = j->err_fd = j->in_fd = -1;
}

/* A free slot; when the table is full, the oldest ended job nobody acknowledged goes. */
static struct job *new_job(uint32_t id) {
    struct job *oldest = NULL;
    for (int i = 0; i < MAX_JOBS; i++) {
        if (!jobs[i].used) {
            oldest = &jobs[i];
            break;
        }
        if (jobs[i].ended && (!oldest || jobs[i].seq < oldest->seq)) oldest = &jobs[i];
    }
    if (!oldest) return NULL;
    forget(oldest);
    oldest->used = 1;
    oldest->id = id;
    oldest->seq = ++job_seq;
    return oldest;
}

static void maybe_end(struct job *j) {
    if (j->used && !j->ended && j->pid > 0 && j->reaped && j->out_fd < 0 && j->err_fd < 0) {
        drop_stdin(j);
        send_code('X', j->id, j->code, NULL);
        j->ended = 1;
    }
}

static void fail_job(struct job *j, uint32_t code, const char *msg) {
    send_code('F', j->id, code, msg);
    close_fd(&j->out_fd);
    close_fd(&j->err_fd);
    drop_stdin(j);
    j->code = code;
    j->ended = 1;
}

/* The job's environment: ours, with each of `env` ("K=V") replacing or adding. */
static char **job_env(char **env, uint32_t envc) {
    size_t n = 0;
    while (environ && environ[n]) n++;
    char **out = calloc(n + envc + 1, sizeof *out);
    if (!out) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *eq = strchr(environ[i], '=');
        size_t klen = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
        int replaced = 0;
        for (uint32_t e = 0; e < envc; e++)
            if (strncmp(env[e], environ[i], klen) == 0 && env[e][klen] == '=') replaced = 1;
        if (!replaced) out[k++] = environ[i];
    }
    for (uint32_t e = 0; e < envc; e++) out[k++] = env[e];
    out[k] = NULL;
    return out;
}

static void start_job(uint32_t id, const unsigned char *p, size_t len) {
    struct job *j = find_job(id);
    if (j && !j->ended) {
        send_code('F', id, 126, "the agent already runs a job with this id");
        return;
    }
    if (j) forget(j);
    j = new_job(id);
    if (!j) {
        send_code('F', id, 126, "the agent runs too many commands at once");
        return;
    }
    if (len < 9) {
        fail_job(j, 126, "malformed run request");
        return;
    }
    uint32_t argc = get_u32(p), envc = get_u32(p + 4);
    int want_stdin = p[8] & 1;
    j->ends_with_process = (p[8] & 4) != 0;
    size_t off = 9, got = 0;
    if (p[8] & 2) {
        if (len < 13) {
            fail_job(j, 126, "malformed run request");
            return;
        }
        j->keep = get_u32(p + 9);
        off = 13;
    }
    /* Split the NUL-terminated strings: cwd, argv, env. */
    size_t want = 1 + (size_t)argc + envc;
    if (argc == 0 || argc > 1u << 20 || envc > 1u << 20) {
        fail_job(j, 126, "malformed run request");
        return;
    }
    char **strs = calloc(want, sizeof *strs);
    char **argv = calloc(argc + 1, sizeof *argv);
    if (!strs || !argv) {
        free(strs);
        free(argv);
        fail_job(j, 126, "the agent is out of memory");
        return;
    }
    while (got < want && off < len) {
        const unsigned char *nul = memchr(p + off, 0, len - off);
        if (!nul) break;
        strs[got++] = (char *)(p + off);
        off = (size_t)(nul - p) + 1;
    }
    if (got < want) {
        free(strs);
        free(argv);
        fail_job(j, 126, "malformed run request");
        return;
    }
    const char *cwd = strs[0];
    for (uint32_t i = 0; i < argc; i++) argv[i] = strs[1 + i];
    char **envp = job_env(strs + 1 + argc, envc);

    int out[2] = {-1, -1}, err[2] = {-1, -1}, in[2] = {-1, -1}, status[2] = {-1, -1};
    int ok = envp && pipe2(out, O_CLOEXEC) == 0 && pipe2(err, O_CLOEXEC) == 0 &&
             pipe2(status, O_CLOEXEC) == 0;
    if (ok) {
        if (want_stdin) {
            ok = pipe2(in, O_CLOEXEC) == 0;
        } else {
            in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC);
            ok = in[0] >= 0;
        }
    }
    pid_t pid = ok ? fork() : -1;
    if (pid == 0) {
        /* The child: its own process group (so a kill reaches what it starts), the pipes as
         * 0/1/2, default signal handling, then the command. */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        setsid();
        dup2(in[0], 0);
        dup2(out[1], 1);
        dup2(err[1], 2);
        unsigned char why[5];
        if (chdir(cwd) != 0) {
            why[0] = 'c';
            put_u32(why + 1, (uint32_t)errno);
            write_all(status[1], why, 5);
            _exit(126);
        }
        environ = envp;
        execvp(argv[0], argv);
        why[0] = 'e';
        put_u32(why + 1, (uint32_t)errno);
        write_all(status[1], why, 5);
        _exit(127);
    }
    close_fd(&in[0]);
    close_fd(&out[1]);
    close_fd(&err[1]);
    close_fd(&status[1]);
    if (pid < 0) {
        char msg[256];
        snprintf(msg, sizeof msg, "could not start the command: %s", strerror(errno));
        close_fd(&out[0]);
        close_fd(&err[0]);
        close_fd(&in[1]);
        close_fd(&status[0]);
        free(strs);
        free(argv);
        free(envp);
        fail_job(j, 126, msg);
        return;
    }
    /* The status pipe closes on a successful exec, or carries why it failed. */
    unsigned char why[5];
    ssize_t n;
    do {
        n = read(status[0], why, sizeof why);
    } while (n < 0 && errno == EINTR);
    close_fd(&status[0]);
    if (n == 5) {
        int e = (int)get_u32(why + 1);
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        }
        char msg[512];
        uint32_t code;
        if (why[0] == 'c') {
            snprintf(msg, sizeof msg, "cannot change to the working directory \"%.200s\": %s", cwd, strerror(e));
            code = 126;
        } else if (e == ENOENT && !strchr(argv[0], '/')) {
            snprintf(msg, sizeof msg, "exec: \"%.200s\": executable file not found in $PATH", argv[0]);
            code = 127;
        } else {
            snprintf(msg, sizeof msg, "exec: \"%.200s\": %s", argv[0], strerror(e));
            code = e == ENOENT ? 127 : 126;
        }
        close_fd(&out[0]);
        close_fd(&err[0]);
        close_fd(&in[1]);
        free(strs);
        free(argv);
        free(envp);
        fail_job(j, code, msg);
        return;
    }
    free(strs);
    free(argv);
    free(envp);
    j->pid = pid;
    j->out_fd = out[0];
    j->err_fd = err[0];
    j->in_fd = in[1];
    if (j->in_fd >= 0) fcntl(j->in_fd, F_SETFL, O_NONBLOCK);
    unsigned char pidb[4];
    put_u32(pidb, (uint32_t)pid);
    send_frame('S', id, pidb, 4, NULL, 0);
}

static void job_stdin(uint32_t id, const unsigned char *p, size_t len, int close_after) {
    struct job *j = find_job(id);
    if (!j || j->in_fd < 0) return;
    if (len) {
        char *grown = realloc(j->pending, j->pending_len + len);
        if (!grown) {
            drop_stdin(j);
            return;
        }
        memcpy(grown + j->pending_len, p, len);
        j->pending = grown;
        j->pending_len += len;
    }
    if (close_after) j->close_in = 1;
    if (j->close_in && j->pending_off == j->pending_len) drop_stdin(j);
}

static void flush_stdin(struct job *j) {
    while (j->in_fd >= 0 && j->pending_off < j->pending_len) {
        ssize_t n = write(j->in_fd, j->pending + j->pending_off, j->pending_len - j->pending_off);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            drop_stdin(j); /* the command closed its stdin: the rest goes nowhere */
            return;
        }
        j->pending_off += (size_t)n;
    }
    if (j->pending_off == j->pending_len) {
        /* All written: let the buffer go rather than keep its high-water mark. */
        free(j->pending);
        j->pending = NULL;
        j->pending_len = j->pending_off = 0;
    } else if (j->pending_off > (1u << 20) && j->pending_off * 2 > j->pending_len) {
        memmove(j->pending, j->pending + j->pending_off, j->pending_len - j->pending_off);
        j->pending_len -= j->pending_off;
        j->pending_off = 0;
    }
    if (j->in_fd >= 0 && j->close_in && j->pending_len == 0) drop_stdin(j);
}

/* Keeps what fits of the first `keep` bytes of stream `s`; a failed allocation keeps less,
 * and a replay then sends what there is. */
static void retain(struct job *j, int s, const unsigned char *data, size_t n) {
    j->sent[s] += n;
    size_t room = j->keep > j->kept_len[s] ? j->keep - j->kept_len[s] : 0;
    if (n > room) n = room;
    if (n == 0) return;
    unsigned char *grown = realloc(j->kept[s], j->kept_len[s] + n);
    if (!grown) return;
    memcpy(grown + j->kept_len[s], data, n);
    j->kept[s] = grown;
    j->kept_len[s] += n;
}

static void replay(uint32_t id, const unsigned char *p, size_t len) {
    struct job *j = find_job(id);
    if (!j || len < 8) {
        send_frame('W', id, NULL, 0, NULL, 0);
        return;
    }
    uint32_t from[2] = {get_u32(p), get_u32(p + 4)};
    for (int s = 0; s < 2; s++) {
        for (size_t at = from[s]; at < j->kept_len[s]; at += CHUNK) {
            size_t n = j->kept_len[s] - at < CHUNK ? j->kept_len[s] - at : CHUNK;
            send_frame(s == 0 ? 'o' : 'e', id, j->kept[s] + at, n, NULL, 0);
        }
    }
    unsigned char totals[16];
    for (int s = 0; s < 2; s++) {
        put_u32(totals + 8 * s, (uint32_t)(j->sent[s] & 0xffffffffu));
        put_u32(totals + 8 * s + 4, (uint32_t)(j->sent[s] >> 32));
    }
    send_frame('W', id, totals, sizeof totals, NULL, 0);
    if (j->ended) send_code('X', j->id, j->code, NULL);
}

/* ---- input from the server --------------------------------------------------------- */

static int b64val(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Decodes base64 in place; returns the decoded length. */
static size_t unbase64(unsigned char *s, size_t len) {
    size_t out = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64val(s[i]);
        if (v < 0) continue; /* padding */
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            s[out++] = (unsigned char)((acc >> bits) & 0xff);
        }
    }
    return out;
}

static void handle_line(unsigned char *line, size_t len) {
    if (len < 3 || line[1] != ' ') return;
    char type = (char)line[0];
    size_t i = 2;
    uint32_t id = 0;
    while (i < len && line[i] >= '0' && line[i] <= '9') id = id * 10 + (uint32_t)(line[i++] - '0');
    unsigned char *payload = line + len;
    size_t plen = 0;
    if (i < len && line[i] == ' ') {
        payload = line + i + 1;
        plen = unbase64(payload, len - i - 1);
    }
    switch (type) {
    case 'R':
        start_job(id, payload, plen);
        break;
    case 'I':
        job_stdin(id, payload, plen, 0);
        break;
    case 'C':
        job_stdin(id, payload, 0, 1);
        break;
    case 'K': {
        /* Until the job has ended: its leader may be gone while a child it left in its
         * group still holds the output open. */
        struct job *j = find_job(id);
        if (j && j->pid > 0 && !j->ended && plen >= 4) {
            int sig = (int)get_u32(payload);
            kill(-j->pid, sig);
            if (!j->reaped) kill(j->pid, sig);
        }
        break;
    }
    case 'A': {
        struct job *j = find_job(id);
        if (j && j->ended) forget(j);
        break;
    }
    case 'G':
        replay(id, payload, plen);
        break;
    case 'Q':
        send_frame('Y', 0, payload, plen, NULL, 0);
        for (int k = 0; k < MAX_JOBS; k++) {
            struct job *j = &jobs[k];
            if (!j->used) continue;
            if (j->ended)
                send_code('X', j->id, j->code, NULL);
            else
                send_frame('P', j->id, NULL, 0, NULL, 0);
        }
        send_frame('Z', 0, NULL, 0, NULL, 0);
        break;
    default:
        break;
    }
}

/* ---- the loop ---------------------------------------------------------------------- */

/* Sends what a job printed and keeps it for a replay. */
static void forward(struct job *j, char type, const unsigned char *buf, size_t n) {
    send_frame(type, j->id, buf, n, NULL, 0);
    retain(j, type == 'O' ? 0 : 1, buf, n);
}

/* Reads what is in the pipe now and closes it once it is empty (or broken): for a job that
 * ends with its process. */
static void pump_nonblocking(struct job *j, int *fd, char type) {
    int fl = fcntl(*fd, F_GETFL);
    if (fl >= 0) fcntl(*fd, F_SETFL, fl | O_NONBLOCK);
    static unsigned char buf[CHUNK];
    for (;;) {
        ssize_t n = read(*fd, buf, sizeof buf);
        if (n > 0) {
            forward(j, type, buf, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        close_fd(fd);
        return;
    }
}

static void reap(void) {
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        for (int i = 0; i < MAX_JOBS; i++) {
            struct job *j = &jobs[i];
            if (j->used && j->pid == pid && !j->reaped) {
                j->reaped = 1;
                j->code = WIFEXITED(st) ? (uint32_t)WEXITSTATUS(st) : 128u + (uint32_t)WTERMSIG(st);
                if (j->ends_with_process) {
                    /* What it printed is read first; a daemon it left may hold the pipes
                     * for ever, and is not waited for. */
                    while (j->out_fd >= 0) pump_nonblocking(j, &j->out_fd, 'O');
                    while (j->err_fd >= 0) pump_nonblocking(j, &j->err_fd, 'E');
                }
                maybe_end(j);
            }
        }
    }
}

static void pump(struct job *j, int *fd, char type) {
    static unsigned char buf[CHUNK];
    ssize_t n = read(*fd, buf, sizeof buf);
    if (n > 0) {
        forward(j, type, buf, (size_t)n);
    } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        close_fd(fd);
        maybe_end(j);
    }
}

int main(void) {
    /* Not dumpable: a command (same user, no CAP_SYS_PTRACE) cannot open our stdio through
     * /proc/1/fd and so cannot talk over the server's channel. Its own exec makes it
     * dumpable again. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    for (int i = 0; i < MAX_JOBS; i++) jobs[i].out_fd = jobs[i].err_fd = jobs[i].in_fd = -1;
    /* Nothing we were handed beyond stdio reaches a command. */
    for (int fd = 3; fd < 1024; fd++) fcntl(fd, F_SETFD, FD_CLOEXEC);
    signal(SIGPIPE, SIG_IGN);
    /* SIGCHLD to reap; SIGTERM and SIGINT (`docker stop`, the engine shutting down) to pass
     * on to every job, leaving once they have ended: as PID 1 we would otherwise ignore
     * them, and the engine would wait its whole stop timeout before killing the container. */
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigaddset(&chld, SIGTERM);
    sigaddset(&chld, SIGINT);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);

    send_frame('H', 0, VERSION, strlen(VERSION), NULL, 0);

    size_t cap = 1 << 16, used = 0;
    unsigned char *in = malloc(cap);
    int in_open = in != NULL;
    static struct pollfd fds[2 + 3 * MAX_JOBS];
    static struct job *owner[2 + 3 * MAX_JOBS];
    for (;;) {
        if (stopping) {
            int running = 0;
            for (int i = 0; i < MAX_JOBS; i++)
                if (jobs[i].used && jobs[i].pid > 0 && !jobs[i].ended) running = 1;
            /* Our exit ends the container; the kernel kills whatever is left. */
            if (!running) _exit(128 + stopping);
        }
        int n = 0;
        if (in_open) fds[n++] = (struct pollfd){.fd = 0, .events = POLLIN};
        if (sfd >= 0) fds[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
        int fixed = n;
        for (int i = 0; i < MAX_JOBS; i++) {
            struct job *j = &jobs[i];
            if (!j->used) continue;
            if (j->out_fd >= 0) owner[n] = j, fds[n++] = (struct pollfd){.fd = j->out_fd, .events = POLLIN};
            if (j->err_fd >= 0) owner[n] = j, fds[n++] = (struct pollfd){.fd = j->err_fd, .events = POLLIN};
            if (j->in_fd >= 0 && j->pending_off < j->pending_len)
                owner[n] = j, fds[n++] = (struct pollfd){.fd = j->in_fd, .events = POLLOUT};
        }
        /* Without a signalfd, look for ended children at least every 100 ms. */
        int r = poll(fds, (nfds_t)n, sfd >= 0 ? -1 : 100);
        if (r < 0 && errno != EINTR) return 1;
        if (sfd < 0) reap();
        for (int k = 0; k < n && r > 0; k++) {
            if (!fds[k].revents) continue;
            if (fds[k].fd == sfd && k < fixed) {
                struct signalfd_siginfo si;
                while (read(sfd, &si, sizeof si) > 0) {
                    if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
                        send_code('T', 0, si.ssi_signo, NULL);
                        for (int i = 0; i < MAX_JOBS; i++)
                            if (jobs[i].used && jobs[i].pid > 0 && !jobs[i].ended) kill(-jobs[i].pid, (int)si.ssi_signo);
                        stopping = (int)si.ssi_signo;
                    }
                }
                reap();
            } else if (fds[k].fd == 0 && k < fixed) {
                if (used == cap) {
                    if (cap * 2 > MAX_LINE) {
                        used = 0; /* a line past any sane size: drop it */
                    } else {
                        unsigned char *grown = realloc(in, cap * 2);
                        if (!grown) return 1;
                        in = grown;
                        cap *= 2;
                    }
                }
                ssize_t got = read(0, in + used, cap - used);
                if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN)) {
                    in_open = 0; /* the server can no longer talk to us; jobs go on */
                    continue;
                }
                if (got < 0) continue;
                size_t start = 0, end = used + (size_t)got;
                for (size_t i = used; i < end; i++) {
                    if (in[i] == '\n') {
                        handle_line(in + start, i - start);
                        start = i + 1;
                    }
                }
                memmove(in, in + start, end - start);
                used = end - start;
            } else {
                struct job *j = owner[k];
                int fd = fds[k].fd;
                if (fd == j->out_fd)
                    pump(j, &j->out_fd, 'O');
                else if (fd == j->err_fd)
                    pump(j, &j->err_fd, 'E');
                else if (fd == j->in_fd)
                    flush_stdin(j);
            }
        }
    }
}
