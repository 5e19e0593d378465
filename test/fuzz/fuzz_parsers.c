/*
 * fuzz_parsers.c
 *		libFuzzer target over the parsers that need no server: carrier
 *		responses (json.c), Retry-After values, decimal amounts and the
 *		backoff arithmetic (retry.c), tracking payloads of every dialect
 *		(json.c) and webhook signatures and form fields (signature.c).
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

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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

	switch (data[0] % 6)
	{
		case 0:
		case 1:
			if (shipsync_parse_ship_response(s, size - 1, data[0] % 2 == 0, &r, err, sizeof(err)))
				shipsync_free_ship_response(&r);
			break;
		case 2:
			(void) shipsync_parse_retry_after(s, (time_t) 1700000000);
			(void) shipsync_is_decimal(s);
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
				static const char *const dialects[] = {"generic", "easypost", "aftership",
				"kuaidi100", "sf_express"};
				TrackEventList l;

				(void) shipsync_parse_tracking(dialects[(data[0] / 6) % 5], s, size - 1, &l,
											   err, sizeof(err));
				shipsync_free_tracking(&l);
			}
			break;
		case 5:
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
				free(param);
				free(sign);
			}
			break;
	}
	free(s);
	return 0;
}
