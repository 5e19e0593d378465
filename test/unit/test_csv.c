/*
 * test_csv.c
 *		Unit tests of the statement CSV reader (csv.c) and the amount
 *		checker (money.c): BOM, quoted fields, CRLF, Chinese headers, line
 *		numbers of records and errors; amounts as carriers write them.
 *
 * Called from test_parsers.c, which owns the TAP counter.
 */
#define SHIPSYNC_PLAIN_C
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg_shipsync.h"

void		test_csv(void (*check) (int, const char *));

/* Read every record of s; returns the records as "f1|f2;f1|f2" and the
 * start lines as "1,2", or the error. */
static void
read_all(const char *s, size_t len, char *out, size_t outlen, char *lines, size_t llen)
{
	CsvReader	r;
	int			line;
	int			rc;
	char		err[256];

	out[0] = '\0';
	lines[0] = '\0';
	shipsync_csv_init(&r, s, len, ',');
	while ((rc = shipsync_csv_next(&r, &line, err, sizeof(err))) == 1)
	{
		if (out[0])
			strncat(out, ";", outlen - strlen(out) - 1);
		for (int i = 0; i < r.nfields; i++)
		{
			if (i)
				strncat(out, "|", outlen - strlen(out) - 1);
			strncat(out, r.fields[i], outlen - strlen(out) - 1);
		}
		snprintf(lines + strlen(lines), llen - strlen(lines), "%s%d", lines[0] ? "," : "", line);
	}
	if (rc < 0)
		snprintf(out, outlen, "ERROR %s", err);
	shipsync_csv_free(&r);
}

static int
same(const char *s, const char *want_records, const char *want_lines)
{
	char		out[1024];
	char		lines[256];

	read_all(s, strlen(s), out, sizeof(out), lines, sizeof(lines));
	if (strcmp(out, want_records) != 0 || (want_lines && strcmp(lines, want_lines) != 0))
	{
		fprintf(stderr, "# got records [%s] lines [%s]\n", out, lines);
		return 0;
	}
	return 1;
}

static int
amount_is(const char *in, const char *want)
{
	char		out[128];
	const char *why;

	if (!shipsync_amount_check(in, out, &why))
	{
		fprintf(stderr, "# amount %s refused: %s\n", in, why);
		return 0;
	}
	return strcmp(out, want) == 0;
}

static int
amount_refused(const char *in, const char *reason_part)
{
	char		out[128];
	const char *why;

	if (shipsync_amount_check(in, out, &why))
		return 0;
	if (strstr(why, reason_part) == NULL)
	{
		fprintf(stderr, "# amount %s refused for: %s\n", in, why);
		return 0;
	}
	return 1;
}

