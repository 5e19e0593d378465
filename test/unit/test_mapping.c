/*
 * test_mapping.c
 *		Unit tests of the mapping engine (mapping.c), the JSON paths and SF
 *		responses (json.c), the SF classification (retry.c) and the
 *		signatures (sign.c), on the providers' own vectors in test/vectors.
 *
 * Prints TAP ("ok N - ...", "not ok N - ...") so bin/test can count it.
 * Run from test/unit (the vectors are read from ../vectors).
 */
#define SHIPSYNC_PLAIN_C
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg_shipsync.h"
#include "unit.h"

static char *
slurp(const char *name)
{
	char		path[512];
	FILE	   *f;
	long		n;
	char	   *s;

	snprintf(path, sizeof(path), "%s/%s", getenv("VECTORS") ? getenv("VECTORS") : "../vectors", name);
	f = fopen(path, "rb");
	if (f == NULL)
	{
		printf("# cannot open %s\n", path);
		return NULL;
	}
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	s = malloc(n + 1);
	if (fread(s, 1, n, f) != (size_t) n)
		n = 0;
	s[n] = '\0';
	fclose(f);
	return s;
}

/* The value at a dotted path of a document, malloc'd text or NULL */
static char *
get(ShipJson *doc, const char *path)
{
	MapPath		p;
	MapValue	v;
	char		err[128];

	if (!shipsync_path_parse(path, &p, err, sizeof(err)))
		return NULL;
	if (!shipsync_json_get(doc, &p, &v))
	{
		shipsync_path_free(&p);
		return NULL;
	}
	shipsync_path_free(&p);
	return v.s;
}

static int
streq_free(char *got, const char *want)
{
	int			ok = got != NULL && strcmp(got, want) == 0;

	if (!ok)
		printf("#   got [%s], want [%s]\n", got ? got : "(null)", want);
	free(got);
	return ok;
}

static void
test_sf_digest(void)
{
	char	   *text = slurp("sf_msgdigest_vectors.json");
	char		err[128];
	ShipJson   *doc = text ? shipsync_json_parse(text, strlen(text), err, sizeof(err)) : NULL;
	char	   *md,
			   *ts,
			   *cw,
			   *want;

	check(doc != NULL, "the SF msgDigest vectors are read");
	if (doc == NULL)
		return;
	md = get(doc, "vectors[name=sf_official_doc_example].msgData");
	ts = get(doc, "vectors[name=sf_official_doc_example].timestamp");
	cw = get(doc, "vectors[name=sf_official_doc_example].checkWord");
	want = get(doc, "vectors[name=sf_official_doc_example].expected_msgDigest");
	check(md && ts && cw && want && strcmp(want, "IIKJtuLVzoFTu4kHI8M8vA==") == 0,
		  "a [name=...] filter finds SF's documented example");
	if (md && ts && cw && want)
	{
		char	   *wrong = get(doc, "vectors[1].wrong_digest_if_not_urlencoded");
		char	   *d = shipsync_sf_digest(md, ts, cw);

		check(streq_free(d, want), "SF's documented msgDigest example reproduces: IIKJtuLVzoFTu4kHI8M8vA==");
		d = shipsync_sf_digest(md, ts, cw);
		check(wrong && strcmp(d, wrong) != 0, "the digest is not the one over the raw, unencoded text");
		free(d);
		free(wrong);
	}
	free(md);
	free(ts);
	free(cw);
	free(want);
	/* the two third-party claims are false; the correct values are recorded */
	md = get(doc, "vectors[2].msgData");
	ts = get(doc, "vectors[2].timestamp");
	cw = get(doc, "vectors[2].checkWord");
	check(streq_free(shipsync_sf_digest(md, ts, cw), "qgwN2Vcl2SDRwnNzbX7B6A=="),
		  "another timestamp and checkword give another digest (the blog's claim is false)");
	free(md);
	free(ts);
	free(cw);
	md = get(doc, "vectors[3].msgData");
	ts = get(doc, "vectors[3].timestamp");
	cw = get(doc, "vectors[3].checkWord");
	check(streq_free(shipsync_sf_digest(md, ts, cw), "9lfdwc7EnWooftr5ys7acA=="),
		  "spaces inside msgData change the digest");
	free(md);
	free(ts);
	free(cw);
	shipsync_json_free(doc);
	free(text);

	check(streq_free(shipsync_urlencode_java("a b*._-~!'()中/+="), "a+b*._-%7E%21%27%28%29%E4%B8%AD%2F%2B%3D"),
		  "Java URLEncoder semantics: space is +, .-*_ kept, ~!'() encoded, UTF-8 bytes upper-case");
	{
		char	   *form = shipsync_sf_form("P1", "req-1", "EXP_RECE_CREATE_ORDER", "12312334453453",
											"{\"language\":\"zh-CN\",\"orderId\":\"QIAO-20200618-004\"}",
											"fjcg5PGKaNpPSHFAZ4QsCOkV71R3zVci");

		check(streq_free(form, "partnerID=P1&requestID=req-1&serviceCode=EXP_RECE_CREATE_ORDER"
						 "&timestamp=12312334453453"
						 "&msgData=%7B%22language%22%3A%22zh-CN%22%2C%22orderId%22%3A%22QIAO-20200618-004%22%7D"
						 "&msgDigest=IIKJtuLVzoFTu4kHI8M8vA%3D%3D"),
			  "the SF form carries the six fields, encoded, with the documented digest");
	}
	check(streq_free(shipsync_md5_upper_hex("abc"), "900150983CD24FB0D6963F7D28E17F72"),
		  "upper-case hex MD5 (Kuaidi100's sign)");
}

