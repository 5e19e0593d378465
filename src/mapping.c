/*-------------------------------------------------------------------------
 *
 * mapping.c
 *		The field-mapping engine: dotted paths with [k=v] filters, the
 *		transforms, and rendering an order row into a carrier's request.
 *
 * A profile's outbound rows (shipsync.field_map, direction 'out') are
 * compiled once per configuration generation into a ShipMap: each rule
 * has a parsed target path, a source (a column of the order row, a
 * constant, a provider option or a property of the intent), a transform
 * with its argument checked and pre-digested, a default and a required
 * flag.  Rendering one order walks the rules in order and builds a small
 * JSON tree of our own, then prints it as compact JSON, or as a form whose
 * top-level members are the fields (nested values printed as JSON).  A path
 * step name[k=v] finds the element of array name whose member k equals v,
 * or appends one with k = v (a number when v looks like one, so
 * contactInfoList[contactType=2] makes {"contactType": 2}); name[3] is an
 * index.  Inbound rules read the same paths out of a carrier's response
 * (json.c does the reading, decoding JSON that a carrier sent inside a
 * string on the way) into canonical field names.
 *
 * Every failure of one order is collected, not thrown: a required value
 * that is missing, and any value a transform cannot read (a weight that is
 * not a number, a phone number with letters), end in MAP_INVALID with the
 * field names and reasons in errbuf, so the intent becomes invalid and
 * nothing is sent.  A map that cannot apply at all (two rules writing a
 * value and an object at the same place) is MAP_ERROR.
 *
 * This file calls no PostgreSQL function and allocates with malloc: it is
 * unit-tested and fuzzed alone.  Named time zones are resolved through a
 * callback of the caller (the server uses PostgreSQL's zone database);
 * without one, only UTC and numeric offsets are known.  upper and lower
 * change ASCII letters only: case of other scripts is left as it is.
 *
 *-------------------------------------------------------------------------
 */
#define SHIPSYNC_PLAIN_C
#ifndef _GNU_SOURCE
#define _GNU_SOURCE				/* strptime, strndup */
#endif
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pg_shipsync.h"

#define MAP_MAX_PATH	256		/* steps in one path */
#define MAP_MAX_TEXT	65536	/* bytes of one value after a transform */

typedef enum MapSourceKind
{
	SRC_NONE,					/* no source: the default or concat template */
	SRC_COLUMN,
	SRC_CONST,
	SRC_OPTION,
	SRC_ORDER_KEY,
	SRC_IDEMPOTENCY_KEY
} MapSourceKind;

typedef enum MapXf
{
	XF_IDENTITY,
	XF_TRIM,
	XF_UPPER,
	XF_LOWER,
	XF_CONCAT,
	XF_DEFAULT,
	XF_LOOKUP,
	XF_TO_NUMBER,
	XF_UNIT,
	XF_TIMESTAMP,
	XF_PARSE_TIME,
	XF_PHONE
} MapXf;

typedef struct MapRule
{
	char	   *target;			/* as written, for messages */
	MapXf		xf;				/* transform, resolved at compile time */
	MapPath		path;
	MapSourceKind src_kind;
	char	   *src;			/* column name, constant text */
	MapPath		src_path;		/* option path, or one-step column path */
	char	   *transform;
	char	   *arg;			/* the argument as JSON text, or NULL */
	char	   *dflt;
	bool		required;
} MapRule;

struct ShipMap
{
	int			n;
	MapRule    *rules;
};

/* ---------- small helpers ---------- */

static char *
xstrdup(const char *s)
{
	char	   *d = strdup(s ? s : "");

	if (d == NULL)
		shipsync_out_of_memory();
	return d;
}

static char *
xstrndup(const char *s, size_t n)
{
	char	   *d = strndup(s, n);

	if (d == NULL)
		shipsync_out_of_memory();
	return d;
}

static void *
xcalloc(size_t n, size_t size)
{
	void	   *p = calloc(n ? n : 1, size ? size : 1);

	if (p == NULL)
		shipsync_out_of_memory();
	return p;
}

static void set_err(char *errbuf, size_t errlen, const char *fmt,...)
			__attribute__((format(printf, 3, 4)));

