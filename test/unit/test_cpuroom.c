/*
 * test_cpuroom.c
 *		Unit tests of cpuroom.c: the idle share of the CPU a server may use,
 *		in a cgroup v2 pod whose quota is on the pod's group, in a cgroup v1
 *		container that sees its own group as the mount's root, pinned to
 *		some of the host's CPUs, and with nothing to read.
 *
 * Each case writes the files a kernel would show (/proc/self/cgroup,
 * /proc/self/mountinfo, /proc/stat, the groups' cpu.max, cpu.stat,
 * cpu.cfs_quota_us, cpuacct.usage) under a directory that stands for "/",
 * then changes the counters as a kernel would over one second.  The shapes
 * are those of Kubernetes on cgroup v2 and of Docker on cgroup v1 without a
 * cgroup namespace.
 *
 * Called from test_parsers.c, which owns the TAP counter.
 */
#define SHIPSYNC_PLAIN_C
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pg_shipsync.h"

void		test_cpuroom(void (*check) (int, const char *));

#define SECOND_US 1000000.0

/* Write content into root/rel, making its directories */
static void
put(const char *root, const char *rel, const char *content)
{
	char		path[2048];
	FILE	   *f;

	snprintf(path, sizeof(path), "%s/%s", root, rel);
	for (char *p = path + strlen(root) + 1; *p; p++)
		if (*p == '/')
		{
			*p = '\0';
			if (mkdir(path, 0700) != 0 && errno != EEXIST)
				perror(path);
			*p = '/';
		}
	f = fopen(path, "w");
	if (f == NULL)
	{
		perror(path);
		return;
	}
	fputs(content, f);
	fclose(f);
}

/* Two CPUs' lines of /proc/stat: user and idle ticks of each */
static void
put_stat(const char *root, long u0, long i0, long u1, long i1)
{
	char		buf[512];

	snprintf(buf, sizeof(buf),
			 "cpu  %ld 0 0 %ld 0 0 0 0 0 0\n"
			 "cpu0 %ld 0 0 %ld 0 0 0 0 0 0\n"
			 "cpu1 %ld 0 0 %ld 0 0 0 0 0 0\n"
			 "intr 12345 0 0\nctxt 999\nbtime 1700000000\n",
			 u0 + u1, i0 + i1, u0, i0, u1, i1);
	put(root, "proc/stat", buf);
}

static bool
near(double a, double b)
{
	return fabs(a - b) < 0.001;
}

static void
remove_tree(const char *root)
{
	char		cmd[1100];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", root);
}

/* A directory standing for "/" (root: a mkdtemp() template) */
static bool
new_root(char *root, void (*check) (int, const char *), const char *what)
{
	if (mkdtemp(root) != NULL)
		return true;
	check(0, what);
	return false;
}

/*
 * One more second of the pod of case_v2_pod(): its group's cpu.max (NULL:
 * unchanged) and cpu.stat, both CPUs' user and idle ticks; the idle share
 * read at t must be expect.
 */
static void
pod_second(CpuRoom *r, const char *root, const char *cpu_max, const char *cpu_stat,
		   long user, long idle_ticks, double t, double expect, const char *label,
		   void (*check) (int, const char *))
{
	double		idle;
	char		what[256];

	if (cpu_max)
		put(root, "sys/fs/cgroup/kubepods/burstable/pod1/cpu.max", cpu_max);
	put(root, "sys/fs/cgroup/kubepods/burstable/pod1/cpu.stat", cpu_stat);
	put_stat(root, user, idle_ticks, user, idle_ticks);
	idle = shipsync_cpuroom_idle(r, t);
	snprintf(what, sizeof(what), "%s (%.3f)", label, idle);
	check(near(idle, expect), what);
}

