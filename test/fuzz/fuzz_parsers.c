/*
 * fuzz_parsers.c
 *		libFuzzer target over the parsers that need no server: carrier
 *		responses (json.c), Retry-After values, decimal amounts and the
 *		backoff arithmetic (retry.c), SF Express responses, JSON paths with
 *		filters, field maps and their transforms (mapping.c), OAuth2 token
 *		and tracking-registration answers, form encoding and request
 *		signatures (sign.c), tracking payloads of every dialect (json.c),
 *		webhook signatures and form fields (signature.c), and the addresses
 *		and allowlists of shipsync.allowed_hosts (hostcheck.c).
 *
 * The first byte chooses what to feed; the rest is the input.  Built with
 * ASan and UBSan by test/fuzz/Makefile; bin/test runs it for a bounded
 * time and fails on any crash, leak or sanitizer report.
 */
#define SHIPSYNC_PLAIN_C
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pg_shipsync.h"

/* out of memory in the code under test: stop here (the server raises an ERROR) */
void
shipsync_out_of_memory(void)
{
	abort();
}

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* split s at its first newline: s is the first part, the rest returned */
static char *
next_line(char *s)
{
	char	   *nl = strchr(s, '\n');

	if (nl == NULL)
		return NULL;
	*nl = '\0';
	return nl + 1;
}

/* "path\njson": parse the path, read it from the document */
static void
fuzz_path(char *s)
{
	char	   *doc_text = next_line(s);
	MapPath		p;
	MapValue	v;
	char		err[256];
	ShipJson   *doc;

	if (!shipsync_path_parse(s, &p, err, sizeof(err)))
		return;
	if (doc_text && (doc = shipsync_json_parse(doc_text, strlen(doc_text), err, sizeof(err))) != NULL)
	{
		if (shipsync_json_get(doc, &p, &v))
			shipsync_value_free(&v);
		shipsync_json_free(doc);
	}
	shipsync_path_free(&p);
}

/* "target\ntransform\narg\nrow": compile a one-rule map and render a row */
static void
fuzz_map(char *s)
{
	char	   *xf = next_line(s);
	char	   *arg = xf ? next_line(xf) : NULL;
	char	   *row = arg ? next_line(arg) : NULL;
	const char *targets[2] = {s, "b[k=1].c"};
	const char *sources[2] = {"a", "option:a.b"};
	const char *xfs[2] = {xf, "trim"};
	const char *args[2] = {arg, NULL};
	bool		req[2] = {true, false};
	char		err[256];
	ShipMap    *m;
	MapEnv		env = {0};
	char	   *out = NULL;

	if (row == NULL)
		return;
	m = shipsync_map_compile(2, targets, sources, xfs, args, NULL, req, err, sizeof(err));
	if (m == NULL)
		return;
	env.row = shipsync_json_parse(row, strlen(row), err, sizeof(err));
	env.options = env.row;
	env.order_key = "1";
	if (shipsync_map_render(m, &env, (row[0] & 1) != 0, &out, err, sizeof(err)) == MAP_OK)
		free(out);
	{
		/* the same through the one-scan row index */
		static MapRowIndex idx;
		MapEnv		flat = env;

		if (shipsync_row_index(row, (row[0] & 2) ? "order" : NULL, &idx))
		{
			flat.flat = &idx;
			if (shipsync_map_render(m, &flat, false, &out, err, sizeof(err)) == MAP_OK)
				free(out);
		}
	}
	if (env.row)
	{
		char	  **fields;
		MapValue   *values;
		int			n;

		(void) shipsync_map_read(m, env.row, &env, &fields, &values, &n, err, sizeof(err));
		for (int i = 0; i < n; i++)
		{
			free(fields[i]);
			shipsync_value_free(&values[i]);
		}
		free(fields);
		free(values);
	}
	shipsync_json_free(env.row);
	shipsync_map_free(m);
}

/* "transform\narg\nvalue": one transform on one string */
static void
fuzz_transform(char *s)
{
	char	   *arg = next_line(s);
	char	   *val = arg ? next_line(arg) : NULL;
	MapValue	in;
	MapValue	out;
	char		err[256];

	if (val == NULL)
		return;
	in.type = MV_STRING;
	in.s = val;
	if (shipsync_map_transform(s, arg, &in, NULL, &out, err, sizeof(err)))
		shipsync_value_free(&out);
}

static char *
fuzz_mask_cb(int kind, const char *value, void *arg)
{
	return shipsync_mask_pii(kind, value);
}

static int
fuzz_member_cb(const char *member, void *arg)
{
	return shipsync_pii_column_kind(member);
}