static MapOutcome
render(int n, const char *const *t, const char *const *s, const char *const *x,
	   const char *const *a, const char *const *d, const bool *req,
	   const char *row, const char *opts, char **out, char *err)
{
	ShipMap    *m = shipsync_map_compile(n, t, s, x, a, d, req, err, 256);
	MapEnv		env = {0};
	MapOutcome	r;
	char		e2[64];

	*out = NULL;
	if (m == NULL)
		return MAP_ERROR;
	env.row = shipsync_json_parse(row, strlen(row), e2, sizeof(e2));
	env.options = opts ? shipsync_json_parse(opts, strlen(opts), e2, sizeof(e2)) : NULL;
	env.order_key = "QIAO-20200728-002";
	r = shipsync_map_render(m, &env, false, out, err, 256);
	shipsync_json_free(env.row);
	shipsync_json_free(env.options);
	shipsync_map_free(m);
	return r;
}

static void
test_paths(void)
{
	MapPath		p;
	char		err[128];

	check(shipsync_path_parse("contactInfoList[contactType=2].address", &p, err, sizeof(err)) &&
		  p.nsegs == 2 && p.segs[0].kind == MAPSEG_FILTER && strcmp(p.segs[0].fkey, "contactType") == 0 &&
		  strcmp(p.segs[0].fval, "2") == 0 && !p.segs[0].fval_string,
		  "a path with a [k=v] filter parses; a numeric value is a number");
	shipsync_path_free(&p);
	check(shipsync_path_parse("a[k=\"x.y]\"].b[3].收件人", &p, err, sizeof(err)) && p.nsegs == 3 &&
		  p.segs[0].fval_string && strcmp(p.segs[0].fval, "x.y]") == 0 &&
		  p.segs[1].kind == MAPSEG_INDEX && p.segs[1].index == 3 && strcmp(p.segs[2].name, "收件人") == 0,
		  "quoted filter values, indexes and non-ASCII names");
	shipsync_path_free(&p);
	check(!shipsync_path_parse("a..b", &p, err, sizeof(err)) && strstr(err, "offset 2"),
		  "an empty step is refused with its offset");
	check(!shipsync_path_parse("a[k=1", &p, err, sizeof(err)), "an unclosed filter is refused");
	check(!shipsync_path_parse("a[=1]", &p, err, sizeof(err)), "a filter without a key is refused");
	check(!shipsync_path_parse("", &p, err, sizeof(err)), "an empty path is refused");
	check(!shipsync_path_parse("a[\"x", &p, err, sizeof(err)), "garbage in brackets is refused");
	check(shipsync_path_parse("\"full\"\"name\".\"Customer Name\"[0].\"back\\slash\"", &p, err, sizeof(err)) &&
		  p.nsegs == 3 && strcmp(p.segs[0].name, "full\"name") == 0 &&
		  strcmp(p.segs[1].name, "Customer Name") == 0 && p.segs[1].kind == MAPSEG_INDEX &&
		  strcmp(p.segs[2].name, "back\\slash") == 0,
		  "quoted names hold anything, a doubled quote is one");
	shipsync_path_free(&p);
	check(!shipsync_path_parse("\"open", &p, err, sizeof(err)) && strstr(err, "unterminated"),
		  "an unterminated quoted name is refused");
	check(!shipsync_path_parse("a.\"\"", &p, err, sizeof(err)) && strstr(err, "empty quoted name at offset 2"),
		  "an empty quoted name is refused with its offset");
}

