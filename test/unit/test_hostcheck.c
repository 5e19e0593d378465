/*
 * test_hostcheck.c
 *		Unit tests of the outbound host rule (hostcheck.c): which addresses
 *		are internal, and what an allowlist of shipsync.allowed_hosts lets
 *		through.
 *
 * Called from test_parsers.c, which owns the TAP counter.
 */
#define SHIPSYNC_PLAIN_C
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "pg_shipsync.h"

void		test_hostcheck(void (*check) (int, const char *));

static ShipAddrKind
kind(const char *text)
{
	ShipAddr	a;

	if (!shipsync_addr_parse(text, &a))
		return (ShipAddrKind) -1;
	return shipsync_addr_kind(&a);
}

/* Would a connection to address text for URL host host be allowed? */
static int
allows(const ShipAllowList *l, const char *host, const char *text)
{
	ShipAddr	a;

	if (!shipsync_addr_parse(text, &a))
		return -1;
	return shipsync_addr_kind(&a) == ADDR_PUBLIC ||
		shipsync_allowlist_covers(l, &a) || shipsync_allowlist_names(l, host);
}

static void
test_kinds(void (*check) (int, const char *))
{
	check(kind("8.8.8.8") == ADDR_PUBLIC && kind("2606:4700:4700::1111") == ADDR_PUBLIC,
		  "public IPv4 and IPv6 addresses are public");
	check(kind("127.0.0.1") == ADDR_LOOPBACK && kind("127.0.0.2") == ADDR_LOOPBACK &&
		  kind("::1") == ADDR_LOOPBACK && kind("[::1]") == ADDR_LOOPBACK,
		  "127.0.0.0/8 and ::1 are loopback, brackets or not");
	check(kind("10.0.0.5") == ADDR_PRIVATE && kind("172.16.0.1") == ADDR_PRIVATE &&
		  kind("172.31.255.255") == ADDR_PRIVATE && kind("192.168.1.1") == ADDR_PRIVATE,
		  "RFC 1918 ranges are private");
	check(kind("172.15.255.255") == ADDR_PUBLIC && kind("172.32.0.0") == ADDR_PUBLIC &&
		  kind("192.169.0.1") == ADDR_PUBLIC && kind("11.0.0.1") == ADDR_PUBLIC,
		  "the neighbours of RFC 1918 ranges are public");
	check(kind("fd00::5") == ADDR_PRIVATE && kind("fc00::1") == ADDR_PRIVATE &&
		  kind("fec0::1") == ADDR_PRIVATE && kind("fe00::1") == ADDR_PUBLIC,
		  "fc00::/7 (and old site-local fec0::/10) are private");
	check(kind("169.254.169.254") == ADDR_LINK_LOCAL && kind("fe80::1") == ADDR_LINK_LOCAL &&
		  kind("febf::1") == ADDR_LINK_LOCAL,
		  "169.254.0.0/16 and fe80::/10 are link-local");
	check(kind("100.100.100.200") == ADDR_SHARED && kind("100.64.0.1") == ADDR_SHARED &&
		  kind("100.128.0.1") == ADDR_PUBLIC,
		  "100.64.0.0/10 (Alibaba Cloud's metadata service lives there) is not public");
	check(kind("0.0.0.0") == ADDR_UNSPECIFIED && kind("0.1.2.3") == ADDR_UNSPECIFIED &&
		  kind("::") == ADDR_UNSPECIFIED,
		  "0.0.0.0/8 and :: are unspecified");
	check(kind("224.0.0.1") == ADDR_MULTICAST && kind("239.255.255.250") == ADDR_MULTICAST &&
		  kind("ff02::1") == ADDR_MULTICAST,
		  "224.0.0.0/4 and ff00::/8 are multicast");
	check(kind("255.255.255.255") == ADDR_RESERVED && kind("240.0.0.1") == ADDR_RESERVED,
		  "240.0.0.0/4 and the broadcast address are reserved");
	check(kind("::ffff:10.0.0.5") == ADDR_PRIVATE && kind("::ffff:127.0.0.1") == ADDR_LOOPBACK &&
		  kind("::ffff:8.8.8.8") == ADDR_PUBLIC,
		  "an IPv4-mapped IPv6 address is judged by its IPv4 address");
	check(kind("64:ff9b::a9fe:a9fe") == ADDR_LINK_LOCAL && kind("2002:a00:5::1") == ADDR_PRIVATE &&
		  kind("::127.0.0.1") == ADDR_LOOPBACK,
		  "NAT64, 6to4 and IPv4-compatible forms are judged by the IPv4 address they carry");
	check(kind("127.1") == (ShipAddrKind) -1 && kind("2130706433") == (ShipAddrKind) -1 &&
		  kind("0177.0.0.1") == (ShipAddrKind) -1 && kind("fe80::1%eth0") == (ShipAddrKind) -1 &&
		  kind("localhost") == (ShipAddrKind) -1 && kind("") == (ShipAddrKind) -1,
		  "only canonical addresses parse (libcurl normalizes URLs' short forms first)");
}

