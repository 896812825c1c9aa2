/*
 * ksmworker: one scenario process for the real backend of ksmfs (ksmfs/scenario/real.py).
 *
 * Why C: the contract says the backend must keep its own memory out of the KSM counts.
 * A Python worker would bring an interpreter heap that merge_any makes mergeable; this
 * worker uses no heap (no stdio, no malloc: raw read/write on static buffers), and after
 * every prctl(PR_SET_MEMORY_MERGE, 1) it madvise(MADV_UNMERGEABLE)s every VMA of its own
 * (text/data/bss, stack, libc, the address reservation) so that only the scenario's VMAs
 * stay VM_MERGEABLE.
 *
 * Layout: at start the worker reserves one PROT_NONE private region (argv[1] pages).
 * Scenario VMAs are mapped MAP_FIXED inside it at rising addresses, each after a one-page
 * PROT_NONE guard, so no two scenario VMAs are adjacent (the kernel never merges them)
 * and they appear in the mm in declaration order.  MADV_NOHUGEPAGE on each VMA: no THP.
 *
 * Protocol: one command per line on stdin, one reply line on stdout.
 *   map PAGES SHARED            -> "ok ADDR_HEX"     (SHARED 0/1: MAP_PRIVATE/MAP_SHARED)
 *   fill IDX FIRST COUNT        followed by COUNT little-endian uint64 tokens (binary)
 *                               -> "ok"
 *   madvise IDX ADVICE [FIRST COUNT]
 *                               -> "ok"              (ADVICE 12 MERGEABLE, 13 UNMERGEABLE);
 *                               pages FIRST..FIRST+COUNT-1 of the VMA, default all of it
 *   munmap IDX FIRST COUNT      -> "ok"              munmap of those pages of the VMA
 *   fork IN OUT                 -> "ok PID"          fork(2); the child opens the FIFOs
 *                               OUT (for writing) and IN (for reading) as its stdout and
 *                               stdin, says "ready" on OUT, and is a worker like this one
 *   merge_any ENABLE CLEANUP    -> "ok N"            prctl(PR_SET_MEMORY_MERGE, ENABLE);
 *                               with ENABLE and CLEANUP, N own VMAs were made unmergeable
 *   cleanup                     -> "ok N"            the own-VMA cleanup alone
 *   exit                        -> (no reply) _exit(0); EOF on stdin does the same
 * Errors reply "err ERRNO TEXT".
 *
 * A forked child shares every page with its parent copy-on-write (the kernel registers it
 * with ksmd itself: ksm_fork) and has the parent's VMA table, so the driver addresses its
 * VMAs by the same indices.  Its own memory is the parent's: VM_MERGEABLE flags are
 * inherited per VMA, so the own VMAs that merge_any's cleanup made unmergeable stay so.
 * SIGCHLD is ignored: the kernel reaps a child that exits, nobody has to wait for it.
 *
 * Page contents (contract "Contents are abstract"): token 0 is 4096 zero bytes (written,
 * so the page is present); any other token is its 8 big-endian bytes repeated 512 times,
 * so memcmp order is token order and distinct tokens give distinct pages.  The Python
 * twin is ksmfs.scenario.realkernel.token_page_bytes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67 /* include/uapi/linux/prctl.h, 6.4+ */
#endif
#ifndef MADV_MERGEABLE
#define MADV_MERGEABLE 12
#endif
#ifndef MADV_UNMERGEABLE
#define MADV_UNMERGEABLE 13
#endif
#ifndef MADV_NOHUGEPAGE
#define MADV_NOHUGEPAGE 15
#endif

#define PAGE 4096UL
#define MAX_VMAS 4096
#define CHUNK 8192 /* tokens per read during fill */

static struct {
	unsigned long start, pages;
} vmas[MAX_VMAS];
static int nvmas;

static char *resv_base, *resv_next, *resv_end;

static char inbuf[65536];
static size_t inpos, inlen;
static char line[4096];
static uint64_t tokens[CHUNK];
static char mapsbuf[1 << 20];