static void
test_render(void)
{
	/* the SF sample order, from a CRM row */
	const char *t[] = {"orderId", "language", "contactInfoList[contactType=1].contact",
		"contactInfoList[contactType=1].mobile", "contactInfoList[contactType=2].contact",
		"contactInfoList[contactType=2].mobile", "contactInfoList[contactType=2].address",
		"cargoDetails[0].name", "cargoDetails[0].count", "cargoDetails[0].weight",
	"monthlyCard", "payMethod"};
	const char *s[] = {"meta:order_key", "const:zh-CN", "option:sender.name", "option:sender.phone",
		"receiver_name", "receiver_phone", "receiver_address", "cargo_name", "quantity",
	"weight_g", "option:monthly_card", "const:1"};
	const char *x[] = {NULL, NULL, NULL, "phone", "trim", "phone", "trim", NULL, NULL, "unit", NULL,
	"to_number"};
	const char *a[] = {NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
	"{\"from\": \"g\", \"to\": \"kg\"}", NULL, NULL};
	const bool	req[] = {true, false, false, false, false, false, true, false, false, false, false, false};
	const char *row = "{\"receiver_name\":\" 郭襄阳\\u3000\",\"receiver_phone\":\"+86 189-6382-8829\","
		"\"receiver_address\":\"湖北省襄阳市襄城区环城东路122号\",\"cargo_name\":\"君宝牌地毯\","
		"\"quantity\":1,\"weight_g\":6600}";
	const char *opts = "{\"sender\":{\"name\":\"张三丰\",\"phone\":\"17006805888\"},\"monthly_card\":\"7551234567\"}";
	char	   *out;
	char		err[256];

	check(render(12, t, s, x, a, NULL, req, row, opts, &out, err) == MAP_OK &&
		  streq_free(out, "{\"orderId\":\"QIAO-20200728-002\",\"language\":\"zh-CN\","
					 "\"contactInfoList\":[{\"contactType\":1,\"contact\":\"张三丰\",\"mobile\":\"17006805888\"},"
					 "{\"contactType\":2,\"contact\":\"郭襄阳\",\"mobile\":\"18963828829\","
					 "\"address\":\"湖北省襄阳市襄城区环城东路122号\"}],"
					 "\"cargoDetails\":[{\"name\":\"君宝牌地毯\",\"count\":1,\"weight\":6.6}],"
					 "\"monthlyCard\":\"7551234567\",\"payMethod\":1}"),
		  "the SF sample order renders: filters build contactInfoList, options the sender, units, phones, trim of U+3000");

	{
		const char *row2 = "{\"receiver_name\":\"x\",\"weight_g\":\"heavy\",\"receiver_address\":\"  \"}";

		check(render(12, t, s, x, a, NULL, req, row2, opts, &out, err) == MAP_INVALID && out == NULL &&
			  strstr(err, "contactInfoList[contactType=2].address (missing)") &&
			  strstr(err, "cargoDetails[0].weight (malformed: not a number)"),
			  "missing required and malformed fields are all named");
	}
	{
		const char *t2[] = {"a.b", "a.b.c"};
		const char *s2[] = {"const:1", "const:2"};

		check(render(2, t2, s2, NULL, NULL, NULL, NULL, "{}", NULL, &out, err) == MAP_ERROR &&
			  strstr(err, "a.b.c"), "two rules writing a value and an object at one place: a map error");
	}
	{
		const char *t3[] = {"x"};
		const char *s3[] = {"col"};
		const char *x3[] = {"rot13"};

		check(render(1, t3, s3, x3, NULL, NULL, NULL, "{}", NULL, &out, err) == MAP_ERROR &&
			  strstr(err, "unknown transform \"rot13\""), "an unknown transform is refused at compile time");
		x3[0] = "lookup";
		check(render(1, t3, s3, x3, NULL, NULL, NULL, "{}", NULL, &out, err) == MAP_ERROR &&
			  strstr(err, "JSON object"), "lookup without a table is refused at compile time");
		x3[0] = "unit";
		{
			const char *a3[] = {"{\"from\": \"g\", \"to\": \"stone\"}"};

			check(render(1, t3, s3, x3, a3, NULL, NULL, "{}", NULL, &out, err) == MAP_ERROR &&
				  strstr(err, "unit"), "an unknown unit is refused at compile time");
		}
	}
	{
		/* a default transform on a column the row does not have */
		const char *t5[] = {"insured", "n"};
		const char *s5[] = {"insured", "missing"};
		const char *x5[] = {"default", "to_number"};
		const char *a5[] = {"\"no\"", NULL};
		const char *d5[] = {NULL, "5"};

		check(render(2, t5, s5, x5, a5, d5, NULL, "{}", NULL, &out, err) == MAP_OK &&
			  streq_free(out, "{\"insured\":\"no\",\"n\":5}"),
			  "the default transform and the default column fill absent columns");
	}
	{
		/* a default column, a constant, concat, and a form body */
		const char *t4[] = {"name", "addr", "n"};
		const char *s4[] = {"nm", NULL, "const:7"};
		const char *x4[] = {"upper", "concat", "to_number"};
		const char *a4[] = {NULL, "{\"template\": \"{province}{city} {address}\"}", NULL};
		const char *d4[] = {"anon", NULL, NULL};
		ShipMap    *m = shipsync_map_compile(3, t4, s4, x4, a4, d4, NULL, err, sizeof(err));
		MapEnv		env = {0};
		char		e2[64];
		const char *row4 = "{\"province\":\"广东省\",\"city\":\"深圳市\",\"address\":\"科技园 1号\"}";

		env.row = shipsync_json_parse(row4, strlen(row4), e2, sizeof(e2));
		check(m && shipsync_map_render(m, &env, true, &out, err, sizeof(err)) == MAP_OK &&
			  streq_free(out, "name=ANON&addr=%E5%B9%BF%E4%B8%9C%E7%9C%81%E6%B7%B1%E5%9C%B3%E5%B8%82+%E7%A7%91%E6%8A%80%E5%9B%AD+1%E5%8F%B7&n=7"),
			  "default, concat of columns, constants, and form encoding");
		shipsync_json_free(env.row);
		shipsync_map_free(m);
	}
}

