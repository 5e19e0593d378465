#!/usr/bin/python3
"""Where a burst's cores go: who runs, who waits, sampled from /proc.

    cores.py sample OUT STOPFILE DISPATCHER APPLIER NGINX
        every 4 ms, until STOPFILE exists: the machine's CPU counters
        (/proc/stat) and, for each process, its state, its CPU ticks and
        where in the kernel it sleeps (/proc/PID/stat and wchan), one line
        a sample into OUT
    cores.py report ORDERS FILE...
        for each file (one burst of ORDERS orders), over the samples from
        the first to the last in which a worker used CPU: how busy the
        machine was, each process's CPU an order, and in what share of the
        samples both workers were runnable, only the dispatcher, only the
        applier, or neither; then the medians of the files, as rows of the
        benchmark's table

test/bench/run --only cores runs it around bursts of 20,000.  The sampler
itself takes a few per cent of a core, which the machine's busy share
counts.  Plain Python, no module outside the standard library.
"""
import os
import statistics
import sys
import time

TICK = os.sysconf('SC_CLK_TCK')


def sample(out, stop, pids):
    fds = [os.open('/proc/%s/stat' % p, os.O_RDONLY) for p in pids]
    wchans = [os.open('/proc/%s/wchan' % p, os.O_RDONLY) for p in pids]
    procstat = os.open('/proc/stat', os.O_RDONLY)
    with open(out, 'w') as f:
        while not os.path.exists(stop):
            row = ['%.4f' % time.time(),
                   os.pread(procstat, 256, 0).split(b'\n', 1)[0].decode().split(None, 1)[1]]
            for fd, wfd in zip(fds, wchans):
                s = os.pread(fd, 1024, 0).decode()
                fields = s[s.rindex(')') + 2:].split()
                # state, user ticks, system ticks, where it sleeps
                row.append('%s %s %s %s' % (fields[0], fields[11], fields[12],
                                            os.pread(wfd, 128, 0).decode() or '-'))
            f.write(' | '.join(row) + '\n')
            time.sleep(0.004)


def parse(path):
    rows = []
    for line in open(path):
        parts = [p.split() for p in line.split(' | ')]
        cpu = [int(x) for x in parts[1]]
        procs = [(p[0], int(p[1]) + int(p[2]), p[3] if len(p) > 3 else '-') for p in parts[2:]]
        rows.append((float(parts[0][0]), cpu, procs))
    return rows


def one(path, orders):
    rows = parse(path)
    if len(rows) < 3:
        return None
    first, last = rows[0][2], rows[-1][2]
    moved = [i for i, r in enumerate(rows)
             if r[2][0][1] != first[0][1] or r[2][1][1] != first[1][1]]
    done = [i for i, r in enumerate(rows)
            if r[2][0][1] != last[0][1] or r[2][1][1] != last[1][1]]
    if not moved or not done:
        return None
    s, e = max(moved[0] - 1, 0), min(done[-1] + 1, len(rows) - 1)
    seconds = rows[e][0] - rows[s][0]

    def busy(cpu):          # user, nice, system, irq, softirq
        return cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6], sum(cpu[:8])
    b0, t0 = busy(rows[s][1])
    b1, t1 = busy(rows[e][1])
    n = e - s
    shares = {'both': 0, 'dispatcher': 0, 'applier': 0, 'neither': 0}
    for r in rows[s:e]:
        d, a = r[2][0][0] == 'R', r[2][1][0] == 'R'
        shares['both' if d and a else 'dispatcher' if d else 'applier' if a else 'neither'] += 1
    return {
        'seconds': seconds,
        'busy': 100.0 * (b1 - b0) / max(t1 - t0, 1),
        'us': [1e6 * (rows[e][2][k][1] - rows[s][2][k][1]) / TICK / orders for k in range(3)],
        'shares': {k: 100.0 * v / max(n, 1) for k, v in shares.items()},
    }


def report(orders, paths):
    runs = [r for r in (one(p, orders) for p in paths) if r]
    if not runs:
        print('| cores: no burst sampled | | | | (printed) |')
        return

    def med(f):
        return statistics.median(f(r) for r in runs)
    print('| cores: a burst of %d on a new pair, sampled every 4 ms (median of %d; '
          'the sampler counted in the machine) | machine %.0f%% busy over %.2f s | '
          'CPU an order: dispatcher %.0f µs, applier %.0f µs, nginx %.0f µs | '
          'samples with both workers runnable %.0f%%, the dispatcher alone %.0f%%, '
          'the applier alone %.0f%%, neither %.0f%% | (printed) |' % (
              orders, len(runs), med(lambda r: r['busy']), med(lambda r: r['seconds']),
              med(lambda r: r['us'][0]), med(lambda r: r['us'][1]), med(lambda r: r['us'][2]),
              med(lambda r: r['shares']['both']), med(lambda r: r['shares']['dispatcher']),
              med(lambda r: r['shares']['applier']), med(lambda r: r['shares']['neither'])))


if __name__ == '__main__':
    if len(sys.argv) >= 7 and sys.argv[1] == 'sample':
        sample(sys.argv[2], sys.argv[3], sys.argv[4:7])
    elif len(sys.argv) >= 4 and sys.argv[1] == 'report':
        report(int(sys.argv[2]), sys.argv[3:])
    else:
        sys.exit(__doc__)