static void
test_sockaddr(void (*check) (int, const char *))
{
	struct sockaddr_in in4 = {0};
	struct sockaddr_in6 in6 = {0};
	ShipAddr	a;
	char		buf[64];

	in4.sin_family = AF_INET;
	inet_pton(AF_INET, "10.0.0.5", &in4.sin_addr);
	check(shipsync_addr_from_sockaddr((struct sockaddr *) &in4, &a) &&
		  shipsync_addr_kind(&a) == ADDR_PRIVATE,
		  "a sockaddr_in is read");
	shipsync_addr_format(&a, buf, sizeof(buf));
	check(strcmp(buf, "10.0.0.5") == 0, "an IPv4 address is printed as a dotted quad");
	in6.sin6_family = AF_INET6;
	inet_pton(AF_INET6, "fd00::5", &in6.sin6_addr);
	check(shipsync_addr_from_sockaddr((struct sockaddr *) &in6, &a) &&
		  shipsync_addr_kind(&a) == ADDR_PRIVATE,
		  "a sockaddr_in6 is read");
	shipsync_addr_format(&a, buf, sizeof(buf));
	check(strcmp(buf, "fd00::5") == 0, "an IPv6 address is printed as such");
	in4.sin_family = AF_UNIX;
	check(!shipsync_addr_from_sockaddr((struct sockaddr *) &in4, &a),
		  "other address families are not read");
	check(strcmp(shipsync_addr_kind_name(ADDR_LINK_LOCAL), "a link-local address") == 0,
		  "kinds have names for messages");
}