/* A pod on cgroup v2: 1.5 cores on the pod's group, none on the container's */
static void
case_v2_pod(void (*check) (int, const char *))
{
	char		root[] = "/tmp/cpuroom.XXXXXX";
	int			cpus[2] = {0, 1};
	CpuRoom    *r;
	double		idle;
	char		what[256];

	if (!new_root(root, check, "cgroup v2: a directory for the files"))
		return;
	put(root, "proc/self/cgroup", "0::/kubepods/burstable/pod1/ctr\n");
	put(root, "proc/self/mountinfo",
		"22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
		"30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"
		"31 22 0:5 / /proc rw - proc proc rw\n");
	put(root, "sys/fs/cgroup/kubepods/burstable/pod1/ctr/cpu.max", "max 100000\n");
	put(root, "sys/fs/cgroup/kubepods/burstable/pod1/ctr/cpu.stat",
		"usage_usec 4000000\nuser_usec 3000000\nsystem_usec 1000000\n");
	put(root, "sys/fs/cgroup/kubepods/burstable/pod1/cpu.max", "150000 100000\n");
	put(root, "sys/fs/cgroup/kubepods/burstable/pod1/cpu.stat",
		"usage_usec 5000000\nuser_usec 4000000\nsystem_usec 1000000\nnr_periods 10\n");
	put(root, "sys/fs/cgroup/kubepods/burstable/cpu.max", "max 100000\n");
	put_stat(root, 100, 900, 100, 900);

	r = shipsync_cpuroom_open(root, cpus, 2);
	check(r != NULL && near(shipsync_cpuroom_idle(r, 0), 1.0),
		  "cgroup v2: the first look has nothing to compare with, and says idle");

	/* one second: the pod's processes used 0.75 s of its 1.5 cores, the host's CPUs 10% */
	put(root, "sys/fs/cgroup/kubepods/burstable/pod1/cpu.stat",
		"usage_usec 5750000\nuser_usec 4500000\nsystem_usec 1250000\nnr_periods 20\n");
	put(root, "sys/fs/cgroup/kubepods/burstable/pod1/ctr/cpu.stat", "usage_usec 4750000\n");
	put_stat(root, 110, 990, 110, 990);
	idle = shipsync_cpuroom_idle(r, SECOND_US);
	snprintf(what, sizeof(what),
			 "cgroup v2: half of the pod's quota used, the host 90%% idle: 0.5 idle (%.3f)", idle);
	check(near(idle, 0.5), what);
	snprintf(what, sizeof(what), "cgroup v2: the log names the quota (%s)", shipsync_cpuroom_limit(r));
	check(strstr(shipsync_cpuroom_limit(r), "a quota of 1.50 cores (cgroup v2)") != NULL, what);

	/* the next second the quota is spent (throttled), the host still idle */
	pod_second(r, root, NULL, "usage_usec 7250000\n", 120, 1080, 2 * SECOND_US, 0.0,
			   "cgroup v2: the pod's quota spent: nothing idle", check);
	/* the quota raised at run time: 3 cores, 1.5 of them used */
	pod_second(r, root, "300000 100000\n", "usage_usec 8750000\n", 130, 1170, 3 * SECOND_US, 0.5,
			   "cgroup v2: a quota changed at run time counts at once", check);
	/* no quota anywhere: the CPUs' idle share alone */
	pod_second(r, root, "max 100000\n", "usage_usec 9750000\n", 160, 1240, 4 * SECOND_US, 0.7,
			   "cgroup v2: without a quota, the CPUs' idle share", check);
	check(strcmp(shipsync_cpuroom_limit(r), "2 CPUs") == 0,
		  "cgroup v2: without a quota, the log names the CPUs only");
	shipsync_cpuroom_close(r);
	remove_tree(root);
}

/*
 * A container on cgroup v1 (Docker, no cgroup namespace): cpu and cpuacct
 * mounted together, the mount's root being the container's own group, and
 * a cpuset line before them that must not be taken for cpu.
 */
