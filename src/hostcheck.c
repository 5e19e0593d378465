/*-------------------------------------------------------------------------
 *
 * hostcheck.c
 *		Which addresses are internal, and which internal ones the DBA
 *		allowed in shipsync.allowed_hosts.
 *
 * pg_shipsync makes HTTP calls from inside the database server, so a URL
 * written by an admin could otherwise reach what only the server can reach:
 * a cloud metadata service (169.254.169.254, Alibaba Cloud's 100.100.100.200),
 * a Kubernetes API on 10.0.0.5:6443, PostgreSQL itself on 127.0.0.1:5432.
 * The rule: a public address may always be contacted; an internal one
 * (loopback, private, shared, link-local, unspecified, multicast, reserved)
 * only when the URL's host name, or the address itself, is allowed by the
 * list in shipsync.allowed_hosts.
 *
 * This file is the rule and nothing else: plain C, no PostgreSQL calls, so
 * that it is unit-tested alone (test/unit/test_hostcheck.c).  http.c applies
 * it to the address libcurl is about to connect to (and again before each
 * request on a reused connection); create_provider() applies it to literal
 * addresses in URLs (through http.c's shipsync._check_host()).
 *
 * An allowlist is parsed once per value of the GUC into one malloc'd block
 * (a GUC check hook's "extra", freed by guc.c with free()).  Entries:
 *	 carrier.example	a host name, matched against the URL's host
 *	 *.carrier.example	any name below carrier.example (not itself)
 *	 10.0.0.5, fd00::5	an address
 *	 10.0.0.0/8, fd00::/8	a network
 * IPv4 addresses are held as IPv4-mapped IPv6 (::ffff:a.b.c.d), so one
 * comparison serves both families and a mapped address is judged by the
 * IPv4 address it stands for.
 *
 *-------------------------------------------------------------------------
 */
#define SHIPSYNC_PLAIN_C
#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "pg_shipsync.h"

#define ENTRY_NAME		0		/* exact host name */
#define ENTRY_SUFFIX	1		/* *.domain: the name ends with .domain */
#define ENTRY_NET		2		/* an address or a network */

typedef struct AllowEntry
{
	int			kind;
	int			prefix;			/* ENTRY_NET: bits of addr that must match */
	ShipAddr	addr;
	size_t		name_off;		/* ENTRY_NAME, ENTRY_SUFFIX: offset in names */
} AllowEntry;

struct ShipAllowList
{
	int			n;
	bool		has_names;
	char	   *names;			/* lower case, NUL-separated, after entries */
	AllowEntry	e[];
};

static const unsigned char v4_mapped_prefix[12] =
{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* Hold an IPv4 address (network order) as ::ffff:a.b.c.d */
static void
addr_set_v4(ShipAddr *out, const unsigned char v4[4])
{
	memcpy(out->b, v4_mapped_prefix, 12);
	memcpy(out->b + 12, v4, 4);
}

/*
 * Parse an IP address: dotted-quad IPv4, or IPv6 with or without brackets.
 * Nothing else: no zone id, no short or octal IPv4 forms (libcurl's URL
 * parser has normalized those in the URLs we judge).
 */
bool
shipsync_addr_parse(const char *text, ShipAddr *out)
{
	char		buf[INET6_ADDRSTRLEN + 2];
	size_t		len = strlen(text);
	unsigned char v4[4];

	if (len >= 2 && text[0] == '[' && text[len - 1] == ']')
	{
		text++;
		len -= 2;
	}
	if (len == 0 || len >= sizeof(buf))
		return false;
	memcpy(buf, text, len);
	buf[len] = '\0';
	if (inet_pton(AF_INET, buf, v4) == 1)
	{
		addr_set_v4(out, v4);
		return true;
	}
	return inet_pton(AF_INET6, buf, out->b) == 1;
}

/* The address of a socket address of family AF_INET or AF_INET6 */
bool
shipsync_addr_from_sockaddr(const struct sockaddr *sa, ShipAddr *out)
{
	if (sa->sa_family == AF_INET)
	{
		const struct sockaddr_in *in = (const struct sockaddr_in *) sa;

		addr_set_v4(out, (const unsigned char *) &in->sin_addr);
		return true;
	}
	if (sa->sa_family == AF_INET6)
	{
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) sa;

		memcpy(out->b, &in6->sin6_addr, 16);
		return true;
	}
	return false;
}