static void out(const char *s, size_t n)
{
	while (n) {
		ssize_t w = write(1, s, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			_exit(3);
		}
		s += w;
		n -= (size_t)w;
	}
}

static void outs(const char *s) { out(s, strlen(s)); }

static char *fmt_u(char *p, unsigned long v, int base)
{
	char tmp[32];
	int n = 0;
	do {
		tmp[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	while (n)
		*p++ = tmp[--n];
	return p;
}

static void reply_ok_u(unsigned long v, int base)
{
	char buf[64], *p = buf;
	memcpy(p, "ok ", 3);
	p = fmt_u(p + 3, v, base);
	*p++ = '\n';
	out(buf, (size_t)(p - buf));
}

static void reply_err(int err, const char *what)
{
	char buf[256], *p = buf;
	memcpy(p, "err ", 4);
	p = fmt_u(p + 4, (unsigned long)err, 10);
	*p++ = ' ';
	size_t n = strlen(what);
	if (n > 200)
		n = 200;
	memcpy(p, what, n);
	p += n;
	*p++ = '\n';
	out(buf, (size_t)(p - buf));
}

static int fill_in(void)
{
	for (;;) {
		ssize_t r = read(0, inbuf, sizeof(inbuf));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return 0;
		inpos = 0;
		inlen = (size_t)r;
		return 1;
	}
}

/* One line without its '\n' into line[]; 0 at EOF. */
static int read_line(void)
{
	size_t n = 0;
	for (;;) {
		if (inpos == inlen && !fill_in())
			return 0;
		char c = inbuf[inpos++];
		if (c == '\n')
			break;
		if (n + 1 < sizeof(line))
			line[n++] = c;
	}
	line[n] = 0;
	return 1;
}

static int read_exact(void *dst, size_t n)
{
	char *d = dst;
	while (n) {
		if (inpos == inlen && !fill_in())
			return 0;
		size_t k = inlen - inpos;
		if (k > n)
			k = n;
		memcpy(d, inbuf + inpos, k);
		inpos += k;
		d += k;
		n -= k;
	}
	return 1;
}

/* Parse up to `max` unsigned decimal fields after the command word. */
static int parse_args(const char *s, unsigned long *a, int max)
{
	int n = 0;
	while (*s && *s != ' ')
		s++;
	while (n < max) {
		while (*s == ' ')
			s++;
		if (*s < '0' || *s > '9')
			break;
		unsigned long v = 0;
		while (*s >= '0' && *s <= '9')
			v = v * 10 + (unsigned long)(*s++ - '0');
		a[n++] = v;
	}
	return n;
}

static void write_page(char *page, uint64_t token)
{
	if (token == 0) {
		memset(page, 0, PAGE);
		return;
	}
	uint64_t be = __builtin_bswap64(token);
	uint64_t *p = (uint64_t *)page;
	for (unsigned i = 0; i < PAGE / 8; i++)
		p[i] = be;
}

static int is_scenario_range(unsigned long start, unsigned long end)
{
	for (int i = 0; i < nvmas; i++) {
		unsigned long s = vmas[i].start, e = s + vmas[i].pages * PAGE;
		if (start < e && s < end)
			return 1;
	}
	return 0;
}

static unsigned long parse_hex(const char **sp)
{
	const char *s = *sp;
	unsigned long v = 0;
	for (;;) {
		char c = *s;
		if (c >= '0' && c <= '9')
			v = v * 16 + (unsigned long)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v = v * 16 + (unsigned long)(c - 'a' + 10);
		else
			break;
		s++;
	}
	*sp = s;
	return v;
}

/*
 * madvise(MADV_UNMERGEABLE) on every VMA that is not a scenario VMA.  With merge_any,
 * prctl's ksm_enable_merge_any marks every compatible VMA VM_MERGEABLE (stack, data, bss,
 * heap, the PROT_NONE reservation); ksm_madvise(MADV_UNMERGEABLE) clears the flag again,
 * so ksmd skips those VMAs and never makes rmap_items for them.  /proc/self/maps is read
 * whole first: clearing flags may merge neighbouring VMAs and change the file.
 */
static long cleanup_own_vmas(void)
{
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	size_t len = 0;
	for (;;) {
		ssize_t r = read(fd, mapsbuf + len, sizeof(mapsbuf) - 1 - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		len += (size_t)r;
		if (len == sizeof(mapsbuf) - 1)
			break;
	}
	close(fd);
	mapsbuf[len] = 0;
	long n = 0;
	const char *s = mapsbuf;
	while (*s) {
		unsigned long start = parse_hex(&s);
		if (*s == '-')
			s++;
		unsigned long end = parse_hex(&s);
		while (*s && *s != '\n')
			s++;
		if (*s == '\n')
			s++;
		/* the gate VMA ([vsyscall]) is not in the mm: madvise fails there, harmlessly */
		if (end > start && !is_scenario_range(start, end) &&
		    madvise((void *)start, end - start, MADV_UNMERGEABLE) == 0)
			n++;
	}
	return n;
}

static void cmd_map(unsigned long pages, unsigned long shared)
{
	if (nvmas >= MAX_VMAS) {
		reply_err(ENOMEM, "too many VMAs");
		return;
	}
	if (pages == 0 || pages > (unsigned long)(resv_end - resv_next) / PAGE - 1) {
		reply_err(ENOMEM, "address reservation exhausted");
		return;
	}
	char *addr = resv_next;
	int flags = (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS | MAP_FIXED;
	void *p = mmap(addr, pages * PAGE, PROT_READ | PROT_WRITE, flags, -1, 0);
	if (p == MAP_FAILED) {
		reply_err(errno, "mmap");
		return;
	}
	if (madvise(addr, pages * PAGE, MADV_NOHUGEPAGE) != 0) {
		reply_err(errno, "madvise(MADV_NOHUGEPAGE)");
		return;
	}
	vmas[nvmas].start = (unsigned long)addr;
	vmas[nvmas].pages = pages;
	nvmas++;
	/* leave one PROT_NONE page of the reservation as a guard before the next VMA */
	resv_next = addr + (pages + 1) * PAGE;
	reply_ok_u((unsigned long)addr, 16);
}

static void cmd_fill(unsigned long idx, unsigned long first, unsigned long count)
{
	int bad = idx >= (unsigned long)nvmas || first > vmas[idx].pages ||
		  count > vmas[idx].pages - first;
	unsigned long done = 0;
	while (done < count) {
		unsigned long k = count - done;
		if (k > CHUNK)
			k = CHUNK;
		if (!read_exact(tokens, k * 8))
			_exit(0);
		if (!bad) {
			char *base = (char *)vmas[idx].start + (first + done) * PAGE;
			for (unsigned long i = 0; i < k; i++)
				write_page(base + i * PAGE, tokens[i]);
		}
		done += k;
	}
	if (bad)
		reply_err(EINVAL, "fill range outside the VMA");
	else
		outs("ok\n");
}

static int bad_range(unsigned long idx, unsigned long first, unsigned long count)
{
	if (idx >= (unsigned long)nvmas) {
		reply_err(EINVAL, "no such VMA");
		return 1;
	}
	if (first > vmas[idx].pages || count > vmas[idx].pages - first || count == 0) {
		reply_err(EINVAL, "page range outside the VMA");
		return 1;
	}
	return 0;
}

static void cmd_madvise(unsigned long idx, unsigned long advice, unsigned long first,
			unsigned long count)
{
	if (bad_range(idx, first, count))
		return;
	if (madvise((char *)vmas[idx].start + first * PAGE, count * PAGE, (int)advice) != 0) {
		reply_err(errno, "madvise");
		return;
	}
	outs("ok\n");
}

static void cmd_munmap(unsigned long idx, unsigned long first, unsigned long count)
{
	if (bad_range(idx, first, count))
		return;
	if (munmap((char *)vmas[idx].start + first * PAGE, count * PAGE) != 0) {
		reply_err(errno, "munmap");
		return;
	}
	outs("ok\n");
}

/* "fork IN OUT": the two FIFO paths follow the command word, separated by one space. */
static void cmd_fork(char *args)
{
	char *in = args, *sp = strchr(args, ' ');
	if (!sp || !sp[1]) {
		reply_err(EINVAL, "fork needs two FIFO paths");
		return;
	}
	*sp = 0;
	char *outp = sp + 1;
	pid_t pid = fork();
	if (pid < 0) {
		reply_err(errno, "fork");
		return;
	}
	if (pid > 0) {
		reply_ok_u((unsigned long)pid, 10);
		return;
	}
	/* child: OUT first (the driver has its read end open already), then IN (the driver
	 * opens its write end once we are here), so neither side waits for the other */
	int ofd = open(outp, O_WRONLY | O_CLOEXEC);
	if (ofd < 0)
		_exit(4);
	int ifd = open(in, O_RDONLY | O_CLOEXEC);
	if (ifd < 0)
		_exit(4);
	if (dup2(ofd, 1) < 0 || dup2(ifd, 0) < 0)
		_exit(4);
	close(ofd);
	close(ifd);
	inpos = inlen = 0; /* nothing the parent had buffered is ours */
	outs("ready\n");
}

static void cmd_merge_any(unsigned long enable, unsigned long cleanup)
{
	if (prctl(PR_SET_MEMORY_MERGE, enable, 0, 0, 0) != 0) {
		reply_err(errno, "prctl(PR_SET_MEMORY_MERGE)");
		return;
	}
	long n = 0;
	if (enable && cleanup) {
		n = cleanup_own_vmas();
		if (n < 0) {
			reply_err((int)-n, "open /proc/self/maps");
			return;
		}
	}
	reply_ok_u((unsigned long)n, 10);
}

int main(int argc, char **argv)
{
	unsigned long resv_pages = 0;
	for (const char *s = argc > 1 ? argv[1] : "0"; *s >= '0' && *s <= '9'; s++)
		resv_pages = resv_pages * 10 + (unsigned long)(*s - '0');
	if (resv_pages < 2)
		resv_pages = 2;
	void *r = mmap(NULL, resv_pages * PAGE, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (r == MAP_FAILED) {
		reply_err(errno, "mmap reservation");
		return 1;
	}
	resv_base = r;
	resv_next = resv_base + PAGE; /* guard page in front of the first VMA */
	resv_end = resv_base + resv_pages * PAGE;
	signal(SIGCHLD, SIG_IGN); /* forked workers are reaped by the kernel */
	outs("ready\n");

	unsigned long a[4];
	while (read_line()) {
		int n = parse_args(line, a, 4);
		if (!strncmp(line, "map ", 4) && n == 2)
			cmd_map(a[0], a[1]);
		else if (!strncmp(line, "fill ", 5) && n == 3)
			cmd_fill(a[0], a[1], a[2]);
		else if (!strncmp(line, "madvise ", 8) && n == 2)
			cmd_madvise(a[0], a[1], 0, a[0] < (unsigned long)nvmas ? vmas[a[0]].pages : 0);
		else if (!strncmp(line, "madvise ", 8) && n == 4)
			cmd_madvise(a[0], a[1], a[2], a[3]);
		else if (!strncmp(line, "munmap ", 7) && n == 3)
			cmd_munmap(a[0], a[1], a[2]);
		else if (!strncmp(line, "fork ", 5))
			cmd_fork(line + 5);
		else if (!strncmp(line, "merge_any ", 10) && n == 2)
			cmd_merge_any(a[0], a[1]);
		else if (!strcmp(line, "cleanup")) {
			long c = cleanup_own_vmas();
			if (c < 0)
				reply_err((int)-c, "open /proc/self/maps");
			else
				reply_ok_u((unsigned long)c, 10);
		} else if (!strcmp(line, "exit"))
			_exit(0);
		else
			reply_err(EINVAL, "bad command");
	}
	_exit(0);
}