/* "path\ndocument": every kind of mask on the text, the path masked in it */
static void
fuzz_mask(char *s, int kind)
{
	char	   *doc = next_line(s);
	MapPath		p;
	char		err[256];
	char	   *out = NULL;

	for (int k = PII_NAME; k <= PII_TEXT; k++)
		free(shipsync_mask_pii(k, s));
	(void) shipsync_pii_column_kind(s);
	if (doc == NULL || !shipsync_path_parse(s, &p, err, sizeof(err)))
		return;
	(void) shipsync_json_mask(doc, strlen(doc), 1, &p, &kind, "order", fuzz_member_cb,
							  fuzz_mask_cb, NULL, &out);
	free(out);
	shipsync_path_free(&p);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char	   *s;
	char		err[256];
	ShipResponse r;

	if (size < 1)
		return 0;
	s = malloc(size);
	memcpy(s, data + 1, size - 1);
	s[size - 1] = '\0';

	switch (data[0] % 12)
	{
		case 0:
		case 1:
			(void) shipsync_check_response_text(s, size - 1, err, sizeof(err));
			if (shipsync_parse_ship_response(s, size - 1, data[0] % 2 == 0, &r, err, sizeof(err)))
				shipsync_free_ship_response(&r);
			break;
		case 2:
			{
				/* whatever the carrier says: no wait, or one of a day at most */
				long		wait = shipsync_parse_wait(s, (data[0] / 12) % 2 == 0,
													   (time_t) 1700000000);

				if (wait < -1 || wait > 86400L * 1000)
					abort();
			}
			(void) shipsync_is_decimal(s);
			{
				ShipAllowList *l = shipsync_allowlist_parse(s, err, sizeof(err));
				ShipAddr	a;

				if (shipsync_addr_parse(s, &a))
					(void) shipsync_addr_kind(&a);
				if (l != NULL)
				{
					(void) shipsync_addr_parse("10.8.1.2", &a);
					(void) shipsync_allowlist_covers(l, &a);
					(void) shipsync_allowlist_names(l, "gw.corp.example.");
					free(l);
				}
			}
			{
				/* an amount, and the same bytes as a statement (NULs included) */
				char	   *norm = malloc(size);
				const char *why;
				CsvReader	csv;
				int			line;

				(void) shipsync_amount_check(s, norm, &why);
				free(norm);
				shipsync_csv_init(&csv, (const char *) data + 1, size - 1, data[0] & 0x40 ? ';' : ',');
				while (shipsync_csv_next(&csv, &line, err, sizeof(err)) == 1)
					;
				shipsync_csv_free(&csv);
			}
			break;
		case 3:
			if (size >= 9)
			{
				int			attempt;
				long		base;

				memcpy(&attempt, data + 1, sizeof(int));
				base = 0;
				memcpy(&base, data + 1, sizeof(long) < size - 1 ? sizeof(long) : size - 1);
				/* any provider's values: 1 ms .. 1 day, the cap from 0 to 3x */
				base = (long) ((unsigned long) base % 86400000UL);
				(void) shipsync_backoff_ms(attempt, base, base * (data[1] % 4),
										   (double) data[size - 1] / 256.0);
			}
			break;
		case 4:
			{
				SfResponse	sr;
				char	   *tok;
				long		exp;

				if (shipsync_parse_sf_response(s, size - 1, data[0] & 0x10, &sr, err, sizeof(err)))
					shipsync_free_sf_response(&sr);
				if (shipsync_parse_token_response(s, size - 1, &tok, &exp, err, sizeof(err)))
					free(tok);
				{
					static const TrackerAnswerReader readers[] = {
						shipsync_tracker_answer_easypost, shipsync_tracker_answer_aftership,
					shipsync_tracker_answer_kuaidi100};
					char	   *id,
							   *st;

					(void) readers[data[0] % 3] (s, size - 1, (data[0] & 0x20) ? 400 : 200,
												 &id, &st, err, sizeof(err));
					free(id);
					free(st);
				}
			}
			break;
		case 5:
			fuzz_path(s);
			break;
		case 6:
			fuzz_map(s);
			break;
		case 7:
			{
				char	   *e = shipsync_urlencode_java(s);
				char	   *d = shipsync_sf_digest(s, "12312334453453", e);

				free(e);
				free(d);
			}
			break;
		case 8:
			fuzz_transform(s);
			break;
		case 9:
			{
				static const TrackingReader readers[] = {shipsync_parse_tracking_generic,
					shipsync_parse_tracking_easypost, shipsync_parse_tracking_aftership,
				shipsync_parse_tracking_kuaidi100, shipsync_parse_tracking_sf_express};
				TrackEventList l;
				ShipListPage pg;

				(void) readers[(data[0] / 12) % 5] (s, size - 1, &l, err, sizeof(err));
				shipsync_free_tracking(&l);
				/* a carrier's list of its shipments (reconciliation) */
				(void) shipsync_parse_shipment_list(s, size - 1, &pg, err, sizeof(err));
				shipsync_free_shipment_list(&pg);
			}
			break;
		case 10:
			{
				const char *why;
				char	   *param = shipsync_form_field(s, size - 1, "param");
				char	   *sign = shipsync_form_field(s, size - 1, "sign");

				(void) shipsync_verify_kuaidi100("salt", param, sign, &why);
				(void) shipsync_verify_standard_webhooks("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
														 "msg_1", "1614265330", s, "{}", 2,
														 1614265330, 300, &why);
				(void) shipsync_verify_hmac_body("secret", s, "hmac-sha256-hex=", true,
												 "{}", 2, &why);
				(void) shipsync_verify_jiandaoyun("test-secret", param, sign, s, s, size - 1, &why);
				free(param);
				free(sign);
			}
			break;
		case 11:
			fuzz_mask(s, (data[0] / 12) % (PII_TEXT + 1));
			break;
	}
	free(s);
	return 0;
}
