-- install/55_outbound.sql: Outbound hosts and per-provider TLS: the checks
-- create_provider() makes of where and how pg_shipsync connects.
-- A part of pg_shipsync--0.2.sql (see the Makefile); every privilege is
-- granted in 90_privileges.sql.

------------------------------------------------------------------------------
-- Outbound hosts (shipsync.allowed_hosts) and the tls option
------------------------------------------------------------------------------

-- The dispatcher judges every address it connects to (src/http.c); this is
-- the same rule for a URL whose host is an address, when it is given.
CREATE FUNCTION @extschema@._check_host(url text)
RETURNS void
AS 'MODULE_PATHNAME', 'shipsync_check_host'
LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION @extschema@._check_host(text) IS
	'Internal: refuse a URL whose host is a loopback, private, link-local or other internal address that shipsync.allowed_hosts does not allow.';

CREATE FUNCTION @extschema@._check_tls(ca_bundle text, client_cert text, client_key text)
RETURNS void
AS 'MODULE_PATHNAME', 'shipsync_check_tls'
LANGUAGE C IMMUTABLE;
COMMENT ON FUNCTION @extschema@._check_tls(text, text, text) IS
	'Internal: check the PEM texts of option tls: certificates, an unencrypted private key, and that the key belongs to the client certificate.';

-- Option tls of create_provider(): its fields, their forms, and the PEM
-- texts (through _check_tls).  No message quotes a value: client_key is a
-- secret.
CREATE FUNCTION @extschema@._check_tls_option(tls jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k text;
BEGIN
	IF tls IS NULL THEN
		RETURN;
	END IF;
	IF jsonb_typeof(tls) <> 'object' THEN
		RAISE EXCEPTION 'option "tls" must be a JSON object'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = E'For example {"ca_bundle": "-----BEGIN CERTIFICATE-----\\n...", "min_version": "1.3"}.';
	END IF;
	PERFORM @extschema@._check_options(tls,
		ARRAY['ca_bundle', 'client_cert', 'client_key', 'min_version', 'pinned_public_key'], 'tls');
	FOR k IN SELECT jsonb_object_keys(tls) LOOP
		IF k <> 'min_version' AND (jsonb_typeof(tls->k) <> 'string' OR tls->>k = '') THEN
			RAISE EXCEPTION 'tls option "%" must be a non-empty string', k
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Give PEM texts and the pin as JSON strings.';
		END IF;
	END LOOP;
	IF tls ? 'min_version' AND (jsonb_typeof(tls->'min_version') NOT IN ('string', 'number')
		OR tls->>'min_version' NOT IN ('1.2', '1.3')) THEN
		RAISE EXCEPTION 'tls option "min_version" must be "1.2" or "1.3"'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'pg_shipsync never speaks TLS below 1.2.',
				  HINT = 'Give "1.3" to refuse TLS 1.2, or leave it out.';
	END IF;
	IF tls ? 'pinned_public_key'
	   AND (tls->>'pinned_public_key') !~ '^sha256//[A-Za-z0-9+/]{43}=(;sha256//[A-Za-z0-9+/]{43}=)*$' THEN
		RAISE EXCEPTION 'tls option "pinned_public_key" must be "sha256//" and a base64 SHA-256 digest'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Several pins are separated by ";"; the carrier''s key must match one of them.',
				  HINT = 'openssl x509 -in cert.pem -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64';
	END IF;
	PERFORM @extschema@._check_tls(tls->>'ca_bundle', tls->>'client_cert', tls->>'client_key');
END
$$;
