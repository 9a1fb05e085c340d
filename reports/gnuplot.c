/* gnuplot.c: staging files, gnuplot script boilerplate and running gnuplot. */
#include "report_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

kvs_status_e rpt_open(rpt_ctx_t *ctx, const char *name, kvs_outfile_t **out)
{
    char path[4352];

    KVS_FORWARD(kvs_path_join(path, sizeof path, ctx->stage, name));
    return kvs_outfile_open(path, out);
}

kvs_status_e rpt_close(kvs_outfile_t *f, kvs_status_e rc)
{
    if (rc != KVS_OK) {
        kvs_outfile_abort(f);
        return rc;
    }
    return kvs_outfile_commit(f);
}

void rpt_gp_string(FILE *fp, const char *s)
{
    fputc('"', fp);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', fp);
        if (*s == '\n')
            fputs("\\n", fp);
        else
            fputc(*s, fp);
    }
    fputc('"', fp);
}

void rpt_data_string(FILE *fp, const char *s)
{
    /* gnuplot data files have no escape for '"', so it becomes '\''. */
    fputc('"', fp);
    for (; *s; s++)
        fputc(*s == '"' ? '\'' : (*s == '\n' || *s == '\t') ? ' ' : *s, fp);
    fputc('"', fp);
}

void rpt_gp_begin(FILE *fp, const rpt_ctx_t *ctx, const char *name, int width, int height)
{
    fprintf(fp, "# %s.gp: written by kvsim report; edit and rerun from this folder with\n", name);
    fprintf(fp, "#   gnuplot %s.gp\n# It reads the data files named below and writes %s.png and %s.svg.\n\n", name,
            name, name);
    fprintf(fp, "do for [fmt in \"png svg\"] {\n");
    fprintf(fp, "    if (fmt eq \"png\") {\n");
    fprintf(fp, "        set terminal pngcairo size %d,%d font \"DejaVu Sans,10\" noenhanced\n", width, height);
    fprintf(fp, "    } else {\n");
    fprintf(fp, "        set terminal svg size %d,%d font \"DejaVu Sans,10\" noenhanced background \"white\"\n",
            width, height);
    fprintf(fp, "    }\n");
    fprintf(fp, "    set output \"%s.\" . fmt\n", name);
    fprintf(fp, "    set format x \"%%g\"\n    set format y \"%%g\"\n    set format cb \"%%g\"\n");
    (void)ctx;
}

void rpt_gp_log_tics(FILE *fp, const char *axis, double lo, double hi)
{
    static const double steps[] = {1, 2, 5};
    int first = 1;

    /* Over two decades or more gnuplot's own decade tics are enough. */
    if (!(lo > 0) || !(hi > lo) || hi / lo >= 100)
        return;
    fprintf(fp, "    set %stics (", axis);
    for (double decade = pow(10, floor(log10(lo))); decade <= hi; decade *= 10) {
        for (int i = 0; i < 3; i++) {
            double v = steps[i] * decade;
            if (v < lo || v > hi)
                continue;
            fprintf(fp, "%s%.9g", first ? "" : ", ", v);
            first = 0;
        }
    }
    fprintf(fp, ")\n");
}

void rpt_gp_end(FILE *fp)
{
    fprintf(fp, "    set output\n}\n");
}

/* Reads what the child wrote to fd until end of file, keeping the first
** cap - 1 bytes. */
static void read_all(int fd, char *buf, size_t cap)
{
    size_t len = 0;

    for (;;) {
        char chunk[1024];
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        size_t keep = (size_t)n < cap - 1 - len ? (size_t)n : cap - 1 - len;
        memcpy(buf + len, chunk, keep);
        len += keep;
    }
    buf[len] = '\0';
}

/* Shortens gnuplot's stderr to one line for the error message: gnuplot
** prints the offending script line, a caret line and then the message. */
static void one_line(char *msg)
{
    for (char *p = msg; *p; p++) {
        if (*p == '\n' || *p == '\t')
            *p = ' ';
    }
    size_t n = strlen(msg);
    while (n && msg[n - 1] == ' ')
        msg[--n] = '\0';
}

kvs_status_e rpt_run_gnuplot(const rpt_ctx_t *ctx, const char *name)
{
    const char *gnuplot = getenv("KVSIM_GNUPLOT");
    char script[160];
    char errors[2048];
    int pipe_fd[2];
    pid_t pid;
    int status;

    if (!gnuplot || !*gnuplot)
        gnuplot = "gnuplot";
    snprintf(script, sizeof script, "%s.gp", name);
    if (pipe(pipe_fd) != 0)
        return kvs_fail(KVS_ERR_REPORT, "cannot run gnuplot: pipe failed: %s", strerror(errno));

    pid = fork();
    if (pid < 0) {
        close(pipe_fd[0]);
        close(pipe_fd[1]);
        return kvs_fail(KVS_ERR_REPORT, "cannot run gnuplot: fork failed: %s", strerror(errno));
    }
    if (pid == 0) {
        /* Child: scripts name their data files relative to the folder. */
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, STDIN_FILENO);
            dup2(devnull, STDOUT_FILENO);
        }
        dup2(pipe_fd[1], STDERR_FILENO);
        close(pipe_fd[0]);
        close(pipe_fd[1]);
        if (chdir(ctx->stage) != 0) {
            dprintf(STDERR_FILENO, "cannot enter %s: %s", ctx->stage, strerror(errno));
            _exit(126);
        }
        execlp(gnuplot, gnuplot, script, (char *)NULL);
        dprintf(STDERR_FILENO,
                "cannot run '%s': %s; install gnuplot (Debian package gnuplot-nox) or set KVSIM_GNUPLOT to its path",
                gnuplot, strerror(errno));
        _exit(127);
    }

    close(pipe_fd[1]);
    read_all(pipe_fd[0], errors, sizeof errors);
    close(pipe_fd[0]);
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            return kvs_fail(KVS_ERR_REPORT, "gnuplot on %s: waitpid failed: %s", script, strerror(errno));
    }
    one_line(errors);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
            return kvs_fail(KVS_ERR_REPORT, "%s", errors);
        return kvs_fail(KVS_ERR_REPORT, "gnuplot failed on %s (%s %d): %s", script,
                        WIFEXITED(status) ? "exit status" : "signal",
                        WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
                        errors[0] ? errors : "no message");
    }
    if (errors[0])
        KVS_LOG(KVS_LOG_DEBUG, "gnuplot warnings on %s: %s", script, errors);
    return KVS_OK;
}

kvs_status_e rpt_add_figure(rpt_ctx_t *ctx, uint32_t trace, const char *name, const char *title,
                            const char *caption)
{
    rpt_figure_t *fig;

    if (ctx->n_figures == ctx->cap_figures) {
        uint32_t cap = ctx->cap_figures ? ctx->cap_figures * 2 : 16;
        rpt_figure_t *grown = realloc(ctx->figures, cap * sizeof *grown);
        if (!grown)
            return kvs_fail(KVS_ERR_NOMEM, "out of memory listing figures");
        ctx->figures = grown;
        ctx->cap_figures = cap;
    }
    fig = &ctx->figures[ctx->n_figures];
    memset(fig, 0, sizeof *fig);
    snprintf(fig->name, sizeof fig->name, "%s", name);
    fig->title = strdup(title);
    fig->caption = strdup(caption);
    fig->trace = trace;
    if (!fig->title || !fig->caption) {
        free(fig->title);
        free(fig->caption);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory listing figures");
    }
    ctx->n_figures++;
    return KVS_OK;
}