/* Does a lie in the network net/prefix (prefix in bits, 0..128)? */
static bool
addr_in(const ShipAddr *a, const unsigned char *net, int prefix)
{
	int			bytes = prefix / 8;
	int			bits = prefix % 8;

	if (memcmp(a->b, net, bytes) != 0)
		return false;
	if (bits == 0)
		return true;
	return ((a->b[bytes] ^ net[bytes]) & (0xff << (8 - bits))) == 0;
}

static bool
is_v4(const ShipAddr *a)
{
	return memcmp(a->b, v4_mapped_prefix, 12) == 0;
}

/* What kind of IPv4 address a.b.c.d is */
static ShipAddrKind
kind_v4(const unsigned char *v)
{
	if (v[0] == 0)
		return ADDR_UNSPECIFIED;	/* 0.0.0.0/8: connects to this host */
	if (v[0] == 127)
		return ADDR_LOOPBACK;
	if (v[0] == 10 || (v[0] == 172 && (v[1] & 0xf0) == 16) ||
		(v[0] == 192 && v[1] == 168))
		return ADDR_PRIVATE;	/* RFC 1918 */
	if (v[0] == 100 && (v[1] & 0xc0) == 64)
		return ADDR_SHARED;		/* 100.64.0.0/10, RFC 6598 */
	if (v[0] == 169 && v[1] == 254)
		return ADDR_LINK_LOCAL;
	if ((v[0] & 0xf0) == 224)
		return ADDR_MULTICAST;
	if ((v[0] & 0xf0) == 240 ||	/* 240.0.0.0/4 and the broadcast address */
		(v[0] == 192 && v[1] == 0 && v[2] == 0) ||	/* IETF protocol use */
		(v[0] == 198 && (v[1] & 0xfe) == 18))	/* benchmarking */
		return ADDR_RESERVED;
	return ADDR_PUBLIC;
}

/*
 * What kind of address a is.  IPv6 forms that carry an IPv4 address
 * (mapped ::ffff:0:0/96, compatible ::/96, NAT64 64:ff9b::/96 and 6to4
 * 2002::/16) are judged by that IPv4 address.
 */
ShipAddrKind
shipsync_addr_kind(const ShipAddr *a)
{
	static const unsigned char zero[16] = {0};
	static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b};
	const unsigned char *b = a->b;

	if (is_v4(a))
		return kind_v4(b + 12);
	if (memcmp(b, zero, 15) == 0 && (b[15] == 0 || b[15] == 1))
		return b[15] == 0 ? ADDR_UNSPECIFIED : ADDR_LOOPBACK;
	if (memcmp(b, zero, 12) == 0 || memcmp(b, nat64, 12) == 0)
		return kind_v4(b + 12);
	if (b[0] == 0x20 && b[1] == 0x02)
		return kind_v4(b + 2);
	if ((b[0] & 0xfe) == 0xfc || (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0))
		return ADDR_PRIVATE;	/* fc00::/7 unique local, fec0::/10 site-local */
	if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80)
		return ADDR_LINK_LOCAL;
	if (b[0] == 0xff)
		return ADDR_MULTICAST;
	if (memcmp(b, zero, 2) == 0 ||	/* ::/16, outside the forms above */
		(b[0] == 0x01 && memcmp(b + 1, zero, 7) == 0) ||	/* 100::/64 discard */
		(b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && b[4] == 0x00 && b[5] == 0x01))
		return ADDR_RESERVED;	/* 64:ff9b:1::/48 is local-use NAT64 */
	return ADDR_PUBLIC;
}