static void
test_lists(void (*check) (int, const char *))
{
	char		err[256];
	ShipAllowList *l;

	l = shipsync_allowlist_parse("", err, sizeof(err));
	check(l != NULL && !shipsync_allowlist_has_names(l), "an empty list parses");
	check(allows(l, "carrier.example", "8.8.8.8") == 1, "public addresses need no entry");
	check(allows(l, "127.0.0.1", "127.0.0.1") == 0 && allows(l, "localhost", "::1") == 0 &&
		  allows(l, "metadata", "169.254.169.254") == 0,
		  "with an empty list nothing internal is reached");
	free(l);

	l = shipsync_allowlist_parse(" 127.0.0.1 ,gw.carrier.example, *.corp.example,10.8.0.0/16, fd00::/8,"
								 "192.168.7.9/24, ::1", err, sizeof(err));
	check(l != NULL && shipsync_allowlist_has_names(l), "a list of every kind of entry parses");
	check(allows(l, "127.0.0.1", "127.0.0.1") == 1 && allows(l, "127.0.0.2", "127.0.0.2") == 0,
		  "an address entry allows that address only");
	check(allows(l, "localhost", "127.0.0.1") == 1 && allows(l, "localhost", "127.0.0.2") == 0,
		  "a name resolving to an allowed address is allowed, to another one not");
	check(allows(l, "x", "10.8.255.255") == 1 && allows(l, "x", "10.9.0.0") == 0 &&
		  allows(l, "x", "10.7.255.255") == 0,
		  "an IPv4 network covers exactly its range");
	check(allows(l, "x", "fd12:3456::1") == 1 && allows(l, "x", "fc00::1") == 0,
		  "an IPv6 network covers exactly its range");
	check(allows(l, "x", "192.168.7.200") == 1 && allows(l, "x", "192.168.8.1") == 0,
		  "host bits in a network entry are ignored (192.168.7.9/24 is 192.168.7.0/24)");
	check(allows(l, "x", "::ffff:10.8.1.1") == 1, "an IPv4 network covers IPv4-mapped addresses");
	check(allows(l, "GW.Carrier.Example.", "10.0.0.5") == 1 && allows(l, "gw2.carrier.example", "10.0.0.5") == 0,
		  "a host name entry allows that name, case and final dot aside");
	check(allows(l, "a.corp.example", "10.0.0.5") == 1 && allows(l, "a.b.corp.example", "10.0.0.5") == 1 &&
		  allows(l, "corp.example", "10.0.0.5") == 0 && allows(l, "evilcorp.example", "10.0.0.5") == 0,
		  "a pattern allows names below its domain, not the domain itself nor look-alikes");
	check(allows(l, NULL, "10.0.0.5") == 0, "no host name: only addresses count");
	free(l);

	l = shipsync_allowlist_parse("0.0.0.0/0, ::/0", err, sizeof(err));
	check(l != NULL && allows(l, "x", "127.0.0.1") == 1 && allows(l, "x", "fe80::1") == 1,
		  "0.0.0.0/0 and ::/0 allow every address");
	free(l);

	check(shipsync_allowlist_parse("10.0.0.0/33", err, sizeof(err)) == NULL &&
		  strstr(err, "10.0.0.0/33") != NULL, "an IPv4 prefix over 32 is refused, naming the entry");
	check(shipsync_allowlist_parse("fd00::/129", err, sizeof(err)) == NULL, "an IPv6 prefix over 128 is refused");
	check(shipsync_allowlist_parse("10.0.0.256", err, sizeof(err)) == NULL &&
		  strstr(err, "not an IP address") != NULL, "a bad address is not taken for a host name");
	check(shipsync_allowlist_parse("10.0.0.0/x", err, sizeof(err)) == NULL, "a prefix must be a number");
	check(shipsync_allowlist_parse("*", err, sizeof(err)) == NULL &&
		  strstr(err, "pattern") != NULL, "a bare * is refused");
	check(shipsync_allowlist_parse("a..b", err, sizeof(err)) == NULL, "empty labels are refused");
	check(shipsync_allowlist_parse("a,,b", err, sizeof(err)) == NULL &&
		  strstr(err, "empty entry") != NULL &&
		  shipsync_allowlist_parse("a, ", err, sizeof(err)) == NULL &&
		  shipsync_allowlist_parse(" ,a", err, sizeof(err)) == NULL,
		  "an empty entry is refused, wherever it is");
	l = shipsync_allowlist_parse("  ", err, sizeof(err));
	check(l != NULL, "blanks are an empty list");
	free(l);
	check(shipsync_allowlist_parse("http://a", err, sizeof(err)) == NULL, "a URL is not a host");
	l = shipsync_allowlist_parse("api1, localhost.", err, sizeof(err));
	check(l != NULL && allows(l, "api1", "10.0.0.1") == 1 && allows(l, "localhost", "::1") == 1,
		  "names ending in a digit and fully qualified names are names");
	free(l);
}

void
test_hostcheck(void (*check) (int, const char *))
{
	test_kinds(check);
	test_sockaddr(check);
	test_lists(check);
}