static void
set_err(char *errbuf, size_t errlen, const char *fmt,...)
{
	va_list		ap;

	if (errbuf == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(errbuf, errlen, fmt, ap);
	va_end(ap);
}

/* A growable string, malloc'd */
typedef struct Buf
{
	char	   *data;
	size_t		len;
	size_t		cap;
} Buf;

static void
buf_need(Buf *b, size_t more)
{
	if (b->len + more + 1 > b->cap)
	{
		size_t		cap = b->cap ? b->cap : 256;

		while (b->len + more + 1 > cap)
			cap *= 2;
		b->data = realloc(b->data, cap);
		if (b->data == NULL)
			shipsync_out_of_memory();
		b->cap = cap;
		b->data[b->len] = '\0';	/* a string even before the first add */
	}
}

static void
buf_add(Buf *b, const char *s, size_t n)
{
	buf_need(b, n);
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

static void
buf_str(Buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

static inline void
buf_char(Buf *b, char c)
{
	if (b->len + 2 > b->cap)
		buf_need(b, 1);
	b->data[b->len++] = c;
	b->data[b->len] = '\0';
}

static char *
buf_take(Buf *b)
{
	if (b->data == NULL)
		return xstrdup("");
	return b->data;
}

void
shipsync_value_free(MapValue *v)
{
	if (v == NULL)
		return;
	free(v->s);
	v->s = NULL;
	v->type = MV_NULL;
}

static void
value_set(MapValue *v, MapValueType t, const char *s)
{
	v->type = t;
	v->s = t == MV_NULL ? NULL : xstrdup(s);
}

/* Is s a JSON number (RFC 8259 grammar)? */
static bool
is_json_number(const char *s)
{
	if (*s == '-')
		s++;
	if (*s == '0')
		s++;
	else if (isdigit((unsigned char) *s))
		while (isdigit((unsigned char) *s))
			s++;
	else
		return false;
	if (*s == '.')
	{
		s++;
		if (!isdigit((unsigned char) *s))
			return false;
		while (isdigit((unsigned char) *s))
			s++;
	}
	if (*s == 'e' || *s == 'E')
	{
		s++;
		if (*s == '+' || *s == '-')
			s++;
		if (!isdigit((unsigned char) *s))
			return false;
		while (isdigit((unsigned char) *s))
			s++;
	}
	return *s == '\0';
}

/* ---------- scanning a flat JSON object ---------- */

static const char *
skip_ws(const char *p)
{
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	return p;
}

/* The end of the JSON string starting at p (on its opening quote), or NULL */
static const char *
scan_string(const char *p)
{
	for (p++; *p; p++)
	{
		if (*p == '\\')
		{
			if (p[1] == '\0')
				return NULL;
			p++;
		}
		else if (*p == '"')
			return p + 1;
	}
	return NULL;
}

/* The end of the JSON value starting at p, or NULL (not validated deeply) */
static const char *
scan_value(const char *p)
{
	int			depth = 0;

	if (*p == '"')
		return scan_string(p);
	if (*p != '{' && *p != '[')
	{
		const char *s = p;

		while (*p && *p != ',' && *p != '}' && *p != ']' &&
			   *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
			p++;
		return p > s ? p : NULL;
	}
	for (; *p; p++)
	{
		if (*p == '"')
		{
			p = scan_string(p);
			if (p == NULL)
				return NULL;
			p--;
		}
		else if (*p == '{' || *p == '[')
			depth++;
		else if ((*p == '}' || *p == ']') && --depth == 0)
			return p + 1;
	}
	return NULL;
}

/* Index the members of the object starting at p; false if it is not one */
static bool
index_object(const char *p, MapRowIndex *idx)
{
	idx->n = 0;
	p = skip_ws(p);
	if (*p != '{')
		return false;
	p = skip_ws(p + 1);
	if (*p == '}')
		return true;
	for (;;)
	{
		const char *k = p;
		const char *e;

		if (*p != '"' || (e = scan_string(p)) == NULL || idx->n == MAPROW_MAX)
			return false;
		idx->key[idx->n] = k + 1;
		idx->keylen[idx->n] = (int) (e - k - 2);
		p = skip_ws(e);
		if (*p != ':')
			return false;
		p = skip_ws(p + 1);
		if ((e = scan_value(p)) == NULL)
			return false;
		idx->val[idx->n] = p;
		idx->vallen[idx->n] = (int) (e - p);
		idx->n++;
		p = skip_ws(e);
		if (*p == '}')
			return true;
		if (*p != ',')
			return false;
		p = skip_ws(p + 1);
	}
}

/*
 * Index the members of a JSON object without building a tree: of the
 * object itself, or (member given) of its member object `member`, as in
 * the generic body {"order_ref": ..., "order": {...}}.  Values stay raw;
 * a lookup decodes the one it needs.  False when the text is not such an
 * object; the caller then falls back to the full parser.
 */
bool
shipsync_row_index(const char *json, const char *member, MapRowIndex *idx)
{
	MapRowIndex top;

	if (member == NULL)
		return index_object(json, idx);
	if (!index_object(json, &top))
		return false;
	for (int i = 0; i < top.n; i++)
		if (top.keylen[i] == (int) strlen(member) &&
			memcmp(top.key[i], member, top.keylen[i]) == 0)
			return index_object(top.val[i], idx);
	idx->n = 0;
	return true;
}

/* Decode a JSON string's contents (between the quotes) into a new string */
static char *
unescape_json(const char *p, int len)
{
	Buf			b = {0};
	const char *end = p + len;

	buf_need(&b, len);
	while (p < end)
	{
		const char *run = p;

		while (p < end && *p != '\\')
			p++;
		if (p > run)
			buf_add(&b, run, p - run);
		if (p >= end)
			break;
		p++;
		if (p >= end)
			break;
		switch (*p)
		{
			case 'n':
				buf_char(&b, '\n');
				break;
			case 't':
				buf_char(&b, '\t');
				break;
			case 'r':
				buf_char(&b, '\r');
				break;
			case 'b':
				buf_char(&b, '\b');
				break;
			case 'f':
				buf_char(&b, '\f');
				break;
			case 'u':
				{
					unsigned	cp = 0;
					int			k;

					for (k = 1; k <= 4 && p + k < end && isxdigit((unsigned char) p[k]); k++)
						cp = cp * 16 + (unsigned) (isdigit((unsigned char) p[k]) ? p[k] - '0' :
												   (tolower((unsigned char) p[k]) - 'a' + 10));
					if (k != 5)
						goto bad;
					p += 4;
					if (cp >= 0xD800 && cp <= 0xDBFF && p + 6 < end && p[1] == '\\' && p[2] == 'u')
					{
						unsigned	lo = 0;

						for (k = 3; k <= 6 && isxdigit((unsigned char) p[k]); k++)
							lo = lo * 16 + (unsigned) (isdigit((unsigned char) p[k]) ? p[k] - '0' :
													   (tolower((unsigned char) p[k]) - 'a' + 10));
						if (k == 7 && lo >= 0xDC00 && lo <= 0xDFFF)
						{
							cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
							p += 6;
						}
					}
					if (cp == 0 || (cp >= 0xD800 && cp <= 0xDFFF))
						goto bad;	/* NUL or a lone surrogate: not text */
					if (cp < 0x80)
						buf_char(&b, (char) cp);
					else if (cp < 0x800)
					{
						buf_char(&b, (char) (0xC0 | (cp >> 6)));
						buf_char(&b, (char) (0x80 | (cp & 0x3F)));
					}
					else if (cp < 0x10000)
					{
						buf_char(&b, (char) (0xE0 | (cp >> 12)));
						buf_char(&b, (char) (0x80 | ((cp >> 6) & 0x3F)));
						buf_char(&b, (char) (0x80 | (cp & 0x3F)));
					}
					else
					{
						buf_char(&b, (char) (0xF0 | (cp >> 18)));
						buf_char(&b, (char) (0x80 | ((cp >> 12) & 0x3F)));
						buf_char(&b, (char) (0x80 | ((cp >> 6) & 0x3F)));
						buf_char(&b, (char) (0x80 | (cp & 0x3F)));
					}
				}
				break;
			default:
				buf_char(&b, *p);	/* \" \\ \/ */
				break;
		}
		p++;
	}
	return buf_take(&b);
bad:
	free(b.data);
	return NULL;
}

/*
 * Whether the key of member i of a scanned row is name: compared as it is,
 * or decoded when it holds an escape (a column named full"name or back\slash
 * is "full\"name" and "back\\slash" in JSON)
 */
static bool
flat_key_is(const MapRowIndex *idx, int i, const char *name, size_t nl)
{
	char	   *key;
	bool		same;

	if (memchr(idx->key[i], '\\', idx->keylen[i]) == NULL)
		return idx->keylen[i] == (int) nl && memcmp(idx->key[i], name, nl) == 0;
	key = unescape_json(idx->key[i], idx->keylen[i]);
	same = key != NULL && strcmp(key, name) == 0;
	free(key);
	return same;
}

/* The value of column `name` in a scanned row, typed like json_to_value() */
static void
flat_value(const MapRowIndex *idx, const char *name, MapValue *v)
{
	size_t		nl = strlen(name);

	v->type = MV_NULL;
	v->s = NULL;
	for (int i = 0; i < idx->n; i++)
	{
		const char *val;
		int			len;

		if (!flat_key_is(idx, i, name, nl))
			continue;
		val = idx->val[i];
		len = idx->vallen[i];
		if (*val == '"')
		{
			v->s = unescape_json(val + 1, len - 2);
			v->type = v->s ? MV_STRING : MV_NULL;
		}
		else if (len == 4 && memcmp(val, "null", 4) == 0)
			return;
		else if ((len == 4 && memcmp(val, "true", 4) == 0) ||
				 (len == 5 && memcmp(val, "false", 5) == 0))
		{
			v->type = MV_BOOL;
			v->s = xstrndup(val, len);
		}
		else if (*val == '{' || *val == '[')
		{
			v->type = MV_RAW;
			v->s = xstrndup(val, len);
		}
		else
		{
			v->s = xstrndup(val, len);
			v->type = is_json_number(v->s) ? MV_NUMBER : MV_STRING;
		}
		return;
	}
}

/* ---------- paths ---------- */

static bool
path_name_char(unsigned char c)
{
	/* letters, digits, _ - $ @ and any non-ASCII byte (names in Chinese) */
	return isalnum(c) || c == '_' || c == '-' || c == '$' || c == '@' || c >= 0x80;
}

void
shipsync_path_free(MapPath *p)
{
	if (p == NULL || p->segs == NULL)
		return;
	for (int i = 0; i < p->nsegs; i++)
	{
		free(p->segs[i].name);
		free(p->segs[i].fkey);
		free(p->segs[i].fval);
	}
	free(p->segs);
	p->segs = NULL;
	p->nsegs = 0;
}

/*
 * One step's bracket, [k=v] or [index], into seg: p is just past the "[".
 * Returns the position past the "]", or NULL (with errbuf) when malformed.
 */
static const char *
path_parse_bracket(const char *text, const char *p, MapSeg *seg,
				   char *errbuf, size_t errlen)
{
	const char *k = p;

	if (isdigit((unsigned char) *p))
	{
		long		idx = 0;

		while (isdigit((unsigned char) *p))
		{
			idx = idx * 10 + (*p - '0');
			if (idx > 10000)
			{
				set_err(errbuf, errlen, "array index too large at offset %d", (int) (k - text));
				return NULL;
			}
			p++;
		}
		seg->kind = MAPSEG_INDEX;
		seg->index = (int) idx;
	}
	else
	{
		while (*p && path_name_char((unsigned char) *p))
			p++;
		if (p == k || *p != '=')
		{
			set_err(errbuf, errlen, "expected [key=value] or [index] at offset %d", (int) (k - 1 - text));
			return NULL;
		}
		seg->kind = MAPSEG_FILTER;
		seg->fkey = xstrndup(k, p - k);
		p++;
		if (*p == '"')
		{
			const char *v = ++p;

			while (*p && *p != '"')
				p++;
			if (*p != '"')
			{
				set_err(errbuf, errlen, "unterminated quoted value in a filter");
				return NULL;
			}
			seg->fval = xstrndup(v, p - v);
			seg->fval_string = true;
			p++;
		}
		else
		{
			const char *v = p;

			while (*p && *p != ']')
				p++;
			seg->fval = xstrndup(v, p - v);
			seg->fval_string = !is_json_number(seg->fval) &&
				strcmp(seg->fval, "true") != 0 && strcmp(seg->fval, "false") != 0;
		}
	}
	if (*p != ']')
	{
		set_err(errbuf, errlen, "expected ] at offset %d", (int) (p - text));
		return NULL;
	}
	p++;
	return p;
}

/*
 * A name in double quotes, p at its opening quote: any characters, a quote
 * in it doubled (as in SQL: "full""name").  Returns what follows it, with
 * the name in *name, or NULL with a message.
 */
static const char *
path_parse_quoted(const char *text, const char *p, char **name,
				  char *errbuf, size_t errlen)
{
	const char *start = p++;
	char	   *out = xcalloc(strlen(p) + 1, 1);
	size_t		n = 0;

	for (;;)
	{
		if (*p == '\0')
		{
			set_err(errbuf, errlen, "unterminated quoted name at offset %d", (int) (start - text));
			free(out);
			return NULL;
		}
		if (*p == '"' && p[1] != '"')
			break;
		if (*p == '"')
			p++;				/* a doubled quote is one */
		out[n++] = *p++;
	}
	if (n == 0)
	{
		set_err(errbuf, errlen, "empty quoted name at offset %d", (int) (start - text));
		free(out);
		return NULL;
	}
	*name = out;
	return p + 1;
}

/*
 * Parse "a.b[k=v].c[2]" into steps.  A filter value may be quoted with
 * double quotes (then it is always a string, and may hold ] . or =); so
 * may a name ("Customer Name", "full""name"), which then holds anything.
 */
bool
shipsync_path_parse(const char *text, MapPath *out, char *errbuf, size_t errlen)
{
	const char *p = text;
	int			cap = 4;

	out->nsegs = 0;
	out->segs = NULL;
	if (text == NULL || *text == '\0')
	{
		set_err(errbuf, errlen, "empty path");
		return false;
	}
	out->segs = xcalloc(cap, sizeof(MapSeg));
	for (;;)
	{
		MapSeg	   *seg;
		const char *start = p;

		if (out->nsegs == MAP_MAX_PATH)
		{
			set_err(errbuf, errlen, "path has more than %d steps", MAP_MAX_PATH);
			goto fail;
		}
		if (out->nsegs == cap)
		{
			cap *= 2;
			out->segs = realloc(out->segs, sizeof(MapSeg) * cap);
			if (out->segs == NULL)
				shipsync_out_of_memory();
		}
		seg = &out->segs[out->nsegs];
		memset(seg, 0, sizeof(*seg));
		if (*p == '"')
		{
			p = path_parse_quoted(text, p, &seg->name, errbuf, errlen);
			if (p == NULL)
				goto fail;
		}
		else
		{
			while (*p && path_name_char((unsigned char) *p))
				p++;
			if (p == start)
			{
				set_err(errbuf, errlen, "expected a name at offset %d", (int) (start - text));
				goto fail;
			}
			seg->name = xstrndup(start, p - start);
		}
		out->nsegs++;
		if (*p == '[')
		{
			p = path_parse_bracket(text, p + 1, seg, errbuf, errlen);
			if (p == NULL)
				goto fail;
		}
		if (*p == '\0')
			return true;
		if (*p != '.')
		{
			set_err(errbuf, errlen, "unexpected character at offset %d", (int) (p - text));
			goto fail;
		}
		p++;
	}
fail:
	shipsync_path_free(out);
	return false;
}

/* ---------- the output tree ---------- */

typedef enum NodeType
{
	N_OBJ,
	N_ARR,
	N_VALUE
} NodeType;

typedef struct Node
{
	NodeType	type;
	const char *key;			/* member name: borrowed from the compiled map */
	MapValue	v;				/* N_VALUE */
	struct Node *child;
	struct Node *last;
	struct Node *next;
} Node;

static Node *
node_new(NodeType t, const char *key)
{
	Node	   *n = xcalloc(1, sizeof(Node));

	n->type = t;
	n->key = key;
	return n;
}

static void
node_free(Node *n)
{
	while (n)
	{
		Node	   *next = n->next;

		node_free(n->child);
		shipsync_value_free(&n->v);
		free(n);
		n = next;
	}
}

static void
node_append(Node *parent, Node *c)
{
	if (parent->last)
		parent->last->next = c;
	else
		parent->child = c;
	parent->last = c;
}

static Node *
node_member(Node *obj, const char *key)
{
	for (Node *c = obj->child; c; c = c->next)
		if (c->key && strcmp(c->key, key) == 0)
			return c;
	return NULL;
}

static bool
node_matches(Node *elem, const MapSeg *seg)
{
	Node	   *m;

	if (elem->type != N_OBJ)
		return false;
	m = node_member(elem, seg->fkey);
	if (m == NULL || m->type != N_VALUE || m->v.s == NULL)
		return false;
	return strcmp(m->v.s, seg->fval) == 0;
}

/* Move v into the value node n (whose old value is freed) */
static void
tree_put(Node *n, MapValue *v)
{
	shipsync_value_free(&n->v);
	n->v = *v;
	v->s = NULL;
	v->type = MV_NULL;
}

/*
 * The element of array m that step seg names: the one matching its [k=v]
 * filter, made with that member when there is none, or the one at its
 * index, padded with nulls up to it.  NULL, with the reason in errbuf, when
 * a filter is the path's last step.
 */
static Node *
tree_element(Node *m, const MapSeg *seg, bool last, char *errbuf, size_t errlen,
			 const char *target)
{
	Node	   *elem = NULL;
	int			k = 0;

	if (seg->kind == MAPSEG_FILTER)
	{
		Node	   *key;

		for (Node *c = m->child; c; c = c->next)
			if (node_matches(c, seg))
				return c;
		if (last)
		{
			set_err(errbuf, errlen, "target \"%s\" ends in a filter: name a member after it", target);
			return NULL;
		}
		elem = node_new(N_OBJ, NULL);
		key = node_new(N_VALUE, seg->fkey);
		value_set(&key->v, seg->fval_string ? MV_STRING :
				  (strcmp(seg->fval, "true") == 0 || strcmp(seg->fval, "false") == 0) ?
				  MV_BOOL : MV_NUMBER, seg->fval);
		node_append(elem, key);
		node_append(m, elem);
		return elem;
	}
	for (Node *c = m->child; c; c = c->next, k++)
		if (k == seg->index)
			return c;
	/* pad with nulls up to the index */
	while (elem == NULL)
	{
		Node	   *c = node_new(last ? N_VALUE : N_OBJ, NULL);

		node_append(m, c);
		if (k++ == seg->index)
			elem = c;
		else if (c->type == N_OBJ)
			c->type = N_VALUE;	/* a null placeholder */
	}
	return elem;
}

/*
 * One array step of tree_set(): the element seg names in the array member
 * of node, made as needed; the value goes there when it is the last step.
 * Returns the node to go on from (the element), or NULL with the reason in
 * errbuf.
 */
static Node *
tree_array_step(Node *node, Node *m, const MapSeg *seg, bool last, MapValue *v,
				char *errbuf, size_t errlen, const char *target)
{
	Node	   *elem;

	if (m == NULL)
	{
		m = node_new(N_ARR, seg->name);
		node_append(node, m);
	}
	else if (m->type != N_ARR)
	{
		set_err(errbuf, errlen, "target \"%s\" uses \"%s\" as an array, which another rule made something else",
				target, seg->name);
		return NULL;
	}
	elem = tree_element(m, seg, last, errbuf, errlen, target);
	if (elem == NULL)
		return NULL;
	if (last)
	{
		if (elem->type != N_VALUE)
		{
			set_err(errbuf, errlen, "target \"%s\" is also an object of another rule", target);
			return NULL;
		}
		tree_put(elem, v);
		return elem;
	}
	if (elem->type != N_OBJ)
	{
		if (elem->type == N_VALUE && elem->v.type == MV_NULL && elem->child == NULL)
			elem->type = N_OBJ;
		else
		{
			set_err(errbuf, errlen, "target \"%s\" goes through an element that another rule made a value", target);
			return NULL;
		}
	}
	return elem;
}

/*
 * One plain step of tree_set(): member seg->name of node, an object to go
 * through or, at the last step, the value's place.  Returns the node to go
 * on from, or NULL with the reason in errbuf.
 */
static Node *
tree_plain_step(Node *node, Node *m, const MapSeg *seg, bool last, MapValue *v,
				char *errbuf, size_t errlen, const char *target)
{
	if (last)
	{
		if (m && m->type != N_VALUE)
		{
			set_err(errbuf, errlen, "target \"%s\" is also an object or array of another rule", target);
			return NULL;
		}
		if (m == NULL)
		{
			m = node_new(N_VALUE, seg->name);
			node_append(node, m);
		}
		tree_put(m, v);
		return m;
	}
	if (m == NULL)
	{
		m = node_new(N_OBJ, seg->name);
		node_append(node, m);
	}
	else if (m->type != N_OBJ)
	{
		set_err(errbuf, errlen, "target \"%s\" goes through \"%s\", which another rule made a value or an array",
				target, seg->name);
		return NULL;
	}
	return m;
}

/*
 * Put v at path in the tree of root, making the objects and arrays on the
 * way; v is moved (left MV_NULL).  false, with the reason in errbuf, when
 * the path collides with what another rule made.
 */
static bool
tree_set(Node *root, const MapPath *path, MapValue *v, char *errbuf, size_t errlen,
		 const char *target)
{
	Node	   *node = root;

	for (int i = 0; i < path->nsegs && node != NULL; i++)
	{
		const MapSeg *seg = &path->segs[i];
		bool		last = i == path->nsegs - 1;
		Node	   *m = node_member(node, seg->name);

		if (seg->kind == MAPSEG_PLAIN)
			node = tree_plain_step(node, m, seg, last, v, errbuf, errlen, target);
		else
			node = tree_array_step(node, m, seg, last, v, errbuf, errlen, target);
	}
	return node != NULL;
}

static void
json_escape(Buf *b, const char *s)
{
	buf_char(b, '"');
	for (const unsigned char *p = (const unsigned char *) s; *p; p++)
	{
		const unsigned char *run = p;

		/* copy a run of characters that need no escaping at once */
		while (*p >= 0x20 && *p != '"' && *p != '\\')
			p++;
		if (p > run)
			buf_add(b, (const char *) run, p - run);
		if (*p == '\0')
			break;
		switch (*p)
		{
			case '"':
				buf_str(b, "\\\"");
				break;
			case '\\':
				buf_str(b, "\\\\");
				break;
			case '\n':
				buf_str(b, "\\n");
				break;
			case '\r':
				buf_str(b, "\\r");
				break;
			case '\t':
				buf_str(b, "\\t");
				break;
			case '\b':
				buf_str(b, "\\b");
				break;
			case '\f':
				buf_str(b, "\\f");
				break;
			default:
				if (*p < 0x20)
				{
					char		u[8];

					snprintf(u, sizeof(u), "\\u%04x", *p);
					buf_str(b, u);
				}
				else
					buf_char(b, (char) *p);
		}
	}
	buf_char(b, '"');
}

static void
value_print(Buf *b, const MapValue *v)
{
	switch (v->type)
	{
		case MV_NULL:
			buf_str(b, "null");
			break;
		case MV_STRING:
			json_escape(b, v->s);
			break;
		case MV_NUMBER:
		case MV_BOOL:
		case MV_RAW:
			buf_str(b, v->s);
			break;
	}
}

static void
node_print(Buf *b, const Node *n)
{
	if (n->type == N_VALUE)
	{
		value_print(b, &n->v);
		return;
	}
	buf_char(b, n->type == N_OBJ ? '{' : '[');
	for (const Node *c = n->child; c; c = c->next)
	{
		if (c != n->child)
			buf_char(b, ',');
		if (n->type == N_OBJ)
		{
			json_escape(b, c->key);
			buf_char(b, ':');
		}
		node_print(b, c);
	}
	buf_char(b, n->type == N_OBJ ? '}' : ']');
}

/* Top-level members as a form: name=value&..., nested values as JSON */
static void
node_print_form(Buf *b, const Node *root)
{
	for (const Node *c = root->child; c; c = c->next)
	{
		char	   *k = shipsync_urlencode_form(c->key);
		char	   *v;

		if (c != root->child)
			buf_char(b, '&');
		buf_str(b, k);
		buf_char(b, '=');
		if (c->type == N_VALUE && c->v.type != MV_RAW && c->v.type != MV_NULL)
			v = shipsync_urlencode_form(c->v.s);
		else
		{
			Buf			j = {0};

			node_print(&j, c);
			v = shipsync_urlencode_form(j.data);
			free(j.data);
		}
		buf_str(b, v);
		free(k);
		free(v);
	}
}

/* ---------- transforms ---------- */

static bool
is_space_at(const unsigned char *p, size_t *len)
{
	if (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '\f' || *p == '\v')
	{
		*len = 1;
		return true;
	}
	/* U+3000 IDEOGRAPHIC SPACE and U+00A0 NO-BREAK SPACE, common in CRM data */
	if (p[0] == 0xE3 && p[1] == 0x80 && p[2] == 0x80)
	{
		*len = 3;
		return true;
	}
	if (p[0] == 0xC2 && p[1] == 0xA0)
	{
		*len = 2;
		return true;
	}
	return false;
}

static char *trim_text(const char *s);

static bool is_space_at(const unsigned char *p, size_t *len);

/*
 * trim_text() without a copy: the spaces around s, ASCII and those CRM
 * data carries (U+3000, U+00A0), taken off in place.
 */
void
shipsync_trim_in_place(char *s)
{
	const unsigned char *p = (const unsigned char *) s;
	const unsigned char *start;
	const unsigned char *end;
	size_t		l;

	while (*p && is_space_at(p, &l))
		p += l;
	start = end = p;
	while (*p)
	{
		if (is_space_at(p, &l))
			p += l;
		else
		{
			p++;
			while ((*p & 0xC0) == 0x80)
				p++;
			end = p;
		}
	}
	memmove(s, start, end - start);
	s[end - start] = '\0';
}

static char *
trim_text(const char *s)
{
	const unsigned char *p = (const unsigned char *) s;
	const unsigned char *end;
	size_t		l;

	while (*p && is_space_at(p, &l))
		p += l;
	end = p;
	for (const unsigned char *q = p; *q;)
	{
		if (is_space_at(q, &l))
			q += l;
		else
		{
			q++;
			/* skip continuation bytes of a multibyte character */
			while ((*q & 0xC0) == 0x80)
				q++;
			end = q;
		}
	}
	return xstrndup((const char *) p, end - p);
}

/*
 * A decimal written by a person ("+1,234.50 ", "007", ".5") as a JSON
 * number ("1234.50", "7", "0.5"); NULL when it is not one.
 */
static char *
normalize_number(const char *in)
{
	char	   *t = trim_text(in);
	const char *p = t;
	Buf			b = {0};
	bool		digits = false;

	if (*p == '+')
		p++;
	else if (*p == '-')
	{
		buf_char(&b, '-');
		p++;
	}
	while (*p == '0' && isdigit((unsigned char) p[1]))
		p++;
	if (*p == '.')
		buf_char(&b, '0');
	while (isdigit((unsigned char) *p) || (*p == ',' && isdigit((unsigned char) p[1]) && digits))
	{
		if (*p != ',')
		{
			buf_char(&b, *p);
			digits = true;
		}
		p++;
	}
	if (*p == '.' && isdigit((unsigned char) p[1]))
	{
		buf_char(&b, '.');
		p++;
		while (isdigit((unsigned char) *p))
		{
			buf_char(&b, *p++);
			digits = true;
		}
	}
	if (digits && (*p == 'e' || *p == 'E'))
	{
		const char *e = p;

		buf_char(&b, 'e');
		p++;
		if (*p == '+' || *p == '-')
			buf_char(&b, *p++);
		if (!isdigit((unsigned char) *p))
			p = e - 1;			/* not an exponent: fail below */
		while (isdigit((unsigned char) *p))
			buf_char(&b, *p++);
	}
	if (!digits || *p != '\0' || b.data == NULL || !is_json_number(b.data) ||
		strcmp(b.data, "-0") == 0)
	{
		bool		zero = digits && *p == '\0' && b.data && strcmp(b.data, "-0") == 0;

		free(t);
		free(b.data);
		return zero ? xstrdup("0") : NULL;
	}
	free(t);
	return b.data;
}

/* grams per unit */
static double
unit_grams(const char *u)
{
	static const struct
	{
		const char *name;
		double		grams;
	}			units[] = {
		{"mg", 0.001}, {"g", 1.0}, {"kg", 1000.0}, {"t", 1000000.0},
		{"oz", 28.349523125}, {"lb", 453.59237}, {"jin", 500.0},
		{NULL, 0}
	};

	for (int i = 0; units[i].name; i++)
		if (strcmp(units[i].name, u) == 0)
			return units[i].grams;
	return 0;
}

/* A double as the shortest decimal with at most `scale` fraction digits */
static char *
format_decimal(double x, int scale)
{
	char		s[64];
	char	   *dot;

	snprintf(s, sizeof(s), "%.*f", scale, x);
	dot = strchr(s, '.');
	if (dot)
	{
		char	   *e = s + strlen(s) - 1;

		while (e > dot && *e == '0')
			*e-- = '\0';
		if (e == dot)
			*e = '\0';
	}
	if (strcmp(s, "-0") == 0)
		strcpy(s, "0");
	return xstrdup(s);
}

/* Days from 1970-01-01 of a proleptic Gregorian date */
static int64_t
days_from_civil(int64_t y, unsigned m, unsigned d)
{
	int64_t		era;
	unsigned	yoe,
				doy,
				doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = (unsigned) (y - era * 400);
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t) doe - 719468;
}

static bool
parse_fixed_offset(const char *z, int *off)
{
	int			h,
				m = 0;
	char		sign;

	if (strcmp(z, "UTC") == 0 || strcmp(z, "Z") == 0 || strcmp(z, "GMT") == 0)
	{
		*off = 0;
		return true;
	}
	sign = z[0];
	if (sign != '+' && sign != '-')
		return false;
	if (!isdigit((unsigned char) z[1]) || !isdigit((unsigned char) z[2]))
		return false;
	h = (z[1] - '0') * 10 + (z[2] - '0');
	z += 3;
	if (*z == ':')
		z++;
	if (*z)
	{
		if (!isdigit((unsigned char) z[0]) || !isdigit((unsigned char) z[1]) || z[2] != '\0')
			return false;
		m = (z[0] - '0') * 10 + (z[1] - '0');
	}
	if (h > 15 || m > 59)
		return false;
	*off = (sign == '-' ? -1 : 1) * (h * 3600 + m * 60);
	return true;
}

static bool
zone_offset(const char *zone, int64_t utc, const MapEnv *env, int *off)
{
	if (zone == NULL || *zone == '\0')
	{
		*off = 0;
		return true;
	}
	if (parse_fixed_offset(zone, off))
		return true;
	if (env && env->tz_offset)
		return env->tz_offset(zone, utc, off, env->tz_arg);
	return false;
}

/*
 * Read an ISO 8601 timestamp as PostgreSQL prints it in JSON
 * ("2026-11-27T16:21:07.123+08:00", "2026-11-27T08:21:07", "2026-11-27")
 * into seconds since the epoch.  *has_zone says whether it carried an
 * offset; without one, the local time is returned as if it were UTC.
 */
static bool
parse_iso(const char *s, int64_t *epoch, bool *has_zone)
{
	int			y,
				mo,
				d,
				h = 0,
				mi = 0,
				sec = 0,
				n = 0;
	const char *p;
	int			off = 0;

	*has_zone = false;
	if (sscanf(s, "%4d-%2d-%2d%n", &y, &mo, &d, &n) != 3 || n != 10)
		return false;
	p = s + n;
	if (*p == 'T' || *p == ' ')
	{
		int			m = 0;

		if (sscanf(p + 1, "%2d:%2d:%2d%n", &h, &mi, &sec, &m) != 3 || m != 8)
			return false;
		p += 1 + m;
		if (*p == '.')
		{
			p++;
			while (isdigit((unsigned char) *p))
				p++;
		}
		if (*p)
		{
			char		z[16];

			if (strlen(p) >= sizeof(z))
				return false;
			/* PostgreSQL prints +08 without minutes */
			strcpy(z, p);
			if (!parse_fixed_offset(z, &off))
				return false;
			*has_zone = true;
		}
	}
	else if (*p)
		return false;
	if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
		return false;
	*epoch = days_from_civil(y, (unsigned) mo, (unsigned) d) * 86400 + h * 3600 + mi * 60 + sec - off;
	return true;
}

static bool
format_epoch(int64_t local, const char *fmt, char **out)
{
	struct tm	tm;
	time_t		t = (time_t) local;
	char		buf[256];
	size_t		n;

	if (gmtime_r(&t, &tm) == NULL)
		return false;
	n = strftime(buf, sizeof(buf), fmt, &tm);
	if (n == 0 && *fmt)
		return false;
	*out = xstrndup(buf, n);
	return true;
}

/* Chinese mainland numbers, the usual case, need no argument */
static bool
normalize_phone(const char *in, const char *country, const char *style, char **out,
				char *errbuf, size_t errlen)
{
	Buf			d = {0};
	bool		plus = false;
	const char *p = in;
	size_t		cc = strlen(country);

	while (*p == ' ' || *p == '\t')
		p++;
	if (*p == '+')
	{
		plus = true;
		p++;
	}
	for (; *p; p++)
	{
		if (isdigit((unsigned char) *p))
			buf_char(&d, *p);
		else if (*p == ' ' || *p == '-' || *p == '(' || *p == ')' || *p == '.' || *p == '/')
			continue;
		else
		{
			free(d.data);
			set_err(errbuf, errlen, "not a phone number");
			return false;
		}
	}
	if (d.data == NULL)
	{
		set_err(errbuf, errlen, "not a phone number");
		return false;
	}
	{
		char	   *digits = d.data;
		char	   *national;

		if (!plus && strncmp(digits, "00", 2) == 0)
		{
			plus = true;
			digits += 2;
		}
		if (plus)
		{
			if (strncmp(digits, country, cc) == 0)
				national = digits + cc;
			else
				national = NULL;	/* another country: keep it international */
		}
		else
		{
			national = digits;
			/* a trunk prefix 0 before a national number (0755 1234567) stays */
		}
		if (strlen(digits) < 5 || strlen(digits) > 15)
		{
			free(d.data);
			set_err(errbuf, errlen, "a phone number has 5 to 15 digits");
			return false;
		}
		if (strcmp(style, "e164") == 0 || national == NULL)
		{
			Buf			o = {0};

			buf_char(&o, '+');
			if (national != NULL)
			{
				buf_str(&o, country);
				buf_str(&o, national[0] == '0' ? national + 1 : national);
			}
			else
				buf_str(&o, digits);
			*out = o.data;
		}
		else
			*out = xstrdup(national);
		free(d.data);
	}
	return true;
}

/*
 * The transforms.  Each takes a non-null value that is not an object or
 * array (except identity, default and concat, which see every value and
 * say so in the table below) and sets out; false, with the reason in
 * errbuf, when the value cannot be read.
 */
typedef bool (*MapXfFn) (const char *arg, const MapValue *in, const MapEnv *env,
						 MapValue *out, char *errbuf, size_t errlen);

static bool
xf_identity(const char *arg, const MapValue *in, const MapEnv *env,
			MapValue *out, char *errbuf, size_t errlen)
{
	if (in->type != MV_NULL)
		value_set(out, in->type, in->s);
	return true;
}

static bool
xf_default(const char *arg, const MapValue *in, const MapEnv *env,
		   MapValue *out, char *errbuf, size_t errlen)
{
	if (in->type != MV_NULL && !(in->type == MV_STRING && in->s[0] == '\0'))
		value_set(out, in->type, in->s);
	else
		(void) shipsync_json_arg_lookup(arg, NULL, out, NULL);
	return true;
}

/* the template was expanded by the caller: see rule_value() */
static bool
xf_concat(const char *arg, const MapValue *in, const MapEnv *env,
		  MapValue *out, char *errbuf, size_t errlen)
{
	if (in->type != MV_NULL)
		value_set(out, MV_STRING, in->s);
	return true;
}

static bool
xf_trim(const char *arg, const MapValue *in, const MapEnv *env,
		MapValue *out, char *errbuf, size_t errlen)
{
	out->type = MV_STRING;
	out->s = trim_text(in->s);
	return true;
}

/* ASCII letters only: other scripts have no case to change here */
static bool
xf_case(const MapValue *in, MapValue *out, bool up)
{
	value_set(out, MV_STRING, in->s);
	for (char *p = out->s; *p; p++)
		if ((unsigned char) *p < 0x80)
			*p = (char) (up ? toupper((unsigned char) *p) : tolower((unsigned char) *p));
	return true;
}

static bool
xf_upper(const char *arg, const MapValue *in, const MapEnv *env,
		 MapValue *out, char *errbuf, size_t errlen)
{
	return xf_case(in, out, true);
}

static bool
xf_lower(const char *arg, const MapValue *in, const MapEnv *env,
		 MapValue *out, char *errbuf, size_t errlen)
{
	return xf_case(in, out, false);
}

static bool
xf_to_number(const char *arg, const MapValue *in, const MapEnv *env,
			 MapValue *out, char *errbuf, size_t errlen)
{
	char	   *n = normalize_number(in->s);

	if (n == NULL)
	{
		set_err(errbuf, errlen, "not a number");
		return false;
	}
	out->type = MV_NUMBER;
	out->s = n;
	return true;
}

static bool
xf_lookup(const char *arg, const MapValue *in, const MapEnv *env,
		  MapValue *out, char *errbuf, size_t errlen)
{
	bool		found = false;

	if (!shipsync_json_arg_lookup(arg, in->s, out, &found) || !found)
	{
		shipsync_value_free(out);
		set_err(errbuf, errlen, "value is not in the lookup table");
		return false;
	}
	return true;
}

/* a number in unit "from" (g, kg, lb, ...) to unit "to", "scale" decimals */
static bool
xf_unit(const char *arg, const MapValue *in, const MapEnv *env,
		MapValue *out, char *errbuf, size_t errlen)
{
	char	   *from = NULL,
			   *to = NULL,
			   *scale = NULL,
			   *n = NULL;
	double		gf,
				gt,
				x;
	int			sc = 3;
	bool		ok = false;

	if (!shipsync_json_arg_string(arg, "from", &from) ||
		!shipsync_json_arg_string(arg, "to", &to))
		set_err(errbuf, errlen, "unit needs \"from\" and \"to\"");
	else if ((n = normalize_number(in->s)) == NULL)
		set_err(errbuf, errlen, "not a number");
	else if ((gf = unit_grams(from)) <= 0 || (gt = unit_grams(to)) <= 0)
		set_err(errbuf, errlen, "unknown unit");
	else
	{
		if (shipsync_json_arg_string(arg, "scale", &scale))
			sc = atoi(scale);
		if (sc < 0 || sc > 9)
			sc = 3;
		errno = 0;
		x = strtod(n, NULL) * gf / gt;
		if (errno == 0 && isfinite(x) && fabs(x) < 1e15)
		{
			out->type = MV_NUMBER;
			out->s = format_decimal(x, sc);
			ok = true;
		}
		else
			set_err(errbuf, errlen, "out of range");
	}
	free(n);
	free(from);
	free(to);
	free(scale);
	return ok;
}

/* ISO 8601 in, the local time of zone "tz" in "format" out */
static bool
xf_timestamp(const char *arg, const MapValue *in, const MapEnv *env,
			 MapValue *out, char *errbuf, size_t errlen)
{
	char	   *fmt = NULL,
			   *tz = NULL;
	int64_t		epoch;
	bool		has_zone;
	int			off = 0;
	bool		ok = false;

	if (!shipsync_json_arg_string(arg, "format", &fmt))
		fmt = xstrdup("%Y-%m-%d %H:%M:%S");
	(void) shipsync_json_arg_string(arg, "tz", &tz);
	if (!parse_iso(in->s, &epoch, &has_zone))
		set_err(errbuf, errlen, "not an ISO 8601 timestamp");
	else if (has_zone && !zone_offset(tz, epoch, env, &off))
		set_err(errbuf, errlen, "unknown time zone");
	else if (!format_epoch(epoch + (has_zone ? off : 0), fmt, &out->s))
		set_err(errbuf, errlen, "cannot format the timestamp");
	else
	{
		out->type = MV_STRING;
		ok = true;
	}
	free(fmt);
	free(tz);
	return ok;
}

/* a local time in "format" of zone "tz" in, ISO 8601 UTC out */
static bool
xf_parse_time(const char *arg, const MapValue *in, const MapEnv *env,
			  MapValue *out, char *errbuf, size_t errlen)
{
	char	   *fmt = NULL,
			   *tz = NULL;
	struct tm	tm;
	const char *end;
	int64_t		local;
	int			off = 0;
	bool		ok = false;

	if (!shipsync_json_arg_string(arg, "format", &fmt))
		fmt = xstrdup("%Y-%m-%d %H:%M:%S");
	(void) shipsync_json_arg_string(arg, "tz", &tz);
	memset(&tm, 0, sizeof(tm));
	end = strptime(in->s, fmt, &tm);
	if (end == NULL || *end != '\0' || tm.tm_year < -1900 + 1 || tm.tm_year > 9999 - 1900)
		set_err(errbuf, errlen, "does not match the time format");
	else
	{
		local = days_from_civil(tm.tm_year + 1900, (unsigned) tm.tm_mon + 1,
								(unsigned) tm.tm_mday) * 86400 +
			tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec;
		/* the offset at the local time, checked once more after applying it */
		if (!zone_offset(tz, local, env, &off) ||
			!zone_offset(tz, local - off, env, &off))
			set_err(errbuf, errlen, "unknown time zone");
		else if (!format_epoch(local - off, "%Y-%m-%dT%H:%M:%SZ", &out->s))
			set_err(errbuf, errlen, "cannot format the timestamp");
		else
		{
			out->type = MV_STRING;
			ok = true;
		}
	}
	free(fmt);
	free(tz);
	return ok;
}

static bool
xf_phone(const char *arg, const MapValue *in, const MapEnv *env,
		 MapValue *out, char *errbuf, size_t errlen)
{
	char	   *country = NULL,
			   *style = NULL;
	bool		ok;

	if (!shipsync_json_arg_string(arg, "country", &country))
		country = xstrdup("86");
	if (!shipsync_json_arg_string(arg, "format", &style))
		style = xstrdup("national");
	ok = normalize_phone(in->s, country, style, &out->s, errbuf, errlen);
	if (ok)
		out->type = MV_STRING;
	free(country);
	free(style);
	return ok;
}

/* indexed by MapXf: a transform's name, whether it sees nulls, its code */
static const struct
{
	const char *name;
	bool		sees_null;
	MapXfFn		fn;
}			map_transforms[] =
{
	[XF_IDENTITY] = {"identity", true, xf_identity},
	[XF_TRIM] = {"trim", false, xf_trim},
	[XF_UPPER] = {"upper", false, xf_upper},
	[XF_LOWER] = {"lower", false, xf_lower},
	[XF_CONCAT] = {"concat", true, xf_concat},
	[XF_DEFAULT] = {"default", true, xf_default},
	[XF_LOOKUP] = {"lookup", false, xf_lookup},
	[XF_TO_NUMBER] = {"to_number", false, xf_to_number},
	[XF_UNIT] = {"unit", false, xf_unit},
	[XF_TIMESTAMP] = {"timestamp", false, xf_timestamp},
	[XF_PARSE_TIME] = {"parse_time", false, xf_parse_time},
	[XF_PHONE] = {"phone", false, xf_phone},
};

/* The transform of that name (NULL or empty: identity); false if unknown */
static bool
map_xf_by_name(const char *name, MapXf *xf)
{
	if (name == NULL || *name == '\0')
	{
		*xf = XF_IDENTITY;
		return true;
	}
	for (size_t k = 0; k < sizeof(map_transforms) / sizeof(map_transforms[0]); k++)
		if (strcmp(map_transforms[k].name, name) == 0)
		{
			*xf = (MapXf) k;
			return true;
		}
	return false;
}

/* Apply transform xf: the common rules for nulls and documents, then its code */
static bool
map_apply_xf(MapXf xf, const char *arg, const MapValue *in, const MapEnv *env,
			 MapValue *out, char *errbuf, size_t errlen)
{
	out->type = MV_NULL;
	out->s = NULL;
	if (!map_transforms[xf].sees_null)
	{
		if (in->type == MV_NULL)
			return true;
		if (in->type == MV_RAW)
		{
			set_err(errbuf, errlen, "an object or array cannot be transformed by %s",
					map_transforms[xf].name);
			return false;
		}
	}
	return map_transforms[xf].fn(arg, in, env, out, errbuf, errlen);
}

/*
 * Apply one transform, by name.  in is not changed; out is always set
 * (MV_NULL when the input is null, except for default).  Returns false,
 * with the reason in errbuf, when the value cannot be read or the
 * transform is unknown.
 */
bool
shipsync_map_transform(const char *transform, const char *arg,
					   const MapValue *in, const MapEnv *env,
					   MapValue *out, char *errbuf, size_t errlen)
{
	MapXf		xf;

	if (!map_xf_by_name(transform, &xf))
	{
		out->type = MV_NULL;
		out->s = NULL;
		set_err(errbuf, errlen, "unknown transform \"%s\"", transform);
		return false;
	}
	return map_apply_xf(xf, arg, in, env, out, errbuf, errlen);
}

/* identity and trim run per rule per order: no argument, no name lookup */
static bool
fast_transform(MapXf xf, const MapValue *in, MapValue *out)
{
	out->type = MV_NULL;
	out->s = NULL;
	if (xf != XF_IDENTITY && xf != XF_TRIM && xf != XF_TO_NUMBER)
		return false;
	if (in->type == MV_NULL)
		return true;
	if (xf == XF_IDENTITY)
	{
		value_set(out, in->type, in->s);
		return true;
	}
	if (xf == XF_TRIM && in->type != MV_RAW)
	{
		out->type = MV_STRING;
		out->s = trim_text(in->s);
		return true;
	}
	if (xf == XF_TO_NUMBER && in->type == MV_NUMBER)
	{
		value_set(out, MV_NUMBER, in->s);	/* a JSON number already */
		return true;
	}
	return false;
}

/* ---------- compiling a map ---------- */

static void
rule_clear(MapRule *r)
{
	free(r->target);
	shipsync_path_free(&r->path);
	free(r->src);
	shipsync_path_free(&r->src_path);
	free(r->transform);
	free(r->arg);
	free(r->dflt);
}

void
shipsync_map_free(ShipMap *m)
{
	if (m == NULL)
		return;
	for (int i = 0; i < m->n; i++)
		rule_clear(&m->rules[i]);
	free(m->rules);
	free(m);
}

int
shipsync_map_size(const ShipMap *m)
{
	return m ? m->n : 0;
}

/*
 * Whether an option: path names a secret of the provider (webhook secrets,
 * anything under auth, the TLS client key): those live in shipsync.secret,
 * and a field map must not copy them into a request, even by a path that
 * would find nothing.
 */
static bool
secret_option(const MapPath *path)
{
	static const char *const roots[] = {"webhook_secret", "previous_webhook_secret", "auth", NULL};
	const char *first = path->nsegs > 0 && path->segs[0].name ? path->segs[0].name : "";

	for (int i = 0; roots[i]; i++)
		if (strcmp(first, roots[i]) == 0)
			return true;
	return strcmp(first, "tls") == 0 && path->nsegs > 1 &&
		strcmp(path->segs[1].name, "client_key") == 0;
}

static bool
compile_source(MapRule *r, const char *src, char *errbuf, size_t errlen)
{
	if (src == NULL || *src == '\0')
	{
		r->src_kind = SRC_NONE;
		return true;
	}
	if (strncmp(src, "const:", 6) == 0)
	{
		r->src_kind = SRC_CONST;
		r->src = xstrdup(src + 6);
		return true;
	}
	if (strncmp(src, "option:", 7) == 0)
	{
		r->src_kind = SRC_OPTION;
		if (!shipsync_path_parse(src + 7, &r->src_path, errbuf, errlen))
			return false;
		if (secret_option(&r->src_path))
		{
			set_err(errbuf, errlen, "source \"%s\" names a secret, which never goes into a request body", src);
			return false;
		}
		return true;
	}
	if (strcmp(src, "meta:order_key") == 0)
	{
		r->src_kind = SRC_ORDER_KEY;
		return true;
	}
	if (strcmp(src, "meta:idempotency_key") == 0)
	{
		r->src_kind = SRC_IDEMPOTENCY_KEY;
		return true;
	}
	if (strncmp(src, "meta:", 5) == 0)
	{
		set_err(errbuf, errlen, "unknown source \"%s\" (meta:order_key and meta:idempotency_key exist)", src);
		return false;
	}
	/* a column, or for inbound rules a path into the response */
	r->src_kind = SRC_COLUMN;
	if (!shipsync_path_parse(src, &r->src_path, errbuf, errlen))
		return false;
	/* a column named in quotes is the name they hold */
	if (src[0] == '"' && r->src_path.nsegs == 1 &&
		r->src_path.segs[0].kind == MAPSEG_PLAIN)
		r->src = xstrdup(r->src_path.segs[0].name);
	else
		r->src = xstrdup(src);
	return true;
}

/*
 * Compile n rules.  Returns NULL with a message naming the rule when one
 * is malformed: an unknown transform, a bad path or source, an argument
 * its transform cannot use.
 */
ShipMap *
shipsync_map_compile(int n, const char *const *targets, const char *const *sources,
					 const char *const *transforms, const char *const *args,
					 const char *const *defaults, const bool *required,
					 char *errbuf, size_t errlen)
{
	ShipMap    *m = xcalloc(1, sizeof(ShipMap));

	m->rules = xcalloc(n, sizeof(MapRule));
	for (int i = 0; i < n; i++)
	{
		MapRule    *r = &m->rules[i];
		char		e[256];
		const char *xf = transforms && transforms[i] ? transforms[i] : "identity";
		bool		known = false;

		m->n = i + 1;
		r->target = xstrdup(targets[i]);
		r->transform = xstrdup(xf);
		r->arg = args && args[i] ? xstrdup(args[i]) : NULL;
		r->dflt = defaults && defaults[i] ? xstrdup(defaults[i]) : NULL;
		r->required = required ? required[i] : false;
		if (!shipsync_path_parse(targets[i], &r->path, e, sizeof(e)))
		{
			set_err(errbuf, errlen, "target path \"%s\": %s", targets[i], e);
			goto fail;
		}
		if (!compile_source(r, sources ? sources[i] : NULL, e, sizeof(e)))
		{
			set_err(errbuf, errlen, "source of \"%s\": %s", targets[i], e);
			goto fail;
		}
		known = *xf != '\0' && map_xf_by_name(xf, &r->xf);
		if (!known)
		{
			set_err(errbuf, errlen, "unknown transform \"%s\" for \"%s\"", xf, targets[i]);
			goto fail;
		}
		if (strcmp(xf, "lookup") == 0)
		{
			MapValue	probe;
			bool		found;

			if (!shipsync_json_arg_lookup(r->arg, "", &probe, &found))
			{
				set_err(errbuf, errlen, "transform lookup of \"%s\" needs a JSON object as its argument", targets[i]);
				goto fail;
			}
			shipsync_value_free(&probe);
		}
		if (strcmp(xf, "unit") == 0)
		{
			char	   *from = NULL,
					   *to = NULL;
			bool		ok = shipsync_json_arg_string(r->arg, "from", &from) &&
				shipsync_json_arg_string(r->arg, "to", &to) &&
				unit_grams(from) > 0 && unit_grams(to) > 0;

			free(from);
			free(to);
			if (!ok)
			{
				set_err(errbuf, errlen, "transform unit of \"%s\" needs {\"from\", \"to\"} among mg, g, kg, t, oz, lb, jin", targets[i]);
				goto fail;
			}
		}
		if (strcmp(xf, "concat") == 0)
		{
			char	   *tpl = NULL;

			if (!shipsync_json_arg_string(r->arg, "template", &tpl))
			{
				set_err(errbuf, errlen, "transform concat of \"%s\" needs {\"template\": \"...{column}...\"}", targets[i]);
				goto fail;
			}
			free(tpl);
		}
		if (strcmp(xf, "timestamp") == 0 || strcmp(xf, "parse_time") == 0)
		{
			char	   *tz = NULL;
			int			off;

			if (shipsync_json_arg_string(r->arg, "tz", &tz) && !parse_fixed_offset(tz, &off))
			{
				/* a named zone: checked by the caller, which knows the zones */
				for (const char *p = tz; *p; p++)
					if (!(isalnum((unsigned char) *p) || *p == '/' || *p == '_' || *p == '-' || *p == '+'))
					{
						free(tz);
						set_err(errbuf, errlen, "invalid time zone name for \"%s\"", targets[i]);
						goto fail;
					}
			}
			free(tz);
		}
	}
	return m;
fail:
	shipsync_map_free(m);
	return NULL;
}

/* ---------- rendering ---------- */

/* The raw value of a rule's source, before its transform */
static void
source_value(const MapRule *r, const MapEnv *env, MapValue *v)
{
	v->type = MV_NULL;
	v->s = NULL;
	switch (r->src_kind)
	{
		case SRC_NONE:
			break;
		case SRC_CONST:
			value_set(v, MV_STRING, r->src);
			break;
		case SRC_ORDER_KEY:
			if (env->order_key)
				value_set(v, MV_STRING, env->order_key);
			break;
		case SRC_IDEMPOTENCY_KEY:
			if (env->idempotency_key)
				value_set(v, MV_STRING, env->idempotency_key);
			break;
		case SRC_OPTION:
			if (env->options)
				(void) shipsync_json_get(env->options, &r->src_path, v);
			break;
		case SRC_COLUMN:
			if (env->flat)
				flat_value(env->flat, r->src, v);
			else if (env->row)
			{
				/* a column name is one step, whatever characters it holds */
				MapSeg		seg = {0};
				MapPath		p = {&seg, 1};

				seg.name = r->src;
				(void) shipsync_json_get(env->row, &p, v);
			}
			break;
	}
}

/*
 * The "}" that closes the part of a template opened at p ("{"), or NULL.
 * A column named in double quotes ({"Nick}name"}, a quote in it doubled)
 * may hold a "}": the one that closes the part follows its closing quote.
 */
static const char *
template_part_end(const char *p)
{
	const char *q = p + 1;

	if (*q == '"')
	{
		for (q++; *q; q++)
			if (*q == '"' && *++q != '"')
				break;
		if (*q == '\0')
			return NULL;
	}
	return strchr(q, '}');
}

/* Expand "{a} {option:b.c}" against the row; NULL when every part is null */
static char *
expand_template(const char *tpl, const MapEnv *env)
{
	Buf			b = {0};
	bool		any = false;

	for (const char *p = tpl; *p;)
	{
		if (*p == '{')
		{
			const char *e = template_part_end(p);
			MapRule		r;
			MapValue	v;
			char		err[64];
			char	   *name;

			if (e == NULL)
			{
				buf_str(&b, p);
				break;
			}
			memset(&r, 0, sizeof(r));
			name = xstrndup(p + 1, e - p - 1);
			if (compile_source(&r, name, err, sizeof(err)))
			{
				source_value(&r, env, &v);
				if (v.type != MV_NULL)
				{
					char	   *t = trim_text(v.s);

					if (*t)
						any = true;
					buf_str(&b, t);
					free(t);
				}
				shipsync_value_free(&v);
			}
			rule_clear(&r);
			free(name);
			p = e + 1;
		}
		else
			buf_char(&b, *p++);
	}
	if (!any)
	{
		free(b.data);
		return NULL;
	}
	return buf_take(&b);
}

static void
problem(Buf *errs, const char *target, const char *what)
{
	if (errs->len > 0)
		buf_str(errs, ", ");
	buf_str(errs, target);
	buf_str(errs, " (");
	buf_str(errs, what);
	buf_char(errs, ')');
}

/* A rule's final value: source, default, template, transform */
static bool
rule_value(const MapRule *r, const MapEnv *env, MapValue *out, Buf *errs)
{
	MapValue	v;
	char		e[160];

	if (r->xf == XF_CONCAT)
	{
		char	   *tpl = NULL;
		char	   *s;

		(void) shipsync_json_arg_string(r->arg, "template", &tpl);
		s = expand_template(tpl ? tpl : "", env);
		free(tpl);
		v.type = s ? MV_STRING : MV_NULL;
		v.s = s;
	}
	else
		source_value(r, env, &v);
	if ((v.type == MV_NULL || (v.type == MV_STRING && v.s[0] == '\0')) && r->dflt)
	{
		shipsync_value_free(&v);
		value_set(&v, MV_STRING, r->dflt);
	}
	e[0] = '\0';
	/* the common transforms take the value over instead of copying it */
	if (v.type == MV_NULL && (r->xf == XF_IDENTITY || r->xf == XF_TRIM || r->xf == XF_TO_NUMBER))
	{
		*out = v;
		goto got;
	}
	if (r->xf == XF_IDENTITY || (r->xf == XF_TO_NUMBER && v.type == MV_NUMBER))
	{
		*out = v;
		goto got;
	}
	if (r->xf == XF_TRIM && v.type != MV_RAW)
	{
		shipsync_trim_in_place(v.s);
		v.type = MV_STRING;
		*out = v;
		goto got;
	}
	if (!(fast_transform(r->xf, &v, out) ||
		  map_apply_xf(r->xf, r->arg, &v, env, out, e, sizeof(e))))
	{
		char		what[200];

		snprintf(what, sizeof(what), "malformed: %s", e);
		problem(errs, r->target, what);
		shipsync_value_free(&v);
		return false;
	}
	shipsync_value_free(&v);
got:
	if (out->type == MV_NULL || (out->type == MV_STRING && out->s[0] == '\0'))
	{
		if (r->required)
		{
			problem(errs, r->target, "missing");
			shipsync_value_free(out);
			return false;
		}
	}
	if (out->s && strlen(out->s) > MAP_MAX_TEXT)
	{
		problem(errs, r->target, "malformed: longer than 64 kB");
		shipsync_value_free(out);
		return false;
	}
	return true;
}

/*
 * Render one order through an outbound map: JSON (or a form) in *out,
 * malloc'd.  MAP_INVALID lists every problem field in errbuf; MAP_ERROR
 * says why the map itself cannot apply.  Optional rules whose value is
 * null are left out of the body.
 */
MapOutcome
shipsync_map_render(const ShipMap *m, const MapEnv *env, bool form, char **out,
					char *errbuf, size_t errlen)
{
	Node	   *root = node_new(N_OBJ, NULL);
	Buf			errs = {0};
	Buf			b = {0};
	bool		invalid = false;

	*out = NULL;
	for (int i = 0; i < m->n; i++)
	{
		const MapRule *r = &m->rules[i];
		MapValue	v;

		if (!rule_value(r, env, &v, &errs))
		{
			invalid = true;
			continue;
		}
		if (v.type == MV_NULL)
			continue;
		if (!tree_set(root, &r->path, &v, errbuf, errlen, r->target))
		{
			shipsync_value_free(&v);
			node_free(root);
			free(errs.data);
			return MAP_ERROR;
		}
	}
	if (invalid)
	{
		set_err(errbuf, errlen, "%s", errs.data);
		free(errs.data);
		node_free(root);
		return MAP_INVALID;
	}
	if (form)
		node_print_form(&b, root);
	else
		node_print(&b, root);
	*out = buf_take(&b);
	node_free(root);
	free(errs.data);
	return MAP_OK;
}

/*
 * Read canonical fields out of a response through an inbound map: for each
 * rule, target is the canonical field and source a path into doc.  Fields
 * and values are malloc'd arrays of *n entries; a required field that is
 * absent makes MAP_INVALID.
 */
MapOutcome
shipsync_map_read(const ShipMap *m, ShipJson *doc, const MapEnv *env,
				  char ***fields, MapValue **values, int *n,
				  char *errbuf, size_t errlen)
{
	Buf			errs = {0};
	bool		invalid = false;
	MapEnv		e = {0};

	if (env)
		e = *env;
	e.row = doc;
	*fields = xcalloc(m->n, sizeof(char *));
	*values = xcalloc(m->n, sizeof(MapValue));
	*n = 0;
	for (int i = 0; i < m->n; i++)
	{
		const MapRule *r = &m->rules[i];
		MapValue	raw = {MV_NULL, NULL};
		MapValue	v;

		if (r->src_kind == SRC_COLUMN)
			(void) shipsync_json_get(doc, &r->src_path, &raw);
		else
			source_value(r, &e, &raw);
		if (raw.type == MV_NULL && r->dflt)
			value_set(&raw, MV_STRING, r->dflt);
		{
			char		er[160];

			if (!map_apply_xf(r->xf, r->arg, &raw, &e, &v, er, sizeof(er)))
			{
				char		what[200];

				snprintf(what, sizeof(what), "malformed: %s", er);
				problem(&errs, r->target, what);
				invalid = true;
				shipsync_value_free(&raw);
				continue;
			}
		}
		shipsync_value_free(&raw);
		if (v.type == MV_NULL && r->required)
		{
			problem(&errs, r->target, "missing");
			invalid = true;
			continue;
		}
		(*fields)[*n] = xstrdup(r->target);
		(*values)[*n] = v;
		(*n)++;
	}
	if (invalid)
		set_err(errbuf, errlen, "%s", errs.data);
	free(errs.data);
	return invalid ? MAP_INVALID : MAP_OK;
}