void
test_csv(void (*check) (int, const char *))
{
	/* records, fields, line ends */
	check(same("a,b,c\n1,2,3\n", "a|b|c;1|2|3", "1,2"), "csv: two LF records");
	check(same("a,b\r\n1,2\r\n", "a|b;1|2", "1,2"), "csv: CRLF line ends");
	check(same("a,b\r1,2", "a|b;1|2", "1,2"), "csv: a lone CR ends a line; no final line break");
	check(same("a,b\n\n\r\n1,2\n\n", "a|b;1|2", "1,4"), "csv: empty lines are skipped and counted");
	check(same("a,,c\n,,\n", "a||c;||", NULL), "csv: empty fields");
	check(same("a,b,\n", "a|b|", NULL), "csv: a trailing empty field");

	/* byte order mark and Chinese headers */
	check(same("\xEF\xBB\xBF运单号,费用类型,金额\r\nSF1,运费,12.50\r\n",
			   "运单号|费用类型|金额;SF1|运费|12.50", "1,2"),
		  "csv: a UTF-8 BOM is skipped, Chinese headers are read as written");
	{
		CsvReader	r;
		int			line;
		char		err[128];
		const char *s = "\xEF\xBB\xBF" "tracking_number\n";

		shipsync_csv_init(&r, s, strlen(s), ',');
		check(shipsync_csv_next(&r, &line, err, sizeof(err)) == 1 &&
			  strcmp(r.fields[0], "tracking_number") == 0,
			  "csv: the first column's name does not keep the BOM");
		shipsync_csv_free(&r);
	}

	/* quoted fields */
	check(same("\"a,b\",\"say \"\"hi\"\"\",c\n", "a,b|say \"hi\"|c", NULL),
		  "csv: quoted delimiters and doubled quotes");
	check(same("x,\"line one\r\nline two\",y\nnext,1,2\n", "x|line one\nline two|y;next|1|2", "1,3"),
		  "csv: a quoted line break stays in the field, and later records start on later lines");
	check(same("\"\",\"\"\"\"\n", "|\"", NULL), "csv: an empty quoted field and a lone quote");
	check(same("\"金额\",\"备注，含逗号\"\n", "金额|备注，含逗号", NULL), "csv: quoted Chinese text");

	/* errors, with their line */
	check(same("a,b\n1,2\"x\n", "ERROR line 2: a quote inside an unquoted field (quote the whole field, and write the quote twice)", NULL),
		  "csv: a quote inside an unquoted field is an error on its line");
	check(same("a,b\n\"1\"x,2\n", "ERROR line 2: text after a closing quote (a quote inside a quoted field is written twice)", NULL),
		  "csv: text after a closing quote is an error");
	check(same("a,b\n1,2\n3,\"open\nstill\n", "ERROR line 5: the quoted field opened on line 3 is not closed", NULL),
		  "csv: an unterminated quote names the line where it opened");
	{
		char		out[256];
		char		lines[64];
		const char	s[] = "a,b\n1,\0\n";

		read_all(s, sizeof(s) - 1, out, sizeof(out), lines, sizeof(lines));
		check(strcmp(out, "ERROR line 2: a NUL byte") == 0, "csv: a NUL byte is an error");
	}
	{
		CsvReader	r;
		int			line;
		char		err[128];
		const char *s = "a\n\"b\n";

		shipsync_csv_init(&r, s, strlen(s), ';');
		check(shipsync_csv_next(&r, &line, err, sizeof(err)) == 1 &&
			  shipsync_csv_next(&r, &line, err, sizeof(err)) == -1 &&
			  shipsync_csv_next(&r, &line, err, sizeof(err)) == -1,
			  "csv: after an error the reader stays failed");
		shipsync_csv_free(&r);
	}
	{
		CsvReader	r;
		int			line;
		char		err[128];
		const char *s = "a;b,c\n";

		shipsync_csv_init(&r, s, strlen(s), ';');
		check(shipsync_csv_next(&r, &line, err, sizeof(err)) == 1 && r.nfields == 2 &&
			  strcmp(r.fields[1], "b,c") == 0, "csv: another delimiter");
		shipsync_csv_free(&r);
	}
	{
		/* many fields and a long field: the buffer grows */
		char	   *big = malloc(200000);
		CsvReader	r;
		int			line;
		char		err[128];
		size_t		n = 0;

		for (int i = 0; i < 100; i++)
			n += sprintf(big + n, "%sf%d", i ? "," : "", i);
		big[n++] = '\n';
		memset(big + n, 'x', 100000);
		n += 100000;
		shipsync_csv_init(&r, big, n, ',');
		check(shipsync_csv_next(&r, &line, err, sizeof(err)) == 1 && r.nfields == 100 &&
			  strcmp(r.fields[99], "f99") == 0 &&
			  shipsync_csv_next(&r, &line, err, sizeof(err)) == 1 && strlen(r.fields[0]) == 100000 &&
			  line == 2, "csv: 100 fields, then a field of 100,000 bytes");
		shipsync_csv_free(&r);
		free(big);
	}

	/* amounts */
	check(amount_is("12.50000", "12.50000"), "amount: sub-cent precision kept as written");
	check(amount_is("-3", "-3") && amount_is("+7.5", "7.5") && amount_is("0.01", "0.01"),
		  "amount: signs and plain decimals");
	check(amount_is("007.50", "007.50"), "amount: leading zeros");
	check(amount_refused("1,234.50", "thousands separator"), "amount: 1,234.50 refused");
	check(amount_refused("12,50", "thousands separator"), "amount: a decimal comma refused");
	check(amount_refused("1'234", "thousands separator") && amount_refused("1_234", "thousands separator"),
		  "amount: other separators refused");
	check(amount_refused("12.50 ", "space") && amount_refused(" 12", "space") &&
		  amount_refused("1 234", "space"), "amount: ASCII spaces refused");
	check(amount_refused("1\xC2\xA0" "234", "space") && amount_refused("1\xE2\x80\x89" "234", "space") &&
		  amount_refused("12\xE3\x80\x80", "space"), "amount: no-break, thin and ideographic spaces refused");
	check(amount_refused("\xC2\xA5" "12", "currency") && amount_refused("$5", "currency") &&
		  amount_refused("12\xE5\x85\x83", "currency") && amount_refused("CNY12", "currency") &&
		  amount_refused("\xEF\xBF\xA5" "3", "currency"), "amount: currency signs and codes refused");
	check(amount_refused("1e3", "exponent") && amount_refused("1.5E2", "exponent"), "amount: exponents refused");
	check(amount_refused("", "empty") && amount_refused("-", "no digits") &&
		  amount_refused(".5", "both sides") && amount_refused("5.", "both sides") &&
		  amount_refused("1.2.3", "more than one") && amount_refused("12a", "not a digit") &&
		  amount_refused("\xEF\xBC\x91\xEF\xBC\x92", "not a digit"),
		  "amount: empty, sign only, half decimals, two points, letters, fullwidth digits refused");
	check(amount_refused("1234567890123456789012345678901234567890", "38 digits"),
		  "amount: more than 38 digits refused");
}