static int
xf(const char *transform, const char *arg, MapValueType t, const char *in, const char *want)
{
	MapValue	v = {t, (char *) in};
	MapValue	out;
	char		err[128];
	int			ok;

	if (!shipsync_map_transform(transform, arg, &v, NULL, &out, err, sizeof(err)))
	{
		ok = want == NULL;
		if (!ok)
			printf("#   %s(%s) failed: %s\n", transform, in, err);
		return ok;
	}
	ok = want != NULL && out.s != NULL && strcmp(out.s, want) == 0;
	if (!ok)
		printf("#   %s(%s) = [%s], want [%s]\n", transform, in, out.s ? out.s : "(null)", want ? want : "(failure)");
	shipsync_value_free(&out);
	return ok;
}

/* The scanned row and the parsed row give the same request */
static void
test_flat_row(void)
{
	const char *t[] = {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"};
	const char *s[] = {"s1", "s2", "n", "t", "nul", "obj", "arr", "absent", "u", "e"};
	const char *body = "{\"order_ref\" : \"7\", \"order\" : {\"s1\":\"a \\\"q\\\" \\\\ \\/ \\n\\t\","
		"\"s2\":\"\\u00e9\\u4e2d\\ud83d\\ude00 张\",\"n\":-1.5e3,\"t\":true,\"nul\":null,"
		"\"obj\":{\"k\":[1,{\"x\":\"}\"}]},\"arr\":[\"]\",2],\"u\":\"\\u0041\",\"e\":\"\"}}";
	char		err[256];
	ShipMap    *m = shipsync_map_compile(10, t, s, NULL, NULL, NULL, NULL, err, sizeof(err));
	MapRowIndex idx;
	MapEnv		a = {0},
				b = {0};
	ShipJson   *doc = shipsync_json_parse(body, strlen(body), err, sizeof(err));
	char	   *o1 = NULL,
			   *o2 = NULL;

	check(m && doc && shipsync_row_index(body, "order", &idx) && idx.n == 9,
		  "the order row is indexed by one scan");
	a.flat = &idx;
	b.row = shipsync_json_member_doc(doc, "order");
	check(shipsync_map_render(m, &a, false, &o1, err, sizeof(err)) == MAP_OK &&
		  shipsync_map_render(m, &b, false, &o2, err, sizeof(err)) == MAP_OK &&
		  strcmp(o1, o2) == 0 && strstr(o1, "\"j\":\"\"") != NULL,
		  "scanned and parsed rows render the same: escapes, \\u pairs, numbers, nested JSON, empty strings");
	if (o1 && o2 && strcmp(o1, o2) != 0)
		printf("#   %s\n#   %s\n", o1, o2);
	check(!shipsync_row_index("{\"order\":{\"a\":\"x}}", "order", &idx) &&
		  !shipsync_row_index("[1]", NULL, &idx) && !shipsync_row_index("{\"a\" 1}", NULL, &idx),
		  "what the scan cannot read is refused (the parser takes over)");
	free(o1);
	free(o2);
	shipsync_json_free(b.row);
	shipsync_json_free(doc);
	shipsync_map_free(m);
}

/* A field map never copies a secret option into a request */
static bool
compiles(const char *source)
{
	const char *t = "x";
	char		err[256];
	ShipMap    *m = shipsync_map_compile(1, &t, &source, NULL, NULL, NULL, NULL, err, sizeof(err));
	bool		ok = m != NULL;

	if (!ok && strstr(err, "secret") == NULL)
		printf("#   %s: %s\n", source, err);
	shipsync_map_free(m);
	return ok;
}

static void
test_secret_options(void)
{
	check(!compiles("option:webhook_secret") && !compiles("option:previous_webhook_secret"),
		  "option: refuses the webhook secrets");
	check(!compiles("option:auth") && !compiles("option:auth.token") &&
		  !compiles("option:auth.client_secret"), "option: refuses anything under auth");
	check(!compiles("option:tls.client_key"), "option: refuses the TLS client key");
	check(compiles("option:tls.min_version") && compiles("option:sender.name") &&
		  compiles("option:monthly_card") && compiles("option:webhook_secrets_url"),
		  "option: takes the other options");
}

static void
test_transforms(void)
{
	check(xf("trim", NULL, MV_STRING, "\u3000 张三 \t", "张三"), "trim: ASCII, ideographic and no-break spaces");
	check(xf("upper", NULL, MV_STRING, "sf express 顺丰", "SF EXPRESS 顺丰") &&
		  xf("lower", NULL, MV_STRING, "ÄBC", "Äbc"), "upper and lower change ASCII letters only");
	check(xf("to_number", NULL, MV_STRING, " +1,234.50 ", "1234.50") &&
		  xf("to_number", NULL, MV_STRING, "007", "7") && xf("to_number", NULL, MV_STRING, ".5", "0.5") &&
		  xf("to_number", NULL, MV_STRING, "-0", "0") && xf("to_number", NULL, MV_NUMBER, "6.6", "6.6"),
		  "to_number: signs, thousands separators, leading zeros");
	check(xf("to_number", NULL, MV_STRING, "12kg", NULL) && xf("to_number", NULL, MV_STRING, "", NULL) &&
		  xf("to_number", NULL, MV_STRING, "1e", NULL) && xf("to_number", NULL, MV_STRING, "NaN", NULL),
		  "to_number refuses what is not a number");
	check(xf("lookup", "{\"express\": 1, \"standard\": \"2\"}", MV_STRING, "express", "1") &&
		  xf("lookup", "{\"express\": 1}", MV_STRING, "slow", NULL), "lookup: in the table, or malformed");
	{
		MapValue	v = {MV_STRING, (char *) "express"};
		MapValue	out;
		char		err[64];

		check(shipsync_map_transform("lookup", "{\"express\": 1}", &v, NULL, &out, err, sizeof(err)) &&
			  out.type == MV_NUMBER, "lookup keeps a number a number");
		shipsync_value_free(&out);
		v.type = MV_NULL;
		check(shipsync_map_transform("default", "\"N/A\"", &v, NULL, &out, err, sizeof(err)) &&
			  out.type == MV_STRING && strcmp(out.s, "N/A") == 0, "default fills a null");
		shipsync_value_free(&out);
	}
	check(xf("unit", "{\"from\": \"g\", \"to\": \"kg\"}", MV_NUMBER, "1500", "1.5") &&
		  xf("unit", "{\"from\": \"kg\", \"to\": \"oz\"}", MV_STRING, "1", "35.274") &&
		  xf("unit", "{\"from\": \"lb\", \"to\": \"kg\", \"scale\": 2}", MV_STRING, "2", "0.91") &&
		  xf("unit", "{\"from\": \"kg\", \"to\": \"g\"}", MV_STRING, "0.25", "250"),
		  "unit conversion g->kg, kg->oz, lb->kg with a scale, kg->g");
	check(xf("unit", "{\"from\": \"g\", \"to\": \"kg\"}", MV_STRING, "heavy", NULL), "unit refuses a non-number");
	check(xf("timestamp", "{\"tz\": \"+08:00\"}", MV_STRING, "2026-11-27T20:21:07.123+00:00", "2026-11-28 04:21:07") &&
		  xf("timestamp", "{\"tz\": \"UTC\", \"format\": \"%Y%m%d%H%M%S\"}", MV_STRING, "2026-11-27T08:21:07+08", "20261127002107") &&
		  xf("timestamp", "{\"tz\": \"-05:30\"}", MV_STRING, "2024-03-01T02:00:00+00:00", "2024-02-29 20:30:00") &&
		  xf("timestamp", NULL, MV_STRING, "2026-11-27T08:21:07", "2026-11-27 08:21:07"),
		  "timestamp: to a zone's local time, across a day and a leap day; a local time is kept");
	check(xf("timestamp", "{\"tz\": \"Asia/Shanghai\"}", MV_STRING, "2026-11-27T08:21:07+00:00", NULL),
		  "a named zone without the server's zone database is refused, not guessed");
	check(xf("timestamp", NULL, MV_STRING, "27/11/2026", NULL), "timestamp refuses what is not ISO 8601");
	check(xf("parse_time", "{\"tz\": \"+08:00\"}", MV_STRING, "2023-09-15 15:46:15", "2023-09-15T07:46:15Z") &&
		  xf("parse_time", "{\"tz\": \"+08:00\"}", MV_STRING, "2023-01-01 03:00:00", "2022-12-31T19:00:00Z") &&
		  xf("parse_time", "{\"format\": \"%d/%m/%Y %H:%M\"}", MV_STRING, "15/09/2023 15:46", "2023-09-15T15:46:00Z"),
		  "parse_time: SF's zone-less acceptTime in Asia/Shanghai's offset to UTC");
	check(xf("parse_time", NULL, MV_STRING, "yesterday", NULL), "parse_time refuses another format");
	check(xf("phone", NULL, MV_STRING, "+86 189-6382-8829", "18963828829") &&
		  xf("phone", NULL, MV_STRING, "0086 (189) 6382 8829", "18963828829") &&
		  xf("phone", "{\"format\": \"e164\"}", MV_STRING, "189 6382 8829", "+8618963828829") &&
		  xf("phone", "{\"format\": \"e164\"}", MV_STRING, "0755-8888 1234", "+8675588881234") &&
		  xf("phone", NULL, MV_STRING, "+1 415 555 0100", "+14155550100"),
		  "phone: spaces, dashes, 00 and +86 prefixes, E.164, other countries kept international");
	check(xf("phone", NULL, MV_STRING, "call me", NULL) && xf("phone", NULL, MV_STRING, "12", NULL),
		  "phone refuses letters and too few digits");
	check(xf("identity", NULL, MV_STRING, "顺丰", "顺丰"), "identity");
}

static void
sf_case(ShipJson *misc, const char *name, bool search, SfClass want, const char *what)
{
	char	   *body = get(misc, name);
	SfResponse	r;
	char		err[256];
	bool		ok = body && shipsync_parse_sf_response(body, strlen(body), search, &r, err, sizeof(err));

	check(ok && r.cls == want, what);
	if (ok)
		shipsync_free_sf_response(&r);
	free(body);
}

static void
sf_literal(const char *body, bool search, SfClass want, const char *what)
{
	SfResponse	r;
	char		err[256];
	bool		ok = shipsync_parse_sf_response(body, strlen(body), search, &r, err, sizeof(err));

	if (!ok)
		printf("#   %s\n", err);
	check(ok && r.cls == want, what);
	if (ok)
		shipsync_free_sf_response(&r);
}

static void
test_sf_responses(void)
{
	char	   *text = slurp("sf_create_order_response_A1000.json");
	char	   *misc = slurp("sf_misc_responses.json");
	char		err[256];
	SfResponse	r;
	ShipJson   *doc;
	const char *text2;

	check(text && shipsync_parse_sf_response(text, strlen(text), false, &r, err, sizeof(err)) &&
		  r.cls == SF_OK && strcmp(r.waybill, "SF7444407670710") == 0 &&
		  strcmp(r.order_id, "QIAO-20200618-004") == 0 &&
		  strcmp(r.waybills, "[{\"waybillType\":1,\"waybillNo\":\"SF7444407670710\"}]") == 0,
		  "SF's A1000 create response: apiResultData decoded from its string, main waybill and the list");
	if (r.code)
		shipsync_free_sf_response(&r);

	doc = text ? shipsync_json_parse(text, strlen(text), err, sizeof(err)) : NULL;
	check(streq_free(get(doc, "apiResultData.msgData.waybillNoInfoList[waybillType=1].waybillNo"),
					 "SF7444407670710"),
		  "an inbound path reads through the JSON string apiResultData, with a filter");
	check(streq_free(get(doc, "apiResultData.msgData.routeLabelInfo[0].routeLabelData.proName"), "顺丰标快"),
		  "non-ASCII values read back intact");
	check(get(doc, "apiResultData.msgData.waybillNoInfoList[waybillType=2].waybillNo") == NULL,
		  "a filter that matches nothing reads null");
	shipsync_json_free(doc);

	doc = misc ? shipsync_json_parse(misc, strlen(misc), err, sizeof(err)) : NULL;
	sf_case(doc, "create_order_duplicate_8016", false, SF_DUPLICATE, "8016 inside an A1000 200: a duplicate order, to be looked up");
	sf_case(doc, "update_order_cancel_success", false, SF_OK, "a cancel that succeeded");
	sf_case(doc, "update_order_already_cancelled_8037", false, SF_ALREADY_CANCELLED, "8037: already cancelled");
	shipsync_json_free(doc);

	sf_literal("{\"apiResultCode\":\"A1006\",\"apiErrorMsg\":\"数字签名无效\",\"apiResultData\":null}", false, SF_AUTH,
			   "A1006 (bad signature): an auth failure");
	sf_literal("{\"apiResultCode\":\"A1004\",\"apiErrorMsg\":\"无对应服务权限\"}", false, SF_AUTH,
			   "A1004 (partner without the service): an auth failure");
	sf_literal("{\"apiResultCode\":\"A1099\",\"apiErrorMsg\":\"系统异常\"}", false, SF_RETRY, "A1099: retried");
	sf_literal("{\"apiResultCode\":\"A1777\"}", false, SF_RETRY, "an unknown gateway code: retried");
	sf_literal("{\"apiResultCode\":\"A1000\",\"apiResultData\":\"{\\\"success\\\":false,\\\"errorCode\\\":\\\"S0001\\\",\\\"errorMsg\\\":\\\"系统繁忙\\\"}\"}",
			   false, SF_RETRY, "S0001 (busy) inside A1000: retried");
	sf_literal("{\"apiResultCode\":\"A1000\",\"apiResultData\":{\"success\":false,\"errorCode\":\"1010\",\"errorMsg\":\"寄件地址不能为空\"}}",
			   false, SF_PERMANENT, "a data error (1010), apiResultData as an object: permanent");
	sf_literal("{\"apiResultCode\":\"A1000\",\"apiResultData\":{\"success\":false,\"errorCode\":\"8024\",\"errorMsg\":\"未下单\"}}",
			   true, SF_NOT_FOUND, "a search that finds no order");
	sf_literal("{\"apiResultCode\":\"A1000\",\"apiResultData\":{\"success\":true,\"errorCode\":\"S0000\",\"msgData\":{\"orderId\":\"1\","
			   "\"waybillNoInfoList\":[{\"waybillType\":2,\"waybillNo\":\"SF2\"},{\"waybillType\":1,\"waybillNo\":\"SF1\"}]}}}",
			   true, SF_OK, "a search that finds the order");
	text2 = "{\"apiResultCode\":\"A1000\",\"apiResultData\":\"{not json\"}";
	check(!shipsync_parse_sf_response(text2, strlen(text2), false, &r, err, sizeof(err)) &&
		  strstr(err, "apiResultData"), "double-encoded JSON that is broken is a bad response");
	text2 = "{\"apiResultCode\":\"A1000\",\"apiResultData\":{\"success\":true,\"errorCode\":\"S0000\",\"msgData\":{}}}";
	check(!shipsync_parse_sf_response(text2, strlen(text2), false, &r, err, sizeof(err)) && strstr(err, "waybill"),
		  "a create that succeeded without a waybill is a bad response");
	check(!shipsync_parse_sf_response("<html>", 6, false, &r, err, sizeof(err)), "not JSON: a bad response");
	free(text);
	free(misc);
}

static void
test_token(void)
{
	char	   *tok;
	long		exp;
	char		err[256];
	const char *ok1 = "{\"access_token\":\"eyJhbGciOi.x-y_z\",\"token_type\":\"bearer\",\"expires_in\":3599}";
	const char *ok2 = "{\"access_token\":\"abc\"}";
	const char *strexp = "{\"access_token\":\"abc\",\"token_type\":\"Bearer\",\"expires_in\":\"120\"}";
	const char *mac = "{\"access_token\":\"abc\",\"token_type\":\"mac\"}";
	const char *crlf = "{\"access_token\":\"abc\\r\\nX-Evil: 1\"}";
	const char *none = "{\"error\":\"invalid_client\"}";

	check(shipsync_parse_token_response(ok1, strlen(ok1), &tok, &exp, err, sizeof(err)) &&
		  strcmp(tok, "eyJhbGciOi.x-y_z") == 0 && exp == 3599, "an OAuth2 token answer is read");
	free(tok);
	check(shipsync_parse_token_response(ok2, strlen(ok2), &tok, &exp, err, sizeof(err)) && exp == 3600,
		  "no expires_in: an hour");
	free(tok);
	check(shipsync_parse_token_response(strexp, strlen(strexp), &tok, &exp, err, sizeof(err)) && exp == 120,
		  "expires_in as a string, token_type in any case");
	free(tok);
	check(!shipsync_parse_token_response(mac, strlen(mac), &tok, &exp, err, sizeof(err)) &&
		  strstr(err, "not Bearer"), "a token type other than Bearer is refused");
	check(!shipsync_parse_token_response(crlf, strlen(crlf), &tok, &exp, err, sizeof(err)) &&
		  tok == NULL, "a token that would break the header line is refused");
	check(!shipsync_parse_token_response(none, strlen(none), &tok, &exp, err, sizeof(err)) &&
		  strstr(err, "access_token"), "an error answer has no token");
}

static int
track(const char *dialect, const char *body, long status, TrackClass want, const char *want_id)
{
	char	   *id,
			   *st;
	char		err[256];
	TrackerAnswerReader read = strcmp(dialect, "easypost") == 0 ? shipsync_tracker_answer_easypost :
		strcmp(dialect, "aftership") == 0 ? shipsync_tracker_answer_aftership :
		shipsync_tracker_answer_kuaidi100;
	TrackClass	c = read(body, strlen(body), status, &id, &st, err, sizeof(err));
	int			ok = c == want && (want_id == NULL || (id && strcmp(id, want_id) == 0));

	if (!ok)
		printf("#   %s %ld: class %d id %s err %s\n", dialect, status, (int) c, id ? id : "-", err);
	free(id);
	free(st);
	return ok;
}

static void
test_trackers(void)
{
	char	   *ep = slurp("easypost_tracker_retrieve_docs.json");

	check(ep && track("easypost", ep, 201, TRACK_OK, NULL), "EasyPost's documented Tracker object is a registration");
	free(ep);
	check(track("easypost", "{\"id\":\"trk_1\",\"status\":\"pre_transit\"}", 200, TRACK_OK, "trk_1") &&
		  track("easypost", "{\"error\":{\"code\":\"APIKEY.INACTIVE\"}}", 401, TRACK_HTTP, NULL) &&
		  track("easypost", "{\"object\":\"Tracker\"}", 201, TRACK_RETRY, NULL),
		  "EasyPost: the tracker id; errors judged by HTTP; a 2xx without id retried");
	check(track("aftership", "{\"meta\":{\"code\":201},\"data\":{\"tracking\":{\"id\":\"as1\",\"tag\":\"Pending\"}}}", 201, TRACK_OK, "as1") &&
		  track("aftership", "{\"meta\":{\"code\":4003,\"message\":\"Tracking already exists.\"},\"data\":{\"tracking\":{\"id\":\"as1\"}}}", 400, TRACK_OK, "as1") &&
		  track("aftership", "{\"meta\":{\"code\":401,\"message\":\"Invalid API key.\"},\"data\":{}}", 401, TRACK_AUTH, NULL) &&
		  track("aftership", "{\"meta\":{\"code\":4001}}", 400, TRACK_HTTP, NULL),
		  "AfterShip: created, 4003 already exists is a success (with HTTP 400), 401 auth");
	check(track("aftership", "{\"meta\":{\"code\":503,\"message\":\"Service Unavailable\"},\"data\":{}}", 200, TRACK_RETRY, NULL) &&
		  track("aftership", "{\"meta\":{\"code\":429}}", 200, TRACK_RETRY, NULL) &&
		  track("aftership", "{\"data\":{\"tracking\":{\"id\":\"as1\"}}}", 201, TRACK_RETRY, "as1") &&
		  track("aftership", "{\"meta\":{\"code\":4005,\"message\":\"invalid\"},\"data\":{}}", 200, TRACK_PERMANENT, NULL),
		  "AfterShip: a failure inside a 2xx by meta.code: 429 and 5xx retried, 4xxx permanent, no meta retried");
	check(track("kuaidi100", "{\"result\":true,\"returnCode\":\"200\",\"message\":\"提交成功\"}", 200, TRACK_OK, NULL) &&
		  track("kuaidi100", "{\"result\":false,\"returnCode\":\"501\",\"message\":\"重复订阅\"}", 200, TRACK_OK, NULL) &&
		  track("kuaidi100", "{\"result\":false,\"returnCode\":\"600\"}", 200, TRACK_AUTH, NULL) &&
		  track("kuaidi100", "{\"result\":false,\"returnCode\":\"601\"}", 200, TRACK_AUTH, NULL) &&
		  track("kuaidi100", "{\"result\":false,\"returnCode\":\"701\"}", 200, TRACK_PERMANENT, NULL) &&
		  track("kuaidi100", "{\"result\":false,\"returnCode\":\"500\"}", 200, TRACK_RETRY, NULL) &&
		  track("kuaidi100", "<html>", 200, TRACK_RETRY, NULL),
		  "Kuaidi100 subscribe: 200 and 501 ok, 600/601 auth, 70x permanent, 500 and garbage retried");
}

/* in test_mask.c */
void		test_mask(void);

int
main(void)
{
	test_sf_digest();
	test_paths();
	test_render();
	test_transforms();
	test_flat_row();
	test_secret_options();
	test_sf_responses();
	test_token();
	test_trackers();
	test_mask();
	return unit_done();
}
