/*-------------------------------------------------------------------------
 *
 * dialect.c
 *		The table of dialects, and what they share: rendering through a
 *		field map, reading an answer, judging a tracking registration.
 *
 * A dialect is one file of src/dialects/ behind one interface, the
 * DialectRoutine of dispatcher.h (FdwRoutine style): how a create, update
 * or cancel is rendered, how a waybill is registered at a tracking
 * provider, the last touches before a request goes (secrets put into the
 * body, signed headers), how an answer is judged (done, or retried or dead
 * through the dispatcher's one retry tail), a follow-up request on the
 * same flight (SF Express looks an order up after 8016), a fee query, and
 * how the carrier's pushes are signed and answered.  Adding a carrier is
 * one file and one line in dialect_table below (docs/architecture.md shows
 * how, with the smallest dialect).
 *
 * The dialects sit below provider.c, which finds a provider's dialect here
 * by name when it loads it: neither this file nor a dialect calls the
 * loader, the claim, the apply or the dispatcher.  What they read of a
 * carrier's JSON, json.c reads (json-c stays in json.c); what they sign,
 * sign.c and crypto.c sign.
 *
 * What several dialects share (rendering through a field map, reading an
 * answer, judging a tracking registration) is in dialects/shared.c, below
 * them; the header lines of every request to a provider are built here,
 * for the dispatcher, the pulls and the reconciliation.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>


#include "pg_shipsync.h"
#include "dispatcher.h"

/* Every dialect, by name: one line each */
static const DialectRoutine *const dialect_table[] = {
	&generic_dialect,
	&sf_express_dialect,
	&easypost_dialect,
	&aftership_dialect,
	&kuaidi100_dialect,
};

/*
 * The dialect named name (shipsync.provider.dialect, which a CHECK keeps
 * to known names); generic for a name it does not know.
 */
const DialectRoutine *
dialect_find(const char *name)
{
	for (int i = 0; name && i < (int) lengthof(dialect_table); i++)
		if (strcmp(name, dialect_table[i]->name) == 0)
			return dialect_table[i];
	return &generic_dialect;
}
/*
 * The header lines of a request to p, for http.c (which frees them with the
 * transfer): Idempotency-Key (when one is given: a pull has none), the
 * content type of the dialect's bodies (when there is a body), Accept, no
 * "Expect: 100-continue" round trip, the provider's static and auth
 * headers, and its OAuth2 token.
 */
struct curl_slist *
dialect_headers(Provider *p, const char *idempotency_key, bool has_body)
{
	struct curl_slist *h = NULL;
	char		line[128];

	if (idempotency_key)
	{
		snprintf(line, sizeof(line), "Idempotency-Key: %s", idempotency_key);
		h = curl_slist_append(h, line);
	}
	if (has_body)
		h = curl_slist_append(h, p->dialect->form_body ?
							  "Content-Type: application/x-www-form-urlencoded" :
							  "Content-Type: application/json");
	h = curl_slist_append(h, "Accept: application/json");
	h = curl_slist_append(h, "Expect:");
	for (int i = 0; i < p->nheaders; i++)
		h = curl_slist_append(h, p->headers[i]);
	if (p->oauth_token)
		h = curl_slist_append(h, psprintf("Authorization: Bearer %s", p->oauth_token));
	return h;
}