static void
case_v1_container(void (*check) (int, const char *))
{
	char		root[] = "/tmp/cpuroom.XXXXXX";
	int			cpus[2] = {0, 1};
	CpuRoom    *r;
	double		idle;
	char		what[256];

	if (!new_root(root, check, "cgroup v1: a directory for the files"))
		return;
	put(root, "proc/self/cgroup",
		"12:memory:/docker/abc\n5:cpuset:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n");
	put(root, "proc/self/mountinfo",
		"640 620 0:55 / / rw,relatime - overlay overlay rw\n"
		"650 640 0:60 /docker/abc /sys/fs/cgroup/cpuset ro,nosuid - cgroup cgroup rw,cpuset\n"
		"651 640 0:61 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
		"652 640 0:62 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n");
	put(root, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "50000\n");
	put(root, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
	put(root, "sys/fs/cgroup/cpu,cpuacct/cpuacct.usage", "2000000000\n");
	/* a decoy: the cpuset hierarchy is not the cpu one */
	put(root, "sys/fs/cgroup/cpuset/cpu.cfs_quota_us", "1000\n");
	put(root, "sys/fs/cgroup/cpuset/cpu.cfs_period_us", "100000\n");
	put_stat(root, 100, 900, 100, 900);

	r = shipsync_cpuroom_open(root, cpus, 2);
	(void) shipsync_cpuroom_idle(r, 0);
	/* one second: 0.4 s used of a quota of half a core */
	put(root, "sys/fs/cgroup/cpu,cpuacct/cpuacct.usage", "2400000000\n");
	put_stat(root, 110, 990, 110, 990);
	idle = shipsync_cpuroom_idle(r, SECOND_US);
	snprintf(what, sizeof(what),
			 "cgroup v1: 0.4 s used of half a core, the host 90%% idle: 0.2 idle (%.3f, %s)",
			 idle, shipsync_cpuroom_limit(r));
	check(near(idle, 0.2) && strstr(shipsync_cpuroom_limit(r), "0.50 cores (cgroup v1)") != NULL, what);

	/* the quota lifted (-1): the CPUs' idle share */
	put(root, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
	put(root, "sys/fs/cgroup/cpu,cpuacct/cpuacct.usage", "3400000000\n");
	put_stat(root, 150, 1050, 150, 1050);
	idle = shipsync_cpuroom_idle(r, 2 * SECOND_US);
	snprintf(what, sizeof(what), "cgroup v1: no quota (-1), the CPUs' idle share (%.3f)", idle);
	check(near(idle, 0.6), what);
	shipsync_cpuroom_close(r);
	remove_tree(root);
}

/* Pinned to one CPU of two: only its line of /proc/stat counts */
static void
case_pinned(void (*check) (int, const char *))
{
	char		root[] = "/tmp/cpuroom.XXXXXX";
	int			cpu1[1] = {1};
	int			cpu0[1] = {0};
	CpuRoom    *r1,
			   *r0;
	double		idle1,
				idle0;
	char		what[256];

	if (!new_root(root, check, "pinned: a directory for the files"))
		return;
	put_stat(root, 100, 900, 100, 900);
	r1 = shipsync_cpuroom_open(root, cpu1, 1);
	r0 = shipsync_cpuroom_open(root, cpu0, 1);
	(void) shipsync_cpuroom_idle(r1, 0);
	(void) shipsync_cpuroom_idle(r0, 0);
	/* cpu0 all busy, cpu1 all idle: the host reads half idle */
	put_stat(root, 200, 900, 100, 1000);
	idle1 = shipsync_cpuroom_idle(r1, SECOND_US);
	idle0 = shipsync_cpuroom_idle(r0, SECOND_US);
	snprintf(what, sizeof(what),
			 "pinned: a server on the idle CPU reads 1, on the busy one 0, not the host's 0.5 (%.3f, %.3f)",
			 idle1, idle0);
	check(near(idle1, 1.0) && near(idle0, 0.0), what);
	check(strcmp(shipsync_cpuroom_limit(r1), "1 CPUs") == 0, "pinned: no control group read, one CPU");
	shipsync_cpuroom_close(r1);
	shipsync_cpuroom_close(r0);
	remove_tree(root);
}

/* Nothing to read: idle, so that nothing is held back */
static void
case_unreadable(void (*check) (int, const char *))
{
	char		root[] = "/tmp/cpuroom.XXXXXX";
	CpuRoom    *r;

	if (!new_root(root, check, "unreadable: a directory"))
		return;
	r = shipsync_cpuroom_open(root, NULL, 0);
	(void) shipsync_cpuroom_idle(r, 0);
	check(near(shipsync_cpuroom_idle(r, SECOND_US), 1.0),
		  "nothing readable: the CPU counts as idle");
	shipsync_cpuroom_close(r);
	remove_tree(root);
}

/* This machine: a share between 0 and 1 over a moment of work */
static void
case_this_machine(void (*check) (int, const char *))
{
	CpuRoom    *r = shipsync_cpuroom_open("", NULL, 0);
	volatile double x = 0;
	double		idle;
	char		what[256];

	(void) shipsync_cpuroom_idle(r, 0);
	for (long i = 0; i < 30000000; i++)
		x += (double) i;
	idle = shipsync_cpuroom_idle(r, SECOND_US / 10);
	snprintf(what, sizeof(what), "this machine: an idle share in [0, 1] (%.3f of %s)",
			 idle, shipsync_cpuroom_limit(r));
	check(idle >= 0 && idle <= 1 && shipsync_cpuroom_limit(r)[0] >= '1' &&
		  shipsync_cpuroom_limit(r)[0] <= '9', what);
	shipsync_cpuroom_close(r);
}

/*
 * The window: judged on 100 ms and 20 samples; a polling client seen in a
 * sample or two is not a session running; a sleep drops what came before.
 */
static void
case_window(void (*check) (int, const char *))
{
	RoomWindow	w = {0};
	double		running = -1;
	bool		over = false;
	int64_t		t = 1000000;
	char		what[256];

	/*
	 * A burst: the dispatcher's passes 60 ms apart, a client's statement
	 * caught by the first sample only.  On 100 ms alone the window was over
	 * with 2 samples and an average of 0.5.
	 */
	for (int i = 0; i < 3 && !over; i++, t += 60000)
	{
		if (shipsync_window_due(&w, t))
			shipsync_window_sample(&w, t, i == 0 ? 1 : 0);
		over = shipsync_window_over(&w, t, &running);
	}
	check(!over, "window: two or three samples 60 ms apart are not a judgement");
	for (int i = 3; i < 40 && !over; i++, t += 60000)
	{
		if (shipsync_window_due(&w, t))
			shipsync_window_sample(&w, t, 0);
		over = shipsync_window_over(&w, t, &running);
	}
	snprintf(what, sizeof(what),
			 "window: over within a second, one sample of all seeing the client: under 0.1 running (%.3f)",
			 running);
	check(over && running > 0 && running < 0.1, what);

	/* CPU-bound sessions: three in every sample, a sample every millisecond */
	over = false;
	for (int i = 0; i < 200 && !over; i++, t += 1000)
	{
		if (shipsync_window_due(&w, t))
			shipsync_window_sample(&w, t, 3);
		over = shipsync_window_over(&w, t, &running);
	}
	snprintf(what, sizeof(what), "window: three busy sessions read 3 after 100 ms (%.3f)", running);
	check(over && running == 3.0, what);

	/* samples a millisecond apart at most: a pass 0.2 ms after a sample takes none */
	t += 1000;
	if (shipsync_window_due(&w, t))
		shipsync_window_sample(&w, t, 1);
	check(!shipsync_window_due(&w, t + 200) && shipsync_window_due(&w, t + 1000),
		  "window: no second sample within a millisecond");

	/*
	 * Passes 400 ms apart (a dispatcher waiting on slow carriers): never 20
	 * samples, but judged after a second on what it has
	 */
	memset(&w, 0, sizeof(w));
	over = false;
	t += 400000;
	for (int i = 0; i < 10 && !over; i++, t += 400000)
	{
		if (shipsync_window_due(&w, t))
			shipsync_window_sample(&w, t, 0);
		over = shipsync_window_over(&w, t, &running);
	}
	snprintf(what, sizeof(what), "window: passes 400 ms apart are judged within a second and a half (%.3f)",
			 running);
	check(over && running == 0.0 && w.samples == 0, what);
}

void
test_cpuroom(void (*check) (int, const char *))
{
	case_window(check);
	case_v2_pod(check);
	case_v1_container(check);
	case_pinned(check);
	case_unreadable(check);
	case_this_machine(check);
}
