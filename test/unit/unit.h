/*
 * unit.h
 *		The TAP harness shared by the unit test programs (unit.c).
 */
#ifndef SHIPSYNC_UNIT_H
#define SHIPSYNC_UNIT_H

/* print "ok N - what" or "not ok N - what" */
extern void check(int cond, const char *what);

/*
 * Run a case in a child process (a fresh page table; glibc settings changed
 * for good stay there): fn fills findings[] with 0s and 1s, at most
 * UNIT_MAX_FINDINGS, and returns how many.  Returns that count here, -1 if
 * the child failed.
 */
#define UNIT_MAX_FINDINGS 16
extern int	unit_in_child(int (*fn) (char *findings), char *findings);

/* print the plan line; the program's exit status */
extern int	unit_done(void);

#endif
