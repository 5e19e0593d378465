/*-------------------------------------------------------------------------
 *
 * money.c
 *		Amounts and currency codes as carriers write them, read strictly.
 *
 * An amount is money: it becomes a numeric, never a float, and it is read
 * only when its meaning is beyond doubt.  Accepted: an optional sign, digits,
 * and at most one decimal point with digits on both sides ("12.50000",
 * "-3", "0.5").  Refused, each with its own reason, because each is a
 * different mistake in the carrier's file: spaces (ASCII, no-break, thin,
 * ideographic), thousands separators ("1,234.50", "1'234", "1 234"),
 * currency signs and names ("¥12", "$5", "12元", "RMB 5"), exponents
 * ("1e3") and anything else that is not a digit.  A comma used as the
 * decimal mark ("12,50") is refused as a separator too: "1,234" means one
 * thing in Shanghai and another in Berlin, and a bill is no place to
 * guess.
 *
 * This file calls no PostgreSQL function: it is unit-tested and fuzzed
 * alone.  The reasons are static strings.
 *
 *-------------------------------------------------------------------------
 */
#define SHIPSYNC_PLAIN_C
#include <stdbool.h>
#include <string.h>

#include "pg_shipsync.h"

/* digits in one amount: far beyond any bill, short of silly */
#define AMOUNT_MAX_DIGITS 38

/* Length of a space character at p (UTF-8), or 0 */
static size_t
space_len(const unsigned char *p)
{
	if (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '\f' || *p == '\v')
		return 1;
	if (p[0] == 0xC2 && p[1] == 0xA0)	/* U+00A0 no-break space */
		return 2;
	if (p[0] == 0xE2 && p[1] == 0x80 && (p[2] >= 0x80 && p[2] <= 0x8A))
		return 3;				/* U+2000..U+200A, thin space among them */
	if (p[0] == 0xE2 && p[1] == 0x80 && p[2] == 0xAF)
		return 3;				/* U+202F narrow no-break space */
	if (p[0] == 0xE3 && p[1] == 0x80 && p[2] == 0x80)
		return 3;				/* U+3000 ideographic space */
	return 0;
}

/* A currency sign or name at p: $ ¥ ￥ € £ 元 or three capital letters */
static bool
currency_at(const unsigned char *p)
{
	if (*p == '$')
		return true;
	if (p[0] == 0xC2 && (p[1] == 0xA5 || p[1] == 0xA3))	/* ¥ £ */
		return true;
	if (p[0] == 0xE2 && p[1] == 0x82 && p[2] == 0xAC)	/* € */
		return true;
	if (p[0] == 0xEF && p[1] == 0xBF && p[2] == 0xA5)	/* ￥ fullwidth */
		return true;
	if (p[0] == 0xE5 && p[1] == 0x85 && p[2] == 0x83)	/* 元 */
		return true;
	if (p[0] >= 'A' && p[0] <= 'Z' && p[1] >= 'A' && p[1] <= 'Z' && p[2] >= 'A' && p[2] <= 'Z')
		return true;
	return false;
}

/*
 * Check that s is a plain decimal amount.  On success, out (at least
 * strlen(s) + 1 bytes) receives it without a leading "+", and true is
 * returned; otherwise *reason says what is wrong, as a clause that follows
 * the value in a message ("contains a thousands separator").
 */
bool
shipsync_amount_check(const char *s, char *out, const char **reason)
{
	const unsigned char *p = (const unsigned char *) s;
	int			digits = 0;
	int			before = 0;
	int			after = 0;
	bool		point = false;
	char	   *o = out;

	*reason = NULL;
	if (s == NULL || *s == '\0')
	{
		*reason = "is empty";
		return false;
	}
	/* the kinds of mistake first, wherever they are in the value */
	for (const unsigned char *q = p; *q; q++)
	{
		if (space_len(q))
		{
			*reason = "contains a space";
			return false;
		}
	}
	for (const unsigned char *q = p; *q; q++)
	{
		if (currency_at(q))
		{
			*reason = "contains a currency sign or code (give the currency in its own field)";
			return false;
		}
	}
	for (const unsigned char *q = p; *q; q++)
	{
		if (*q == ',' || *q == '\'' || *q == '_' ||
			(q[0] == 0xEF && q[1] == 0xBC && q[2] == 0x8C))	/* fullwidth comma */
		{
			*reason = "contains a thousands separator (or a comma as the decimal mark)";
			return false;
		}
		if ((*q == 'e' || *q == 'E') && q != p)
		{
			*reason = "is in exponent notation";
			return false;
		}
	}

	if (*p == '+' || *p == '-')
	{
		if (*p == '-')
			*o++ = '-';
		p++;
	}
	for (; *p; p++)
	{
		if (*p >= '0' && *p <= '9')
		{
			digits++;
			if (point)
				after++;
			else
				before++;
			*o++ = (char) *p;
		}
		else if (*p == '.' && !point)
		{
			point = true;
			*o++ = '.';
		}
		else
		{
			*reason = *p == '.' ? "has more than one decimal point" :
				"contains something that is not a digit, a sign or a decimal point";
			return false;
		}
	}
	*o = '\0';
	if (digits == 0)
	{
		*reason = "has no digits";
		return false;
	}
	if (before == 0 || (point && after == 0))
	{
		*reason = "needs digits on both sides of its decimal point";
		return false;
	}
	if (digits > AMOUNT_MAX_DIGITS)
	{
		*reason = "has more than 38 digits";
		return false;
	}
	return true;
}

/*
 * How many decimals of a decimal's text (as shipsync_amount_check() left
 * it) are significant: "1500.50" has 1, "1500.00" none
 */
int
shipsync_amount_decimals(const char *norm)
{
	const char *dot = strchr(norm, '.');
	int			n = 0;

	if (dot == NULL)
		return 0;
	for (int i = 1; dot[i] >= '0' && dot[i] <= '9'; i++)
		if (dot[i] != '0')
			n = i;
	return n;
}
