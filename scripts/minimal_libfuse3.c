/* The smallest C libfuse3 server with one sysfs-like file ("value", st_size 4096,
 * direct_io, content "0\n"): the FUSE floor that scripts/bench_fs.py measures.
 * Build: gcc -O2 minimal_libfuse3.c $(pkg-config fuse3 --cflags --libs)
 * Run:   ./a.out -f MOUNTPOINT   (foreground; unmount with fusermount3 -u) */
#define FUSE_USE_VERSION 31
#include <fuse.h>
#include <string.h>
#include <errno.h>
#include <sys/stat.h>

static const char content[] = "0\n";

static int m_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	(void)fi;
	memset(st, 0, sizeof(*st));
	if (strcmp(path, "/") == 0) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
	} else if (strcmp(path, "/value") == 0) {
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = 4096;
	} else
		return -ENOENT;
	return 0;
}

static int m_open(const char *path, struct fuse_file_info *fi)
{
	if (strcmp(path, "/value") != 0)
		return -ENOENT;
	fi->direct_io = 1;
	return 0;
}

static int m_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)path; (void)fi;
	size_t len = sizeof(content) - 1;
	if ((size_t)off >= len)
		return 0;
	if (off + size > len)
		size = len - off;
	memcpy(buf, content + off, size);
	return (int)size;
}

static void *m_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	(void)conn;
	cfg->entry_timeout = 1.0;
	cfg->attr_timeout = 1.0;
	return NULL;
}

static const struct fuse_operations ops = {
	.getattr = m_getattr,
	.open = m_open,
	.read = m_read,
	.init = m_init,
};

int main(int argc, char *argv[])
{
	return fuse_main(argc, argv, &ops, NULL);
}