/* "a loopback address", ... for messages */
const char *
shipsync_addr_kind_name(ShipAddrKind kind)
{
	switch (kind)
	{
		case ADDR_PUBLIC:
			return "a public address";
		case ADDR_LOOPBACK:
			return "a loopback address";
		case ADDR_PRIVATE:
			return "a private address";
		case ADDR_SHARED:
			return "a shared (carrier-grade NAT) address";
		case ADDR_LINK_LOCAL:
			return "a link-local address";
		case ADDR_UNSPECIFIED:
			return "an unspecified address";
		case ADDR_MULTICAST:
			return "a multicast address";
		case ADDR_RESERVED:
			return "a reserved address";
	}
	return "an address";
}

/* a as text: dotted quad for IPv4 (mapped or not), else IPv6 */
void
shipsync_addr_format(const ShipAddr *a, char *buf, size_t len)
{
	if (is_v4(a))
		(void) inet_ntop(AF_INET, a->b + 12, buf, (socklen_t) len);
	else
		(void) inet_ntop(AF_INET6, a->b, buf, (socklen_t) len);
}

/* Is s a host name (labels of letters, digits, '-' and '_', dots between)? */
static bool
valid_name(const char *s, size_t len)
{
	bool		label_start = true;

	if (len == 0 || len > 253)
		return false;
	for (size_t i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (c == '.')
		{
			if (label_start)
				return false;
			label_start = true;
			continue;
		}
		if (!isalnum(c) && c != '-' && c != '_')
			return false;
		label_start = false;
	}
	return !label_start;
}

/*
 * Does the entry s[0..len) stand for an address?  A slash or a colon says
 * so, and so does a last label of digits only: no top-level domain is
 * numeric, so "10.0.0.256" is a bad address rather than a host name.
 */
static bool
looks_like_address(const char *s, size_t len)
{
	size_t		i = len;

	if (memchr(s, '/', len) || memchr(s, ':', len))
		return true;
	while (i > 0 && isdigit((unsigned char) s[i - 1]))
		i--;
	return i < len && (i == 0 || s[i - 1] == '.');
}

/* Parse "address" or "address/prefix" s[0..len) into *e */
static bool
parse_net(const char *s, size_t len, AllowEntry *e)
{
	const char *slash = memchr(s, '/', len);
	size_t		alen = slash ? (size_t) (slash - s) : len;
	bool		v6 = memchr(s, ':', alen) != NULL;
	char		text[INET6_ADDRSTRLEN + 2];
	int			prefix = 0;

	if (alen >= sizeof(text))
		return false;
	memcpy(text, s, alen);
	text[alen] = '\0';
	if (!shipsync_addr_parse(text, &e->addr))
		return false;
	e->kind = ENTRY_NET;
	e->prefix = 128;
	if (slash == NULL)
		return true;
	if (len - alen < 2 || len - alen > 4)
		return false;
	for (const char *c = slash + 1; c < s + len; c++)
	{
		if (!isdigit((unsigned char) *c))
			return false;
		prefix = prefix * 10 + (*c - '0');
	}
	if (prefix > (v6 ? 128 : 32))
		return false;
	e->prefix = prefix + (v6 ? 0 : 96);
	/* host bits set (10.0.0.5/8) are cleared: the network is meant */
	for (int bit = e->prefix; bit < 128; bit++)
		e->addr.b[bit / 8] &= (unsigned char) ~(0x80 >> (bit % 8));
	return true;
}

/*
 * Parse one entry s[0..len) into *e; a name is copied, lower-cased, to
 * names at *names_len.  Returns false with a message in err.
 */
