/*-------------------------------------------------------------------------
 *
 * csv.c
 *		A strict CSV reader for carriers' monthly statements.
 *
 * RFC 4180 as carriers' billing systems write it: records end with LF or
 * CRLF (a lone CR too), fields are separated by one delimiter byte (a
 * comma unless the caller says otherwise), a field in double quotes may
 * hold delimiters, line breaks and doubled quotes.  A UTF-8 byte order
 * mark at the very start is skipped, so that a header exported by Excel
 * matches its column name.  Bytes are otherwise passed through as they
 * are: names in Chinese, or in any UTF-8, are just bytes here.
 *
 * Anything else is an error, never a guess: a quote inside an unquoted
 * field, text after a closing quote, a quoted field still open at the end
 * of the input, a NUL byte.  Each error names the physical line where it
 * was found; each record reports the line it starts on (the header row is
 * line 1), and a quoted line break makes the following records start on
 * later lines, as an editor shows them.  Empty lines are skipped.
 *
 * Why not PostgreSQL's COPY: COPY ... FROM needs a file, a program or the
 * client's stream, not a value a function was given; it keeps a BOM as
 * part of the first column's name; PostgreSQL 15 cannot go on after a bad
 * line; and its messages name its own table and columns, not the
 * carrier's.  This reader is small enough to read in one sitting, and
 * statements are parsed at memory speed (a 100,000-line statement in a
 * few tens of milliseconds).
 *
 * This file calls no PostgreSQL function and allocates with malloc: it is
 * unit-tested and fuzzed alone.  A reader owns one growing buffer that
 * holds the current record's fields, NUL-terminated; they stay valid
 * until the next call.
 *
 *-------------------------------------------------------------------------
 */
#define SHIPSYNC_PLAIN_C
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg_shipsync.h"

static void
csv_need(CsvReader *r, size_t more)
{
	size_t		cap = r->cap ? r->cap : 256;

	if (r->len + more <= r->cap)
		return;
	while (cap < r->len + more)
		cap *= 2;
	r->buf = realloc(r->buf, cap);
	if (r->buf == NULL)
		shipsync_out_of_memory();
	r->cap = cap;
}

static void
csv_byte(CsvReader *r, char c)
{
	csv_need(r, 1);
	r->buf[r->len++] = c;
}

/* end the current field: NUL-terminate it and remember where it starts */
static void
csv_end_field(CsvReader *r, size_t start)
{
	csv_byte(r, '\0');
	if (r->nfields == r->fcap)
	{
		r->fcap = r->fcap ? r->fcap * 2 : 16;
		r->offsets = realloc(r->offsets, sizeof(size_t) * r->fcap);
		r->fields = realloc(r->fields, sizeof(char *) * r->fcap);
		if (r->offsets == NULL || r->fields == NULL)
			shipsync_out_of_memory();
	}
	r->offsets[r->nfields++] = start;
}

/*
 * Start reading data[0..len) with the given delimiter.  The data must stay
 * valid while the reader is used.
 */
void
shipsync_csv_init(CsvReader *r, const char *data, size_t len, char delim)
{
	memset(r, 0, sizeof(*r));
	r->p = data;
	r->end = data + len;
	r->delim = delim;
	r->line = 1;
	if (len >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0)
		r->p += 3;
}

void
shipsync_csv_free(CsvReader *r)
{
	free(r->buf);
	free(r->offsets);
	free(r->fields);
	r->buf = NULL;
	r->offsets = NULL;
	r->fields = NULL;
}

/* At a line break: step over it (CRLF, LF or CR) and count the line. */
static void
csv_newline(CsvReader *r)
{
	if (*r->p == '\r' && r->p + 1 < r->end && r->p[1] == '\n')
		r->p++;
	r->p++;
	r->line++;
}

static int
csv_fail(CsvReader *r, char *errbuf, size_t errlen, const char *what)
{
	snprintf(errbuf, errlen, "line %d: %s", r->line, what);
	r->failed = true;
	return -1;
}

/*
 * Read the next record.  Returns 1 with r->fields[0 .. r->nfields) and
 * *lineno, the line the record starts on; 0 at the end of the input; -1
 * with the reason (naming its line) in errbuf.  After an error the reader
 * is done: the input cannot be trusted past it.
 */
int
shipsync_csv_next(CsvReader *r, int *lineno, char *errbuf, size_t errlen)
{
	if (r->failed)
		return csv_fail(r, errbuf, errlen, "the statement could not be read past an earlier error");
	/* empty lines are not records */
	while (r->p < r->end && (*r->p == '\n' || *r->p == '\r'))
		csv_newline(r);
	if (r->p >= r->end)
		return 0;

	r->len = 0;
	r->nfields = 0;
	*lineno = r->line;
	for (;;)
	{
		size_t		start = r->len;

		if (r->p < r->end && *r->p == '"')
		{
			int			open_line = r->line;

			r->p++;
			for (;;)
			{
				if (r->p >= r->end)
				{
					char		what[96];

					snprintf(what, sizeof(what), "the quoted field opened on line %d is not closed", open_line);
					return csv_fail(r, errbuf, errlen, what);
				}
				if (*r->p == '"')
				{
					if (r->p + 1 < r->end && r->p[1] == '"')
					{
						csv_byte(r, '"');
						r->p += 2;
						continue;
					}
					r->p++;
					break;
				}
				if (*r->p == '\0')
					return csv_fail(r, errbuf, errlen, "a NUL byte");
				if (*r->p == '\n' || *r->p == '\r')
				{
					/* a quoted line break is kept as LF */
					csv_newline(r);
					csv_byte(r, '\n');
					continue;
				}
				csv_byte(r, *r->p++);
			}
			if (r->p < r->end && *r->p != r->delim && *r->p != '\n' && *r->p != '\r')
				return csv_fail(r, errbuf, errlen, "text after a closing quote (a quote inside a quoted field is written twice)");
		}
		else
		{
			while (r->p < r->end && *r->p != r->delim && *r->p != '\n' && *r->p != '\r')
			{
				if (*r->p == '"')
					return csv_fail(r, errbuf, errlen, "a quote inside an unquoted field (quote the whole field, and write the quote twice)");
				if (*r->p == '\0')
					return csv_fail(r, errbuf, errlen, "a NUL byte");
				csv_byte(r, *r->p++);
			}
		}
		csv_end_field(r, start);
		if (r->p < r->end && *r->p == r->delim)
		{
			r->p++;
			continue;
		}
		if (r->p < r->end)
			csv_newline(r);
		break;
	}
	for (int i = 0; i < r->nfields; i++)
		r->fields[i] = r->buf + r->offsets[i];
	return 1;
}
