/*-------------------------------------------------------------------------
 *
 * mask.c
 *		Masking personal values for readers: names, phone numbers,
 *		addresses and e-mail addresses.
 *
 * shipsync_reader sees the fields that the field map marks personal
 * (shipsync.field_map.pii) masked, everywhere it can look; operators and
 * admins see them whole.  The rules keep what a report needs and drop what
 * identifies a person:
 *
 *	 name		the family name stays: 张三 -> 张*, John Smith -> J*** Smith
 *				(one star per hidden character; a name written in CJK
 *				characters keeps its first, any other keeps its last word
 *				with no digit, and a word with a digit is stars whole)
 *	 phone		the first three and the last four digits stay, at least four
 *				digits are hidden: 138****5678; +86 and 0086 are dropped
 *				first; anything that is not a phone number is ***
 *	 address	cut after the district (the first 区, 县 or 旗, but not
 *				小区 or 社区) or after the first comma, whichever comes
 *				first: 深圳市南山区*** ; neither, or a part kept that is
 *				not region names only (省, 市, 区, ...: 张三 13812345678
 *				深圳市南山区, 12 Main St,): ***
 *	 email		the first character of the local part and the domain:
 *				z***@example.com ; no @: *** ; anything after the domain
 *				(a second address) is ***
 *	 id_number	an ID card's or a passport's number: the last four
 *				characters stay, the rest are stars
 *				(**************1234); shorter than eight: stars whole
 *	 text		free text (a remark): each run of seven digits or more (a
 *				phone, an ID number) keeps its last four digits, the rest
 *				as written: 电话*******5678; a date (2026-12-07) stays
 *
 * Values are UTF-8 (the SQL entry points convert from and to the database
 * encoding); a byte that does not start a well-formed sequence counts as
 * one character, so no sequence is ever cut in two.  Leading and trailing
 * white space (ASCII, U+00A0, U+3000) is dropped; an empty value stays
 * empty.
 *
 * The column convention (shipsync_pii_column_kind) says which columns of an
 * order row are personal when a binding names none: the generic dialect's
 * default body carries the whole row.
 *
 * Plain C, malloc'd results, no PostgreSQL call: unit-tested and fuzzed
 * alone.
 *
 *-------------------------------------------------------------------------
 */
#define SHIPSYNC_PLAIN_C
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "pg_shipsync.h"

static const char *const pii_names[] = {"name", "phone", "address", "email", "id_number",
"text"};

/* The kind named name ("phone"), or PII_NONE */
int
shipsync_pii_kind(const char *name)
{
	if (name == NULL)
		return PII_NONE;
	for (int k = 0; k < (int) (sizeof(pii_names) / sizeof(pii_names[0])); k++)
		if (strcmp(name, pii_names[k]) == 0)
			return k;
	return PII_NONE;
}

/* ---------- UTF-8 ---------- */

/* Bytes of the character at s (1 for a malformed or truncated sequence) */
static int
u8_len(const unsigned char *s)
{
	int			n;

	if (s[0] < 0x80)
		return 1;
	else if (s[0] >= 0xC2 && s[0] <= 0xDF)
		n = 2;
	else if (s[0] >= 0xE0 && s[0] <= 0xEF)
		n = 3;
	else if (s[0] >= 0xF0 && s[0] <= 0xF4)
		n = 4;
	else
		return 1;
	for (int i = 1; i < n; i++)
		if ((s[i] & 0xC0) != 0x80)
			return 1;
	return n;
}

