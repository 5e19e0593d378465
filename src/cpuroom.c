/*-------------------------------------------------------------------------
 *
 * cpuroom.c
 *		How much of the CPU this server may use is idle: the CPUs it may run
 *		on, and its control group's CPU quota; and the window over which
 *		yield.c judges it.
 *
 * yield.c holds delivery back while the server's sessions keep the CPU
 * full, and judges "full" by the idle share of the CPU.  /proc/stat's first
 * line is the whole host's.  A server in a container sees more: on a host
 * of 64 cores with a quota of 2, the host is mostly idle while the
 * container's 2 cores are spent, and its sessions wait for the next period
 * of the quota; pinned to 2 CPUs of 64 (a cpuset), the same.  So the idle
 * share here is the least of:
 *
 *  - the idle share of the CPUs this process may run on
 *    (sched_getaffinity(), which a cpuset restricts), from their lines of
 *    /proc/stat;
 *  - for every control group from this process's up to the root of its
 *    hierarchy that has a CPU quota, the share of that quota left unused:
 *    1 - (CPU time its processes used) / (quota x wall-clock time).  cgroup
 *    v2: cpu.max ("max 100000" or "QUOTA PERIOD") and cpu.stat's
 *    usage_usec; v1: cpu.cfs_quota_us (-1 for none) over cpu.cfs_period_us,
 *    and cpuacct.usage (nanoseconds) of the same group in the cpuacct
 *    hierarchy.
 *
 * Where a file cannot be read the figure it would give is left out, and
 * with nothing readable the CPU counts as idle (1): nothing is held back.
 *
 * The groups are found once, from /proc/self/cgroup (this process's group
 * in each hierarchy) and /proc/self/mountinfo (where each hierarchy is
 * mounted, and which of its groups the mount shows as its root: a
 * container usually sees its own group as "/").  The quotas are read again
 * at every look, so a quota changed at run time counts from the next one.
 *
 * The window: yield.c samples how many sessions are running, at most once
 * a millisecond, at each pass of the dispatcher's loop, and judges their
 * average and the idle share once a window is over: 100 ms and at least 20
 * samples, or a second, whatever it has.  While the dispatcher's passes are
 * long (a burst) a window lasts as long as 20 passes take, up to a second.
 * With one or two samples a window, a session seen starting up or running
 * one short statement (a client polling for its waybills) counted as a
 * session running all the window long, and held a burst back with nothing
 * busy (TAP 050 caught it now and then).  The second is there for passes
 * that are further apart still (a dispatcher waiting on slow carriers, or
 * asleep): such a window is judged on its few samples rather than never.
 *
 * Plain C, no PostgreSQL: the unit tests (test/unit/test_cpuroom.c) give
 * it a directory standing for "/" with files of their own, and CPUs of
 * their own.  Files are read with open() and read() into a buffer, each
 * closed at once.
 *
 *-------------------------------------------------------------------------
 */
#define SHIPSYNC_PLAIN_C
#ifndef _GNU_SOURCE
#define _GNU_SOURCE				/* sched_getaffinity, CPU_ISSET */
#endif
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pg_shipsync.h"

#define ROOM_PATH		1024
#define ROOM_LEVELS		8		/* groups looked at, from this process's up */
#define ROOM_CPUS		1024	/* CPU numbers known */
#define ROOM_FILE		65536	/* /proc/stat of a host of some 500 CPUs */
#define ROOM_MOUNTS		(1024 * 1024)	/* /proc/self/mountinfo of a busy host */

typedef struct RoomGroup
{
	char		dir[ROOM_PATH]; /* the group's directory (cpu controller) */
	char		acct[ROOM_PATH];	/* v1: the same group under cpuacct */
	double		usage_us;		/* CPU time at the last look; < 0: none */
} RoomGroup;

