/*
 * unit.h
 *		The TAP harness shared by the unit test programs (unit.c).
 */
#ifndef SHIPSYNC_UNIT_H
#define SHIPSYNC_UNIT_H

/* print "ok N - what" or "not ok N - what" */
extern void check(int cond, const char *what);

/* print the plan line; the program's exit status */
extern int	unit_done(void);

#endif