/* The code point of the character at s (its first byte if malformed) */
static unsigned int
u8_code(const unsigned char *s, int len)
{
	switch (len)
	{
		case 2:
			return ((s[0] & 0x1Fu) << 6) | (s[1] & 0x3Fu);
		case 3:
			return ((s[0] & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
		case 4:
			return ((s[0] & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) |
				((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
		default:
			return s[0];
	}
}

static bool
is_space_code(unsigned int c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
		c == '\v' || c == 0xA0 || c == 0x3000;
}

/* A character of the CJK scripts (and kana, hangul): written unspaced */
static bool
is_cjk_code(unsigned int c)
{
	return (c >= 0x2E80 && c <= 0x9FFF) || (c >= 0xAC00 && c <= 0xD7AF) ||
		(c >= 0xF900 && c <= 0xFAFF) || (c >= 0x20000 && c <= 0x3FFFF);
}

/* A digit, ASCII or full-width */
static bool
is_digit_code(unsigned int c)
{
	return (c >= '0' && c <= '9') || (c >= 0xFF10 && c <= 0xFF19);
}

/*
 * A character a domain name holds: an ASCII letter, digit, dot or hyphen,
 * or a letter of another script (an internationalised name), which is any
 * other character but white space and punctuation (Latin-1's, general,
 * CJK and full-width: the separators of a list of addresses, ，；、).
 */
static bool
is_domain_code(unsigned int c)
{
	if (c < 0x80)
		return isalnum((int) c) || c == '.' || c == '-';
	return !(is_space_code(c) || (c >= 0xA0 && c <= 0xBF) ||
			 (c >= 0x2000 && c <= 0x206F) || (c >= 0x3000 && c <= 0x303F) ||
			 (c >= 0xFE30 && c <= 0xFE6F) ||
			 (c >= 0xFF00 && c <= 0xFF65 && !is_digit_code(c) &&
			  !(c >= 0xFF21 && c <= 0xFF3A) && !(c >= 0xFF41 && c <= 0xFF5A)));
}

/* s without leading and trailing white space: *len set, start returned */
static const unsigned char *
u8_trim(const char *str, size_t *len)
{
	const unsigned char *s = (const unsigned char *) str;
	const unsigned char *end = s + strlen(str);
	const unsigned char *last_end = s;
	bool		started = false;
	const unsigned char *start = end;

	for (const unsigned char *p = s; p < end;)
	{
		int			n = u8_len(p);

		if (!is_space_code(u8_code(p, n)))
		{
			if (!started)
				start = p;
			started = true;
			last_end = p + n;
		}
		p += n;
	}
	*len = started ? (size_t) (last_end - start) : 0;
	return started ? start : s;
}

/* A growing malloc'd string */
typedef struct MaskBuf
{
	char	   *s;
	size_t		len;
	size_t		cap;
} MaskBuf;

static void
buf_add(MaskBuf *b, const void *p, size_t n)
{
	if (b->len + n + 1 > b->cap)
	{
		size_t		cap = (b->len + n + 1) * 2;
		char	   *s = realloc(b->s, cap);

		if (s == NULL)
			shipsync_out_of_memory();
		b->s = s;
		b->cap = cap;
	}
	memcpy(b->s + b->len, p, n);
	b->len += n;
	b->s[b->len] = '\0';
}

static void
buf_str(MaskBuf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

static void
buf_stars(MaskBuf *b, int n)
{
	for (int i = 0; i < n; i++)
		buf_add(b, "*", 1);
}

static char *
buf_done(MaskBuf *b)
{
	if (b->s == NULL)
		buf_add(b, "", 0);
	return b->s;
}

/* ---------- the four kinds ---------- */

/*
 * The word at p (up to white space or end) and whether a digit is in it;
 * returns its end, *chars set to its length in characters.
 */
static const unsigned char *
name_word(const unsigned char *p, const unsigned char *end, int *chars, bool *digit)
{
	*chars = 0;
	*digit = false;
	while (p < end)
	{
		int			n = u8_len(p);
		unsigned int c = u8_code(p, n);

		if (is_space_code(c))
			break;
		if (is_digit_code(c))
			*digit = true;
		p += n;
		(*chars)++;
	}
	return p;
}

/* p past the white space at it */
static const unsigned char *
skip_spaces(const unsigned char *p, const unsigned char *end)
{
	while (p < end && is_space_code(u8_code(p, u8_len(p))))
		p += u8_len(p);
	return p;
}

/*
 * 张三 -> 张*, John Smith -> J*** Smith, Madonna -> M******.  The family
 * name kept is the last word with no digit in it: a word with one (a
 * phone written after the name) is no name, and is stars whole.
 */
static char *
mask_name(const unsigned char *s, size_t len)
{
	MaskBuf		b = {0};
	const unsigned char *end = s + len;
	const unsigned char *last_word = s;
	bool		cjk = false;
	int			nchars = 0;

	for (const unsigned char *p = s; p < end;)
	{
		int			n = u8_len(p);

		if (is_cjk_code(u8_code(p, n)))
			cjk = true;
		nchars++;
		p += n;
	}
	if (nchars <= 1)
		return strdup(len ? "*" : "");

	if (cjk)
	{
		/* the first character, then a star for every other one */
		int			n = u8_len(s);

		buf_add(&b, s, n);
		for (const unsigned char *p = s + n; p < end; p += u8_len(p))
			if (!is_space_code(u8_code(p, u8_len(p))))
				buf_stars(&b, 1);
		return buf_done(&b);
	}

	for (const unsigned char *p = s; p < end;)
	{
		int			chars;
		bool		digit;
		const unsigned char *e = name_word(p, end, &chars, &digit);

		if (!digit)
			last_word = p;
		p = skip_spaces(e, end);
	}

	/*
	 * each word but the family name as its initial and stars, or only stars
	 * when it has a digit; the family name whole
	 */
	for (const unsigned char *p = s; p < end;)
	{
		int			chars;
		bool		digit;
		const unsigned char *w = p;

		p = name_word(p, end, &chars, &digit);
		if (chars > 0)
		{
			if (b.len > 0)
				buf_add(&b, " ", 1);
			if (w == last_word && last_word != s)
				buf_add(&b, w, p - w);
			else if (digit)
				buf_stars(&b, chars);
			else
			{
				buf_add(&b, w, u8_len(w));
				buf_stars(&b, chars - 1);
			}
		}
		p = skip_spaces(p, end);
	}
	return buf_done(&b);
}

/*
 * 13812345678 -> 138****5678.  Separators (space - ( ) . /) are dropped;
 * letters or fewer than 7 digits make it ***.
 */
static char *
mask_phone(const unsigned char *s, size_t len)
{
	char		digits[64];
	int			n = 0;
	bool		plus = false;
	int			hidden;
	int			keep;
	int			head;
	int			skip = 0;
	MaskBuf		b = {0};

	for (size_t i = 0; i < len; i++)
	{
		unsigned char c = s[i];

		if (isdigit(c))
		{
			if (n == (int) sizeof(digits))
				return strdup("***");
			digits[n++] = (char) c;
		}
		else if (c == '+' && n == 0 && !plus)
			plus = true;
		else if (!(c == ' ' || c == '-' || c == '(' || c == ')' || c == '.' || c == '/'))
			return strdup("***");
	}
	/* a Chinese number written internationally: its national form */
	if (plus && n == 13 && strncmp(digits, "86", 2) == 0)
	{
		skip = 2;
		plus = false;
	}
	else if (!plus && n == 15 && strncmp(digits, "0086", 4) == 0)
		skip = 4;
	n -= skip;
	if (n < 7)
		return strdup("***");

	hidden = n > 11 ? n - 7 : 4;
	keep = n - hidden;
	head = keep / 2 < 3 ? keep / 2 : 3;
	if (plus)
		buf_add(&b, "+", 1);
	buf_add(&b, digits + skip, head);
	buf_stars(&b, hidden);
	buf_add(&b, digits + skip + n - (keep - head), keep - head);
	return buf_done(&b);
}

/* Does the character at p end a district: 区, 县 or 旗, but not 小区/社区 */
static bool
ends_district(const unsigned char *start, const unsigned char *p, unsigned int c,
			  unsigned int prev)
{
	if (p == start)
		return false;
	if (c == 0x533A)			/* 区 */
		return prev != 0x5C0F && prev != 0x793E;	/* 小, 社 */
	return c == 0x53BF || c == 0x65D7;	/* 县, 旗 */
}

/* Does c end the name of a region: 省, 市, 区, 县, 旗, 州 or 盟 */
static bool
ends_region(unsigned int c)
{
	return c == 0x7701 || c == 0x5E02 || c == 0x533A || c == 0x53BF ||
		c == 0x65D7 || c == 0x5DDE || c == 0x76DF;
}

/* A CJK ideograph: no digit, letter or punctuation */
static bool
is_ideograph_code(unsigned int c)
{
	return (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x4E00 && c <= 0x9FFF) ||
		(c >= 0xF900 && c <= 0xFAFF) || (c >= 0x20000 && c <= 0x3FFFF);
}

/*
 * Does s (len bytes) read as region names only: words of CJK ideographs,
 * apart by white space, each ending in 省, 市, 区, 县, 旗, 州 or 盟
 * (广东省深圳市南山区, 广东省 深圳市 南山区)?  A name, a phone, an ID
 * number, an e-mail address or a street (张三 13812345678 广东省深圳市
 * 南山区, 12 Main St) does not.
 */
static bool
reads_as_region(const unsigned char *s, size_t len)
{
	const unsigned char *end = s + len;
	unsigned int last = 0;		/* the last character of the word, 0 between */
	bool		any = false;

	for (const unsigned char *p = s; p < end;)
	{
		int			n = u8_len(p);
		unsigned int c = u8_code(p, n);

		if (is_space_code(c))
		{
			if (last != 0 && !ends_region(last))
				return false;
			last = 0;
		}
		else if (!is_ideograph_code(c))
			return false;
		else
		{
			last = c;
			any = true;
		}
		p += n;
	}
	return any && (last == 0 || ends_region(last));
}

/*
 * 深圳市南山区科技园 -> 深圳市南山区***, 广东省深圳市，南山区 -> 广东省深圳市，***.
 * What is kept must read as region names: anything else before the cut (a
 * name, a phone, a street: 张三 13812345678 深圳市南山区, 12 Main St,
 * Springfield) makes the whole value ***.
 */
static char *
mask_address(const unsigned char *s, size_t len)
{
	const unsigned char *end = s + len;
	unsigned int prev = 0;
	MaskBuf		b = {0};

	if (len == 0)
		return strdup("");
	for (const unsigned char *p = s; p < end;)
	{
		int			n = u8_len(p);
		unsigned int c = u8_code(p, n);
		bool		comma = c == ',' || c == 0xFF0C;

		if (comma || ends_district(s, p, c, prev))
		{
			if (!reads_as_region(s, (comma ? p : p + n) - s))
				break;
			buf_add(&b, s, (p + n) - s);
			buf_str(&b, "***");
			return buf_done(&b);
		}
		prev = c;
		p += n;
	}
	return strdup("***");
}

/*
 * zhang.san@example.com -> z***@example.com.  The domain ends at the first
 * character no domain holds: what follows (a second address, a remark)
 * is *** whatever it is.
 */
static char *
mask_email(const unsigned char *s, size_t len)
{
	const unsigned char *at = memchr(s, '@', len);
	const unsigned char *end = s + len;
	const unsigned char *d;
	MaskBuf		b = {0};

	if (at == NULL || at == s || at == end - 1)
		return strdup("***");
	for (d = at + 1; d < end && is_domain_code(u8_code(d, u8_len(d))); d += u8_len(d))
		;
	if (d == at + 1)
		return strdup("***");
	buf_add(&b, s, u8_len(s) <= at - s ? u8_len(s) : 1);
	buf_str(&b, "***");
	buf_add(&b, at, d - at);
	if (d < end)
		buf_str(&b, "***");
	return buf_done(&b);
}

/*
 * 440301199001011234 -> **************1234, E12345678 -> *****5678: the last
 * four characters that are not white space stay when there are at least
 * eight, every other one is a star (white space kept).
 */
static char *
mask_id_number(const unsigned char *s, size_t len)
{
	const unsigned char *end = s + len;
	int			nchars = 0;
	int			seen = 0;
	MaskBuf		b = {0};

	for (const unsigned char *p = s; p < end; p += u8_len(p))
		if (!is_space_code(u8_code(p, u8_len(p))))
			nchars++;
	for (const unsigned char *p = s; p < end;)
	{
		int			n = u8_len(p);

		if (is_space_code(u8_code(p, n)))
			buf_add(&b, p, n);
		else if (nchars >= 8 && seen >= nchars - 4)
			buf_add(&b, p, n);
		else
			buf_stars(&b, 1);
		if (!is_space_code(u8_code(p, n)))
			seen++;
		p += n;
	}
	return buf_done(&b);
}

/*
 * The run of digits at p: digits (ASCII or full-width) with one space,
 * hyphen or dot between two of them, the full-width ones too (typed in
 * full-width mode, １３９　１２３４　５６７８ has ideographic spaces, U+3000:
 * not counted, it was shown whole).  Returns its end; *digits and
 * *date set when it reads as a date (2026-12-07, 07.12.2026).
 */
static const unsigned char *
digit_run(const unsigned char *p, const unsigned char *end, int *digits, bool *date)
{
	int			groups[3] = {0};
	int			ngroups = 1;

	*digits = 0;
	while (p < end)
	{
		int			n = u8_len(p);
		unsigned int c = u8_code(p, n);

		if (is_digit_code(c))
		{
			(*digits)++;
			if (ngroups <= 3)
				groups[ngroups - 1]++;
			p += n;
			continue;
		}
		if ((c == ' ' || c == '-' || c == '.' || c == 0x3000 || c == 0xFF0D) && p + n < end &&
			is_digit_code(u8_code(p + n, u8_len(p + n))) && *digits > 0)
		{
			ngroups++;
			p += n;
			continue;
		}
		break;
	}
	*date = ngroups == 3 &&
		((groups[0] == 4 && groups[1] <= 2 && groups[2] <= 2) ||
		 (groups[0] <= 2 && groups[1] <= 2 && groups[2] == 4));
	return p;
}

/*
 * 送货前电话13912345678 -> 送货前电话*******5678: in free text, a run of
 * seven digits or more keeps its last four, separators kept; the rest of
 * the text, shorter runs and dates as written.
 */
static char *
mask_text(const unsigned char *s, size_t len)
{
	const unsigned char *end = s + len;
	MaskBuf		b = {0};

	for (const unsigned char *p = s; p < end;)
	{
		int			n = u8_len(p);
		int			digits;
		bool		date;
		const unsigned char *e;
		int			seen = 0;

		if (!is_digit_code(u8_code(p, n)))
		{
			buf_add(&b, p, n);
			p += n;
			continue;
		}
		e = digit_run(p, end, &digits, &date);
		for (; p < e; p += n)
		{
			n = u8_len(p);
			if (digits < 7 || date || !is_digit_code(u8_code(p, n)))
				buf_add(&b, p, n);
			else if (seen++ < digits - 4)
				buf_stars(&b, 1);
			else
				buf_add(&b, p, n);
		}
	}
	return buf_done(&b);
}

/*
 * value masked as a personal value of kind (PII_NAME, ...), malloc'd; NULL
 * for a NULL value.  An unknown kind masks the whole value.
 */
char *
shipsync_mask_pii(int kind, const char *value)
{
	size_t		len;
	const unsigned char *s;
	char	   *r;

	if (value == NULL)
		return NULL;
	s = u8_trim(value, &len);
	switch (kind)
	{
		case PII_NAME:
			r = mask_name(s, len);
			break;
		case PII_PHONE:
			r = len ? mask_phone(s, len) : strdup("");
			break;
		case PII_ADDRESS:
			r = mask_address(s, len);
			break;
		case PII_EMAIL:
			r = len ? mask_email(s, len) : strdup("");
			break;
		case PII_ID_NUMBER:
			r = mask_id_number(s, len);
			break;
		case PII_TEXT:
			r = mask_text(s, len);
			break;
		default:
			r = strdup(len ? "***" : "");
			break;
	}
	if (r == NULL)
		shipsync_out_of_memory();
	return r;
}

/* ---------- which columns of an order row are personal ---------- */

static bool
word_in(const char *w, size_t n, const char *const *list)
{
	for (; *list; list++)
		if (strlen(*list) == n && strncmp(*list, w, n) == 0)
			return true;
	return false;
}

static bool
word_is(const char *w, size_t n, const char *word)
{
	return strlen(word) == n && strncmp(word, w, n) == 0;
}

/*
 * Split column into lower-case words (into lower, at most max of them): at
 * "_", "-", ".", " ", where a lower-case letter or a digit meets an
 * upper-case one (receiverPhone), where an upper-case run meets a word
 * (IDCard: ID, Card) and where letters meet digits (phone2, address_line1).
 * Words of digits alone are left out.  Returns the number of words.
 */
static int
column_words(const char *column, char *lower, const char **words, size_t *lens, int max)
{
	size_t		n = strlen(column);
	int			nwords = 0;
	size_t		o = 0;
	size_t		start = 0;

	for (size_t i = 0; i <= n; i++)
	{
		unsigned char c = (unsigned char) column[i];
		unsigned char prev = i > 0 ? (unsigned char) column[i - 1] : 0;
		unsigned char next = c ? (unsigned char) column[i + 1] : 0;
		bool		sep = c == '\0' || c == '_' || c == '-' || c == '.' || c == ' ';
		bool		cut = sep;

		if (!sep && o > start)
			cut = (isupper(c) && (islower(prev) || isdigit(prev))) ||
				(isupper(c) && isupper(prev) && islower(next)) ||
				(isdigit(c) != 0) != (isdigit(prev) != 0);
		if (cut && o > start)
		{
			bool		digits = true;

			for (size_t k = start; k < o; k++)
				digits = digits && isdigit((unsigned char) lower[k]);
			if (!digits && nwords < max)
			{
				words[nwords] = lower + start;
				lens[nwords++] = o - start;
			}
			lower[o++] = '\0';
			start = o;
		}
		else if (cut)
			start = o;
		if (!sep)
			lower[o++] = (char) tolower(c);
	}
	return nwords;
}

/*
 * Are the words from i on an ID number's (id_card, idCard, id_number,
 * passport, passportNo, national_id, ssn)?  An "id" followed by number or
 * no counts only as the first word or after a person's word
 * (customer_id_number): orderIdNo is an order's.
 */
static bool
id_number_words(const char *const *words, const size_t *lens, int nwords, int i,
				const char *const *person)
{
	static const char *const whole[] = {"passport", "idcard", "ssn", "nric", "sfz", NULL};
	static const char *const after_id[] = {"card", "number", "no", "num", "nr", NULL};

	if (word_in(words[i], lens[i], whole) ||
		(word_is(words[i], lens[i], "identity") && i + 1 < nwords &&
		 word_in(words[i + 1], lens[i + 1], after_id)) ||
		(word_is(words[i], lens[i], "national") && i + 1 < nwords &&
		 word_is(words[i + 1], lens[i + 1], "id")))
		return true;
	if (!word_is(words[i], lens[i], "id") || i + 1 >= nwords ||
		!word_in(words[i + 1], lens[i + 1], after_id))
		return false;
	return word_is(words[i + 1], lens[i + 1], "card") || i == 0 ||
		word_in(words[i - 1], lens[i - 1], person);
}

/*
 * The kind of a column by its name alone, or PII_NONE: what the generic
 * dialect's default body masks when the binding's option pii names no
 * kinds.  The name is split into words (column_words(): snake_case,
 * camelCase, PascalCase, a number at the end; case ignored):
 *	 email		a word email, or e then mail
 *	 phone		a word phone, mobile, tel, telephone, cellphone
 *	 address	a word address, addr, street
 *	 id_number	a word passport, idcard, ssn, nric or sfz; id then card; id
 *				then number, no or num as the first words or after a
 *				person's word; identity then card or number; national id
 *	 name		one of customer, contact, consignee, recipient, receiver,
 *				sender, buyer, surname, name; or a name ending in name whose
 *				first word is one of those or full, first, last, given, family
 *	 text		else, a word remark, remarks, note, notes, comment, comments,
 *				memo, instruction, instructions (free text: its phone and ID
 *				numbers masked)
 * Until 0.2's fix the words were split at "_" alone: receiverPhone, phone2
 * and idCard were not personal.
 */
int
shipsync_pii_column_kind(const char *column)
{
	static const char *const email[] = {"email", NULL};
	static const char *const phone[] = {"phone", "mobile", "tel", "telephone", "cellphone", NULL};
	static const char *const address[] = {"address", "addr", "street", NULL};
	static const char *const person[] = {"customer", "contact", "consignee", "recipient",
	"receiver", "sender", "buyer", "surname", "name", NULL};
	static const char *const name_prefix[] = {"customer", "contact", "consignee", "recipient",
	"receiver", "sender", "buyer", "full", "first", "last", "given", "family", NULL};
	static const char *const text[] = {"remark", "remarks", "note", "notes", "comment",
	"comments", "memo", "instruction", "instructions", NULL};
	char		lower[128];		/* column names are shorter (NAMEDATALEN) */
	const char *words[16];
	size_t		lens[16];
	int			nwords;
	int			kind = PII_NONE;

	if (column == NULL || column[0] == '\0' || strlen(column) >= sizeof(lower) / 2)
		return PII_NONE;
	nwords = column_words(column, lower, words, lens, 16);
	for (int i = 0; i < nwords; i++)
	{
		if (word_in(words[i], lens[i], email) ||
			(i + 1 < nwords && word_is(words[i], lens[i], "e") &&
			 word_is(words[i + 1], lens[i + 1], "mail")))
			return PII_EMAIL;
		if (id_number_words(words, lens, nwords, i, person))
			return PII_ID_NUMBER;
		if (word_in(words[i], lens[i], phone))
			kind = PII_PHONE;
		else if (word_in(words[i], lens[i], address) && kind != PII_PHONE)
			kind = PII_ADDRESS;
	}
	if (kind != PII_NONE)
		return kind;
	if (nwords == 1 && word_in(words[0], lens[0], person))
		return PII_NAME;
	if (nwords == 2 && word_is(words[1], lens[1], "name") &&
		word_in(words[0], lens[0], name_prefix))
		return PII_NAME;
	for (int i = 0; i < nwords; i++)
		if (word_in(words[i], lens[i], text))
			return PII_TEXT;
	return PII_NONE;
}