struct CpuRoom
{
	char		root[ROOM_PATH];	/* "" for the system, else a test's "/" */
	int			version;		/* 1 or 2; 0: no control group found */
	int			ngroups;
	RoomGroup	groups[ROOM_LEVELS];
	unsigned char allowed[ROOM_CPUS];
	int			nallowed;
	unsigned long long idle_last;	/* the allowed CPUs' /proc/stat times */
	unsigned long long total_last;
	double		wall_us;		/* the last look; < 0: none yet */
	char		limit[160];		/* what the last look found, for the log */
	char		stat[ROOM_FILE];	/* /proc/stat as last read */
};

/* The file root + path into buf (NUL-terminated); false if unreadable */
static bool
room_read(const CpuRoom *r, const char *path, char *buf, size_t len)
{
	char		full[ROOM_PATH * 2];
	size_t		n = 0;
	int			fd;

	snprintf(full, sizeof(full), "%s%s", r->root, path);
	fd = open(full, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	while (n < len - 1)
	{
		ssize_t		got = read(fd, buf + n, len - 1 - n);

		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		n += (size_t) got;
	}
	close(fd);
	buf[n] = '\0';
	return n > 0;
}

/* Whether the comma-separated list has the word w */
static bool
room_list_has(const char *list, size_t len, const char *w)
{
	size_t		wl = strlen(w);
	const char *p = list;
	const char *end = list + len;

	while (p < end)
	{
		const char *comma = memchr(p, ',', (size_t) (end - p));
		size_t		l = (size_t) ((comma ? comma : end) - p);

		if (l == wl && strncmp(p, w, wl) == 0)
			return true;
		p += l + 1;
	}
	return false;
}

/*
 * This process's group in the hierarchy that has controller ctl (cgroup
 * v1; ctl NULL: the unified hierarchy, line "0::"), from
 * /proc/self/cgroup, into path.
 */
static bool
room_own_group(const char *cgroup, const char *ctl, char *path, size_t len)
{
	const char *line = cgroup;

	while (*line)
	{
		const char *nl = strchr(line, '\n');
		const char *c1 = strchr(line, ':');
		const char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		size_t		l = nl ? (size_t) (nl - line) : strlen(line);

		if (c2 && c2 < line + l &&
			(ctl == NULL ? (c2 == c1 + 1 && strncmp(line, "0:", 2) == 0)
			 : room_list_has(c1 + 1, (size_t) (c2 - c1 - 1), ctl)))
		{
			size_t		pl = (size_t) (line + l - (c2 + 1));

			if (pl == 0 || pl >= len)
				return false;
			memcpy(path, c2 + 1, pl);
			path[pl] = '\0';
			return true;
		}
		line += l + (nl ? 1 : 0);
	}
	return false;
}

/*
 * Where the hierarchy with controller ctl (v1; NULL: the cgroup2 one) is
 * mounted, and the group its mount shows as its root, from
 * /proc/self/mountinfo: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS
 * [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS".
 */
static bool
room_mount(const char *mountinfo, const char *ctl, char *mnt, char *mroot, size_t len)
{
	const char *line = mountinfo;

	while (*line)
	{
		const char *nl = strchr(line, '\n');
		size_t		l = nl ? (size_t) (nl - line) : strlen(line);
		char		buf[ROOM_PATH * 3];
		char		root[ROOM_PATH],
					point[ROOM_PATH],
					fstype[64],
					super[512];
		const char *dash;

		if (l < sizeof(buf))
		{
			memcpy(buf, line, l);
			buf[l] = '\0';
			dash = strstr(buf, " - ");
			if (dash && sscanf(buf, "%*s %*s %*s %1023s %1023s", root, point) == 2 &&
				sscanf(dash + 3, "%63s %*s %511s", fstype, super) == 2 &&
				(ctl == NULL ? strcmp(fstype, "cgroup2") == 0
				 : strcmp(fstype, "cgroup") == 0 && room_list_has(super, strlen(super), ctl)) &&
				strlen(point) < len && strlen(root) < len)
			{
				strcpy(mnt, point);
				strcpy(mroot, root);
				return true;
			}
		}
		line += l + (nl ? 1 : 0);
	}
	return false;
}

/*
 * The directory of group path in the hierarchy mounted at mnt whose mount
 * root is mroot: the group with the mount root's part taken off (a
 * container's own group is its "/").
 */
static void
room_group_dir(const char *mnt, const char *mroot, const char *path, char *out, size_t len)
{
	size_t		rl = strlen(mroot);

	if (strcmp(mroot, "/") != 0 && strncmp(path, mroot, rl) == 0 &&
		(path[rl] == '/' || path[rl] == '\0'))
		path += rl;
	else if (strcmp(mroot, "/") != 0)
		path = "";				/* the mount shows another group: take its root */
	snprintf(out, len, "%s%s", mnt, strcmp(path, "/") == 0 ? "" : path);
}

/*
 * The groups from this process's up to the hierarchy's root: dir in the
 * cpu hierarchy (mounted at mnt), acct in the cpuacct one (v1; NULL: the
 * same directory).
 */
static void
room_add_groups(CpuRoom *r, const char *dir, const char *mnt, const char *acct,
				const char *acct_mnt)
{
	char		d[ROOM_PATH],
				a[ROOM_PATH];

	snprintf(d, sizeof(d), "%s", dir);
	snprintf(a, sizeof(a), "%s", acct ? acct : dir);
	while (r->ngroups < ROOM_LEVELS)
	{
		RoomGroup  *g = &r->groups[r->ngroups++];
		char	   *slash;

		snprintf(g->dir, sizeof(g->dir), "%s", d);
		snprintf(g->acct, sizeof(g->acct), "%s", a);
		g->usage_us = -1;
		if (strlen(d) <= strlen(mnt) || (slash = strrchr(d, '/')) == NULL)
			break;
		*slash = '\0';
		if (acct && strlen(a) > strlen(acct_mnt) && (slash = strrchr(a, '/')) != NULL)
			*slash = '\0';
		else if (!acct)
			snprintf(a, sizeof(a), "%s", d);
	}
}

/* Find this process's control groups (v1 cpu if mounted, else v2) */
static void
room_find_groups(CpuRoom *r)
{
	char	   *cgroup = malloc(ROOM_FILE);
	char	   *mountinfo = malloc(ROOM_MOUNTS);
	char		path[ROOM_PATH],
				apath[ROOM_PATH],
				mnt[ROOM_PATH],
				mroot[ROOM_PATH],
				amnt[ROOM_PATH],
				aroot[ROOM_PATH],
				dir[ROOM_PATH],
				adir[ROOM_PATH];

	if (cgroup && mountinfo &&
		room_read(r, "/proc/self/cgroup", cgroup, ROOM_FILE) &&
		room_read(r, "/proc/self/mountinfo", mountinfo, ROOM_MOUNTS))
	{
		if (room_own_group(cgroup, "cpu", path, sizeof(path)) &&
			room_mount(mountinfo, "cpu", mnt, mroot, sizeof(mnt)) &&
			room_own_group(cgroup, "cpuacct", apath, sizeof(apath)) &&
			room_mount(mountinfo, "cpuacct", amnt, aroot, sizeof(amnt)))
		{
			r->version = 1;
			room_group_dir(mnt, mroot, path, dir, sizeof(dir));
			room_group_dir(amnt, aroot, apath, adir, sizeof(adir));
			room_add_groups(r, dir, mnt, adir, amnt);
		}
		else if (room_own_group(cgroup, NULL, path, sizeof(path)) &&
				 room_mount(mountinfo, NULL, mnt, mroot, sizeof(mnt)))
		{
			r->version = 2;
			room_group_dir(mnt, mroot, path, dir, sizeof(dir));
			room_add_groups(r, dir, mnt, NULL, NULL);
		}
	}
	free(cgroup);
	free(mountinfo);
}

/*
 * What to look at: this process's CPUs and control groups under root (""
 * for the system; a test's directory).  cpus, ncpus: the CPUs it may run on;
 * NULL: this process's affinity.  NULL if out of memory.
 */
CpuRoom *
shipsync_cpuroom_open(const char *root, const int *cpus, int ncpus)
{
	CpuRoom    *r = calloc(1, sizeof(CpuRoom));

	if (r == NULL)
		return NULL;
	snprintf(r->root, sizeof(r->root), "%s", root ? root : "");
	r->wall_us = -1;
	if (cpus != NULL)
	{
		for (int i = 0; i < ncpus; i++)
			if (cpus[i] >= 0 && cpus[i] < ROOM_CPUS && !r->allowed[cpus[i]])
				r->allowed[cpus[i]] = 1, r->nallowed++;
	}
	else
	{
		cpu_set_t	set;

		CPU_ZERO(&set);
		if (sched_getaffinity(0, sizeof(set), &set) == 0)
			for (int i = 0; i < ROOM_CPUS && i < CPU_SETSIZE; i++)
				if (CPU_ISSET(i, &set))
					r->allowed[i] = 1, r->nallowed++;
	}
	room_find_groups(r);
	return r;
}

void
shipsync_cpuroom_close(CpuRoom *r)
{
	free(r);
}

/*
 * The idle share of the allowed CPUs since the last look, from their
 * "cpuN" lines of /proc/stat (idle and iowait against the sum of the first
 * eight fields: the guest times are in user time already); -1 if unknown.
 */
static double
room_cpus_idle(CpuRoom *r)
{
	unsigned long long idle = 0,
				total = 0;
	double		share = -1;
	int			seen = 0;

	if (!room_read(r, "/proc/stat", r->stat, sizeof(r->stat)))
		return -1;
	for (const char *line = r->stat; line != NULL; line = strchr(line, '\n'))
	{
		unsigned long long v[8];
		int			cpu;

		if (*line == '\n')
			line++;
		if (sscanf(line, "cpu%d %llu %llu %llu %llu %llu %llu %llu %llu", &cpu,
				   &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) != 9 ||
			cpu < 0 || cpu >= ROOM_CPUS || (r->nallowed > 0 && !r->allowed[cpu]))
			continue;
		for (int i = 0; i < 8; i++)
			total += v[i];
		idle += v[3] + v[4];
		seen++;
	}
	if (seen == 0)
		return -1;
	if (r->total_last != 0 && total > r->total_last && idle >= r->idle_last)
		share = (double) (idle - r->idle_last) / (double) (total - r->total_last);
	r->idle_last = idle;
	r->total_last = total;
	return share;
}

/* The quota of group g in cores; 0 when it has none (or it is unreadable) */
static double
room_quota(CpuRoom *r, const RoomGroup *g)
{
	char		path[ROOM_PATH + 32];
	char		buf[128];
	double		quota = 0,
				period = 0;

	if (r->version == 2)
	{
		snprintf(path, sizeof(path), "%s/cpu.max", g->dir);
		if (!room_read(r, path, buf, sizeof(buf)) ||
			sscanf(buf, "%lf %lf", &quota, &period) != 2)
			return 0;			/* "max 100000" reads no number */
	}
	else
	{
		snprintf(path, sizeof(path), "%s/cpu.cfs_quota_us", g->dir);
		if (!room_read(r, path, buf, sizeof(buf)) || sscanf(buf, "%lf", &quota) != 1)
			return 0;
		snprintf(path, sizeof(path), "%s/cpu.cfs_period_us", g->dir);
		if (!room_read(r, path, buf, sizeof(buf)) || sscanf(buf, "%lf", &period) != 1)
			return 0;
	}
	return quota > 0 && period > 0 ? quota / period : 0;
}

/* The CPU time group g's processes have used, in µs; -1 if unreadable */
static double
room_usage_us(CpuRoom *r, const RoomGroup *g)
{
	char		path[ROOM_PATH + 32];
	char		buf[1024];
	double		v;
	const char *p;

	if (r->version == 2)
	{
		snprintf(path, sizeof(path), "%s/cpu.stat", g->dir);
		if (!room_read(r, path, buf, sizeof(buf)) ||
			(p = strstr(buf, "usage_usec ")) == NULL ||
			sscanf(p + strlen("usage_usec "), "%lf", &v) != 1)
			return -1;
		return v;
	}
	snprintf(path, sizeof(path), "%s/cpuacct.usage", g->acct);
	if (!room_read(r, path, buf, sizeof(buf)) || sscanf(buf, "%lf", &v) != 1)
		return -1;
	return v / 1000.0;
}

/*
 * The idle share of the CPU this server may use, over the time since the
 * last call (now_us: a monotonic clock in µs): the least of its CPUs' idle
 * share and every quota's unused share.  1 at the first call, and when
 * nothing can be read.
 */
double
shipsync_cpuroom_idle(CpuRoom *r, double now_us)
{
	double		wall = r->wall_us < 0 ? 0 : now_us - r->wall_us;
	double		idle = room_cpus_idle(r);
	double		least = idle < 0 ? 1 : idle;
	double		fewest = 0;

	snprintf(r->limit, sizeof(r->limit), "%d CPUs", r->nallowed);
	for (int i = 0; i < r->ngroups; i++)
	{
		RoomGroup  *g = &r->groups[i];
		double		cores = room_quota(r, g);
		double		usage = cores > 0 ? room_usage_us(r, g) : -1;

		if (usage >= 0 && g->usage_us >= 0 && wall > 0 && usage >= g->usage_us)
		{
			double		unused = 1 - (usage - g->usage_us) / (cores * wall);

			unused = unused < 0 ? 0 : unused > 1 ? 1 : unused;
			if (unused < least)
				least = unused;
		}
		g->usage_us = usage;
		if (cores > 0 && (fewest == 0 || cores < fewest))
		{
			fewest = cores;
			snprintf(r->limit, sizeof(r->limit), "%d CPUs, a quota of %.2f cores (cgroup v%d)",
					 r->nallowed, cores, r->version);
		}
	}
	r->wall_us = now_us;
	return least;
}

/* What the last look found: the CPUs, and the last quota, for a log line */
const char *
shipsync_cpuroom_limit(const CpuRoom *r)
{
	return r->limit;
}

/* ---------- the window ---------- */

#define WINDOW_SAMPLE_US	1000	/* at most one sample a millisecond */
#define WINDOW_US			100000	/* a window lasts at least this */
#define WINDOW_SAMPLES		20		/* ... and takes at least this many */
#define WINDOW_MAX_US		1000000 /* ... unless it has lasted this long */

/* Whether a sample of the sessions is due at now_us (a millisecond after the last) */
bool
shipsync_window_due(RoomWindow *w, int64_t now_us)
{
	if (w->start_us == 0)
		w->start_us = now_us;
	return w->samples == 0 || now_us - w->last_us >= WINDOW_SAMPLE_US;
}

/* Add the sample taken at now_us: running sessions */
void
shipsync_window_sample(RoomWindow *w, int64_t now_us, int running)
{
	w->running_sum += running;
	w->samples++;
	w->last_us = now_us;
}

/*
 * Whether the window is over at now_us; if so, the average of its samples
 * in *running, and the next window begins.
 */
bool
shipsync_window_over(RoomWindow *w, int64_t now_us, double *running)
{
	if (w->samples == 0 || now_us - w->start_us < WINDOW_US ||
		(w->samples < WINDOW_SAMPLES && now_us - w->start_us < WINDOW_MAX_US))
		return false;
	*running = (double) w->running_sum / w->samples;
	w->samples = 0;
	w->running_sum = 0;
	w->start_us = now_us;
	return true;
}