static bool
parse_entry(const char *s, size_t len, AllowEntry *e, char *names,
			size_t *names_len, char *err, size_t errlen)
{
	memset(e, 0, sizeof(*e));
	if (looks_like_address(s, len))
	{
		if (parse_net(s, len, e))
			return true;
		snprintf(err, errlen, "\"%.*s\" is not an IP address or a network in CIDR notation.",
				 (int) len, s);
		return false;
	}
	if (s[len - 1] == '.')
		len--;					/* a fully qualified name's final dot */
	e->kind = ENTRY_NAME;
	if (len >= 2 && s[0] == '*' && s[1] == '.')
	{
		e->kind = ENTRY_SUFFIX;
		s += 1;					/* keep the dot: ".carrier.example" */
		len -= 1;
	}
	if (!valid_name(e->kind == ENTRY_SUFFIX ? s + 1 : s,
					e->kind == ENTRY_SUFFIX ? len - 1 : len))
	{
		snprintf(err, errlen, "\"%.*s\" is not a host name, a pattern \"*.domain\", an IP address or a network in CIDR notation.",
				 (int) len + (e->kind == ENTRY_SUFFIX), s - (e->kind == ENTRY_SUFFIX));
		return false;
	}
	e->name_off = *names_len;
	for (size_t i = 0; i < len; i++)
		names[(*names_len)++] = (char) tolower((unsigned char) s[i]);
	names[(*names_len)++] = '\0';
	return true;
}

/*
 * Parse an allowlist: entries separated by commas, spaces around them
 * ignored; an empty list is allowed, an empty entry is not.  Returns one
 * malloc'd block (free() it), or NULL with a message in err (out of memory
 * included: this file raises no error, so that it depends on nothing).
 */
ShipAllowList *
shipsync_allowlist_parse(const char *text, char *err, size_t errlen)
{
	int			n = 1;
	size_t		tlen = strlen(text);
	ShipAllowList *l;
	char	   *names;
	size_t		names_len = 0;
	const char *p = text;

	for (const char *c = text; *c; c++)
		n += *c == ',';
	l = malloc(sizeof(ShipAllowList) + sizeof(AllowEntry) * n + tlen + 1);
	if (l == NULL)
	{
		/* said, not raised: a GUC check hook must not throw */
		snprintf(err, errlen, "Out of memory.");
		return NULL;
	}
	l->n = 0;
	l->has_names = false;
	names = (char *) &l->e[n];
	l->names = names;
	for (;;)
	{
		const char *comma = strchr(p, ',');
		const char *end = comma ? comma : p + strlen(p);

		while (p < end && isspace((unsigned char) *p))
			p++;
		while (end > p && isspace((unsigned char) end[-1]))
			end--;
		if (end > p)
		{
			AllowEntry *e = &l->e[l->n];

			if (!parse_entry(p, end - p, e, names, &names_len, err, errlen))
			{
				free(l);
				return NULL;
			}
			l->has_names |= e->kind != ENTRY_NET;
			l->n++;
		}
		else if (comma != NULL || l->n > 0)
		{
			snprintf(err, errlen, "The list has an empty entry.");
			free(l);
			return NULL;
		}
		if (comma == NULL)
			break;
		p = comma + 1;
	}
	return l;
}

/* Does an address or network entry of l cover a? */
bool
shipsync_allowlist_covers(const ShipAllowList *l, const ShipAddr *a)
{
	for (int i = 0; l && i < l->n; i++)
		if (l->e[i].kind == ENTRY_NET && addr_in(a, l->e[i].addr.b, l->e[i].prefix))
			return true;
	return false;
}

/* Does l name host (exactly, or by a pattern)?  Case and a final dot aside. */
bool
shipsync_allowlist_names(const ShipAllowList *l, const char *host)
{
	size_t		len;

	if (l == NULL || !l->has_names || host == NULL)
		return false;
	len = strlen(host);
	if (len > 0 && host[len - 1] == '.')
		len--;
	for (int i = 0; i < l->n; i++)
	{
		const char *name;
		size_t		nlen;

		if (l->e[i].kind == ENTRY_NET)
			continue;
		name = l->names + l->e[i].name_off;
		nlen = strlen(name);
		if (l->e[i].kind == ENTRY_NAME)
		{
			if (nlen == len && strncasecmp(host, name, len) == 0)
				return true;
		}
		else
		{
			/* ENTRY_SUFFIX: name is ".domain"; host has a label more */
			if (len > nlen && strncasecmp(host + len - nlen, name, nlen) == 0)
				return true;
		}
	}
	return false;
}

/* Does l hold any host name or pattern (so the URL's host matters)? */
bool
shipsync_allowlist_has_names(const ShipAllowList *l)
{
	return l != NULL && l->has_names;
}
