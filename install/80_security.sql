-- install/80_security.sql: Roles that mean what they say: personal data masked
-- for readers, the "who" columns set by the server, and the audit log.
-- A part of pg_shipsync--0.2.sql (see the Makefile); every privilege is
-- granted in 90_privileges.sql.  docs/security.md explains it all.

------------------------------------------------------------------------------
-- Who did it (src/audit.c)
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@._actor()
RETURNS name
AS 'MODULE_PATHNAME', 'shipsync_actor'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._actor() IS
	'Internal: who a change is recorded as made by: the session user, or the name of the extension''s own worker (dispatcher).';

CREATE FUNCTION @extschema@._caller()
RETURNS name
AS 'MODULE_PATHNAME', 'shipsync_caller'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._caller() IS
	'Internal: the role the session acts as (after SET ROLE), also inside a SECURITY DEFINER function.';

CREATE FUNCTION @extschema@._in_extension_script()
RETURNS boolean
AS 'MODULE_PATHNAME', 'shipsync_in_extension_script'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._in_extension_script() IS
	'Internal: true while CREATE EXTENSION or ALTER EXTENSION UPDATE runs; what those scripts seed is not audited.';

CREATE FUNCTION @extschema@._restoring()
RETURNS boolean
AS 'MODULE_PATHNAME', 'shipsync_restoring'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._restoring() IS
	'Internal: true in a restore''s session (a superuser''s with check_function_bodies off, as pg_dump''s scripts and pg_restore set it), never in the extension''s workers nor while a table owner''s code runs as that owner: what it loads is neither audited nor folded into open tickets.';

------------------------------------------------------------------------------
-- Personal data, masked for shipsync_reader (src/mask.c, src/privacy.c)
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.mask_pii(value text, kind text)
RETURNS text
AS 'MODULE_PATHNAME', 'shipsync_mask_pii_sql'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.mask_pii(text, text) IS
	'A personal value masked as shipsync_reader sees it; kind is name (张三: 张*, John Smith: J*** Smith), phone (138****5678), address (cut after the district or the first comma: 深圳市南山区***), email (z***@example.com), id_number (an ID card''s or a passport''s: **************1234) or text (free text: every run of seven digits or more keeps its last four: 电话*******5678).';

CREATE FUNCTION @extschema@._mask_body(body text, paths text[], kinds text[], columns jsonb)
RETURNS text
AS 'MODULE_PATHNAME', 'shipsync_mask_body'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._mask_body(text, text[], text[], jsonb) IS
	'Internal: a request body with the values at the personal paths of its profile masked, and, in the generic body, the members of "order" that columns (the binding''s option pii) or the column convention mark personal.';

CREATE FUNCTION @extschema@._pii_visible()
RETURNS boolean
AS 'MODULE_PATHNAME', 'shipsync_pii_visible'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._pii_visible() IS
	'Internal: whether the role whose code runs sees personal values whole (shipsync_operator and above, superusers): the role the session acts as, or, inside a security-restricted operation, the owner whose code it runs (a table owner''s trigger the dispatcher fires, a materialized view a superuser refreshes).';

-- The personal target paths of each provider's profile, as the field map
-- marks them now.
CREATE VIEW @extschema@._pii_rules AS
SELECT p.provider_id,
	   pg_catalog.array_agg(f.target_path ORDER BY f.position, f.field_map_id) AS paths,
	   pg_catalog.array_agg(f.pii ORDER BY f.position, f.field_map_id) AS kinds
FROM @extschema@.provider p
JOIN @extschema@.field_map f
  ON f.profile = coalesce(p.options->>'profile', p.dialect)
 AND f.direction = 'out' AND f.pii IS NOT NULL
GROUP BY p.provider_id;
COMMENT ON VIEW @extschema@._pii_rules IS
	'Internal: per provider, the target paths its profile''s field map marks personal, and their kinds.';

-- The digests are of the whole body and of the whole order row, personal
-- values included: beside the masked body, the few characters a mask hides
-- are found by trying them against the digest.  A reader gets NULL.
CREATE VIEW @extschema@.intents AS
SELECT o.id, o.binding_id, o.provider_id, o.order_key, o.op, o.idempotency_key, o.state,
	   o.attempts, o.next_attempt_at, o.lease_until, o.created_at, o.updated_at, o.done_at,
	   o.request_method, o.request_url,
	   CASE WHEN (SELECT @extschema@._pii_visible()) THEN o.request_body
			ELSE @extschema@._mask_body(o.request_body, r.paths, r.kinds, b.options->'pii')
	   END AS request_body,
	   CASE WHEN (SELECT @extschema@._pii_visible()) THEN o.request_digest END AS request_digest,
	   o.last_status, o.error_class, o.last_error, o.coalesced_into,
	   CASE WHEN (SELECT @extschema@._pii_visible()) THEN o.content_digest END AS content_digest,
	   o.request_kind, o.waybill
FROM @extschema@.outbox o
LEFT JOIN @extschema@._pii_rules r ON r.provider_id = o.provider_id
LEFT JOIN @extschema@.binding b ON b.binding_id = o.binding_id;
COMMENT ON VIEW @extschema@.intents IS
	'The outbox as its readers may see it: every column of shipsync.outbox, with the personal values of request_body masked, and request_digest and content_digest (digests of the unmasked body and order row) NULL, unless the reader is a member of shipsync_operator. shipsync_reader reads this view, not the table.';

------------------------------------------------------------------------------
-- The audit log
------------------------------------------------------------------------------

CREATE TABLE @extschema@.audit_log (
	audit_id		bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	at				timestamptz NOT NULL DEFAULT pg_catalog.now(),
	"session_user"	name NOT NULL,
	"current_user"	name NOT NULL,
	action			text NOT NULL,
	object_kind		text NOT NULL,
	object_name		text,
	old_value		jsonb,
	new_value		jsonb
);
CREATE INDEX audit_log_at_idx ON @extschema@.audit_log USING brin (at);
CREATE INDEX audit_log_object_idx ON @extschema@.audit_log (object_kind, object_name, at);
COMMENT ON TABLE @extschema@.audit_log IS
	'Every change of providers, secrets, bindings, field maps, status maps, fee type maps, currencies and stuck thresholds, and every state-changing call (attach, detach, pause, resume, retry, requeue, set_secret, rotate_key, ack, resolve, reconcile, resync, import_statement): when, by whom, and the values before and after, secrets shown as "(set)" or "(changed)". Only the extension''s owner may change or delete rows; the dispatcher prunes rows older than shipsync.audit_retention.';
COMMENT ON COLUMN @extschema@.audit_log."session_user" IS
	'The session user, or the extension''s own worker (dispatcher).';
COMMENT ON COLUMN @extschema@.audit_log."current_user" IS
	'The role the session acted as (after SET ROLE), outside any SECURITY DEFINER function.';
COMMENT ON COLUMN @extschema@.audit_log.action IS
	'The function called (attach, pause, ...), or insert, update, delete or truncate for a change made directly to the table.';
COMMENT ON COLUMN @extschema@.audit_log.object_name IS
	'provider: its name; binding: the table; field_map: profile/direction/target_path; status_map: profile/raw_status/pattern; fee_type_map: profile/code; currency: its code; stuck_after: the status; intent: its id; ticket: its id; statement: provider/period(/account).';
COMMENT ON COLUMN @extschema@.audit_log.old_value IS
	'An insert: null; a delete: the whole row; an update: the columns that changed, as they were.';
COMMENT ON COLUMN @extschema@.audit_log.new_value IS
	'An insert: the whole row; a delete: null; an update: the columns that changed, as they are now.';

-- Write one audit row, unless an extension script is running.  A row the
-- restore of a dump would collide with (ids restart while the log itself is
-- restored) is left out rather than failing the restore.
CREATE FUNCTION @extschema@._audit(action text, object_kind text, object_name text,
								   old_value jsonb, new_value jsonb)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF @extschema@._in_extension_script() THEN
		RETURN;
	END IF;
	INSERT INTO @extschema@.audit_log ("session_user", "current_user", action, object_kind,
									   object_name, old_value, new_value)
	VALUES (@extschema@._actor(), @extschema@._caller(), $1, $2, $3, $4, $5)
	ON CONFLICT (audit_id) DO NOTHING;
END
$$;
COMMENT ON FUNCTION @extschema@._audit(text, text, text, jsonb, jsonb) IS
	'Internal: record one action in shipsync.audit_log.';

-- The secrets of a row as "(set)", or, compared with the row before the
-- change, "(changed)" when they differ.  spec maps a member to true (it is
-- secret), to {"except": [...]} (every member of it but those is secret),
-- or to the spec of its own members.
CREATE FUNCTION @extschema@._audit_redact(r jsonb, before jsonb, spec jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k text;
	rule jsonb;
	m text;
	was jsonb;
BEGIN
	IF r IS NULL OR jsonb_typeof(r) <> 'object' THEN
		RETURN r;
	END IF;
	FOR k, rule IN SELECT key, value FROM jsonb_each(spec) LOOP
		CONTINUE WHEN coalesce(jsonb_typeof(r->k), 'null') = 'null';
		-- the member before, {} if the row before lacked it
		was := CASE WHEN before IS NOT NULL THEN coalesce(before->k, '{}') END;
		IF rule = 'true' OR jsonb_typeof(r->k) <> 'object' THEN
			r := jsonb_set(r, ARRAY[k], to_jsonb(CASE WHEN before IS NULL OR before->k = r->k
													 THEN '(set)' ELSE '(changed)' END));
		ELSIF rule ? 'except' THEN
			FOR m IN SELECT jsonb_object_keys(r->k) LOOP
				CONTINUE WHEN rule->'except' ? m;
				r := jsonb_set(r, ARRAY[k], @extschema@._audit_redact(r->k, was,
																	  jsonb_build_object(m, true)));
			END LOOP;
		ELSE
			r := jsonb_set(r, ARRAY[k], @extschema@._audit_redact(r->k, was, rule));
		END IF;
	END LOOP;
	RETURN r;
END
$$;
COMMENT ON FUNCTION @extschema@._audit_redact(jsonb, jsonb, jsonb) IS
	'Internal: a row as the audit log shows it, its secrets as "(set)" or "(changed)".';

-- What an audit row of a row change holds: the object's name (the named
-- columns of the row, joined by "/"), and the row before and after, secrets
-- redacted; for an update only the columns that changed (the updated_at
-- and updated_by stamps left out: the audit row says when and who).
CREATE FUNCTION @extschema@._audit_values(op text, name_columns text, spec jsonb,
										  old_row jsonb, new_row jsonb,
										  OUT object_name text, OUT old_value jsonb,
										  OUT new_value jsonb)
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	SELECT string_agg(coalesce(coalesce(new_row, old_row)->>c, ''), '/' ORDER BY n)
	INTO object_name
	FROM unnest(string_to_array(nullif(name_columns, ''), ',')) WITH ORDINALITY AS u(c, n);
	old_value := @extschema@._audit_redact(old_row, NULL, spec);
	new_value := @extschema@._audit_redact(new_row, old_row, spec);
	IF op = 'UPDATE' THEN
		SELECT coalesce(jsonb_object_agg(o.key, o.value), '{}'),
			   coalesce(jsonb_object_agg(o.key, new_value->o.key), '{}')
		INTO old_value, new_value
		FROM jsonb_each(old_value) o
		WHERE o.key NOT IN ('updated_at', 'updated_by')
		  AND o.value IS DISTINCT FROM new_value->o.key;
	END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._audit_values(text, text, jsonb, jsonb, jsonb) IS
	'Internal: the object name and the old and new values of one audited row change.';

-- The audit trigger of provider, secret, binding, field_map, status_map,
-- crm_source, fee_type_map and currency.  Arguments: the object kind, the columns naming the object,
-- the secret spec of _audit_redact().  A SECURITY DEFINER function (the
-- log is the owner's to write), so it refuses to run on any other table.
CREATE FUNCTION @extschema@._audit_row()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	v record;
BEGIN
	IF TG_TABLE_SCHEMA OPERATOR(pg_catalog.<>) '@extschema@'
	   OR NOT TG_TABLE_NAME OPERATOR(pg_catalog.=) ANY
		   (ARRAY['provider', 'secret', 'binding', 'field_map', 'status_map', 'crm_source',
				  'fee_type_map', 'currency', 'stuck_after']) THEN
		RAISE EXCEPTION 'shipsync._audit_row() audits the tables of pg_shipsync only'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = format('It fired on %I.%I.', TG_TABLE_SCHEMA, TG_TABLE_NAME);
	END IF;
	-- What a restore loads is no one's change, as what the extension's
	-- scripts seed is not: a superuser session with check_function_bodies
	-- off is pg_dump's script or pg_restore (both turn it off; only a
	-- superuser creates the extension, and a superuser could disable these
	-- triggers anyway).  Recorded, those rows took ids from a sequence the
	-- restore then set back, and the changes made after it were dropped.
	-- Never a worker's session, whose table owners' code may turn it off.
	IF @extschema@._restoring() THEN
		RETURN NULL;
	END IF;
	SELECT * INTO v FROM @extschema@._audit_values(TG_OP, TG_ARGV[1], TG_ARGV[2]::jsonb,
		to_jsonb(OLD), to_jsonb(NEW));
	PERFORM @extschema@._audit(
		coalesce(nullif(current_setting('shipsync.audit_action', true), ''), lower(TG_OP)),
		TG_ARGV[0], v.object_name, v.old_value, v.new_value);
	RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@._audit_row() IS
	'Internal: the audit trigger of the tables provider, secret, binding, field_map, status_map, crm_source, fee_type_map, currency and stuck_after.';

-- Only the extension's owner changes or deletes audit rows.  Privileges
-- already keep everyone else out; this stops other superusers too, with a
-- clear message.
CREATE FUNCTION @extschema@._audit_log_guard()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID)
	   IS DISTINCT FROM to_regrole(quote_ident(current_user))::oid THEN
		RAISE EXCEPTION 'only the owner of pg_shipsync may change or delete audit rows'
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = format('%s of shipsync.audit_log by role %s was refused.', TG_OP, current_user),
				  HINT = 'Rows older than shipsync.audit_retention are pruned by the dispatcher.';
	END IF;
	IF TG_OP = 'UPDATE' THEN
		RETURN NEW;
	END IF;
	RETURN OLD;
END
$$;
COMMENT ON FUNCTION @extschema@._audit_log_guard() IS
	'Internal: refuses UPDATE, DELETE and TRUNCATE of shipsync.audit_log by anyone but the extension''s owner.';
CREATE TRIGGER audit_log_guard BEFORE UPDATE OR DELETE ON @extschema@.audit_log
	FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_log_guard();
CREATE TRIGGER audit_log_guard_truncate BEFORE TRUNCATE ON @extschema@.audit_log
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_log_guard();

-- The dispatcher's pruning (src/audit.c): as the owner, whom the guard lets.
CREATE FUNCTION @extschema@._prune_audit(retention interval)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	-- at most 10,000 rows a call, the oldest first: a first pruning of a
	-- long log (2 million rows: 20 s) held the dispatcher's loop, so it
	-- comes back for the rest at its next idle checks (audit.c)
	DELETE FROM @extschema@.audit_log a
	 WHERE a.audit_id OPERATOR(pg_catalog.=) ANY (ARRAY(
			SELECT x.audit_id FROM @extschema@.audit_log x
			 WHERE x.at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) retention)
			 ORDER BY x.audit_id
			 LIMIT 10000));
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
COMMENT ON FUNCTION @extschema@._prune_audit(interval) IS
	'Internal: delete at most 10,000 of the audit rows older than retention, the oldest first, and return how many; the dispatcher calls it with shipsync.audit_retention until fewer are left.';

------------------------------------------------------------------------------
-- The "who" columns: set by the server, never taken from the caller
------------------------------------------------------------------------------

-- A provider's updated_at and updated_by; created_at and created_by stay.
CREATE FUNCTION @extschema@._provider_stamp()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	NEW.created_at := OLD.created_at;
	NEW.created_by := OLD.created_by;
	NEW.updated_at := now();
	NEW.updated_by := @extschema@._actor();
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION @extschema@._provider_stamp() IS
	'Internal: sets updated_at and updated_by of a changed provider, keeps created_at and created_by.';
CREATE TRIGGER provider_stamp BEFORE UPDATE ON @extschema@.provider
	FOR EACH ROW EXECUTE FUNCTION @extschema@._provider_stamp();

-- A ticket's acknowledged_by and resolved_by follow acknowledged_at and
-- resolved_at: whoever set those.
CREATE FUNCTION @extschema@._ticket_stamp()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	NEW.acknowledged_by := CASE
		WHEN NEW.acknowledged_at IS NULL THEN NULL
		WHEN NEW.acknowledged_at IS NOT DISTINCT FROM OLD.acknowledged_at THEN OLD.acknowledged_by
		ELSE @extschema@._actor() END;
	NEW.resolved_by := CASE
		WHEN NEW.resolved_at IS NULL THEN NULL
		WHEN NEW.resolved_at IS NOT DISTINCT FROM OLD.resolved_at THEN OLD.resolved_by
		ELSE @extschema@._actor() END;
	RETURN NEW;
END
$$;
COMMENT ON FUNCTION @extschema@._ticket_stamp() IS
	'Internal: sets acknowledged_by and resolved_by of a ticket to whoever set acknowledged_at and resolved_at.';
CREATE TRIGGER exception_ticket_stamp BEFORE UPDATE ON @extschema@.exception_ticket
	FOR EACH ROW EXECUTE FUNCTION @extschema@._ticket_stamp();

------------------------------------------------------------------------------
-- Tickets: acknowledged and resolved through functions
------------------------------------------------------------------------------

-- One step of a ticket's life, ack or resolve, with its note: false if it
-- was taken already.  The "who" column follows from the trigger above; the
-- step goes into the ticket's history (shipsync.ticket_event, 65_ledger.sql).
CREATE FUNCTION @extschema@._ticket_step(ticket bigint, step text, note text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	t record;
	after jsonb;
	is_ack boolean := step OPERATOR(pg_catalog.=) 'ack';
BEGIN
	SELECT x.acknowledged_at, x.resolved_at INTO t
	  FROM @extschema@.exception_ticket x
	 WHERE x.ticket_id OPERATOR(pg_catalog.=) _ticket_step.ticket FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'exception ticket % does not exist', coalesce(ticket::text, 'NULL')
			USING ERRCODE = 'undefined_object',
				  HINT = 'See SELECT ticket_id, kind, detail FROM shipsync.exception_ticket WHERE resolved_at IS NULL.';
	END IF;
	IF is_ack AND t.resolved_at IS NOT NULL THEN
		RAISE EXCEPTION 'exception ticket % is resolved', ticket
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = pg_catalog.format('It was resolved at %s.', t.resolved_at),
				  HINT = 'Only an open ticket is acknowledged; a problem seen again reopens its ticket.';
	END IF;
	IF (is_ack AND t.acknowledged_at IS NOT NULL) OR (NOT is_ack AND t.resolved_at IS NOT NULL) THEN
		RETURN false;
	END IF;
	UPDATE @extschema@.exception_ticket x
	   SET acknowledged_at = CASE WHEN is_ack THEN pg_catalog.now() ELSE x.acknowledged_at END,
		   acknowledgement = CASE WHEN is_ack THEN note ELSE x.acknowledgement END,
		   resolved_at = CASE WHEN is_ack THEN x.resolved_at ELSE pg_catalog.now() END,
		   resolution = CASE WHEN is_ack THEN x.resolution ELSE note END
	 WHERE x.ticket_id OPERATOR(pg_catalog.=) _ticket_step.ticket
	RETURNING CASE WHEN is_ack
		THEN pg_catalog.jsonb_build_object('acknowledged_at', x.acknowledged_at,
										   'acknowledged_by', x.acknowledged_by,
										   'acknowledgement', x.acknowledgement)
		ELSE pg_catalog.jsonb_build_object('resolved_at', x.resolved_at,
										   'resolved_by', x.resolved_by, 'resolution', x.resolution) END
	INTO after;
	PERFORM @extschema@._audit(step, 'ticket', ticket::text,
		(SELECT pg_catalog.jsonb_object_agg(k, NULL) FROM pg_catalog.jsonb_object_keys(after) k), after);
	RETURN true;
END
$$;
COMMENT ON FUNCTION @extschema@._ticket_step(bigint, text, text) IS
	'Internal: acknowledge (ack) or resolve one exception ticket with a note, and audit it.';

CREATE FUNCTION @extschema@.ack(ticket bigint, note text DEFAULT NULL)
RETURNS boolean
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT @extschema@._ticket_step($1, 'ack', $2) $$;
COMMENT ON FUNCTION @extschema@.ack(bigint, text) IS
	'Acknowledge an open exception ticket (someone is on it), with an optional note: acknowledged_at is now, acknowledged_by the session user, acknowledgement the note. Returns false if it already was; a resolved ticket cannot be acknowledged.';

CREATE FUNCTION @extschema@.resolve(ticket bigint, note text DEFAULT NULL)
RETURNS boolean
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT @extschema@._ticket_step($1, 'resolve', $2) $$;
COMMENT ON FUNCTION @extschema@.resolve(bigint, text) IS
	'Resolve an exception ticket, open or acknowledged, with an optional note: resolved_at is now, resolved_by the session user, resolution the note. Returns false if it already was resolved. A problem seen again reopens it.';

------------------------------------------------------------------------------
-- Audit triggers, and the actions of the functions whose changes they see
------------------------------------------------------------------------------

CREATE TRIGGER shipsync_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.provider
	FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_row('provider', 'name',
		'{"auth": {"except": ["type", "header", "customer", "partner_id", "token_url", "client_id", "scope"]},
		  "headers": {"except": []},
		  "options": {"webhook_secret": true, "previous_webhook_secret": true, "headers": {"except": []}}}');
CREATE TRIGGER shipsync_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.binding
	FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_row('binding', 'tbl', '{}');
CREATE TRIGGER shipsync_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.field_map
	FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_row('field_map', 'profile,direction,target_path', '{}');
CREATE TRIGGER shipsync_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.status_map
	FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_row('status_map', 'profile,raw_status,pattern', '{}');
CREATE TRIGGER shipsync_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.crm_source
	FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_row('crm_source', 'name', '{}');
CREATE TRIGGER shipsync_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.secret
	FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_row('secret', 'provider,name', '{"ciphertext": true}');
CREATE TRIGGER shipsync_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.stuck_after
	FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_row('stuck_after', 'status', '{}');
CREATE TRIGGER shipsync_audit_truncate AFTER TRUNCATE ON @extschema@.provider
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_row('provider', '', '{}');
CREATE TRIGGER shipsync_audit_truncate AFTER TRUNCATE ON @extschema@.binding
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_row('binding', '', '{}');
CREATE TRIGGER shipsync_audit_truncate AFTER TRUNCATE ON @extschema@.field_map
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_row('field_map', '', '{}');
CREATE TRIGGER shipsync_audit_truncate AFTER TRUNCATE ON @extschema@.status_map
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_row('status_map', '', '{}');
CREATE TRIGGER shipsync_audit_truncate AFTER TRUNCATE ON @extschema@.crm_source
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_row('crm_source', '', '{}');
CREATE TRIGGER shipsync_audit_truncate AFTER TRUNCATE ON @extschema@.secret
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_row('secret', '', '{}');
-- the fee type maps and currencies that shipsync_admin may change
CREATE TRIGGER shipsync_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.fee_type_map
	FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_row('fee_type_map', 'profile,code', '{}');
CREATE TRIGGER shipsync_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.currency
	FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_row('currency', 'code', '{}');
CREATE TRIGGER shipsync_audit_truncate AFTER TRUNCATE ON @extschema@.fee_type_map
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_row('fee_type_map', '', '{}');
CREATE TRIGGER shipsync_audit_truncate AFTER TRUNCATE ON @extschema@.currency
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_row('currency', '', '{}');
-- end of the fee audit triggers
CREATE TRIGGER shipsync_audit_truncate AFTER TRUNCATE ON @extschema@.stuck_after
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_row('stuck_after', '', '{}');

-- The trigger rows of changes made by these functions carry their names.
ALTER FUNCTION @extschema@.create_provider(text, text, text, jsonb) SET shipsync.audit_action = 'create_provider';
ALTER FUNCTION @extschema@.attach(regclass, text, name, jsonb, jsonb) SET shipsync.audit_action = 'attach';
ALTER FUNCTION @extschema@.detach(regclass) SET shipsync.audit_action = 'detach';
ALTER FUNCTION @extschema@.copy_profile(text, text) SET shipsync.audit_action = 'copy_profile';
ALTER FUNCTION @extschema@.create_crm_source(text, text, regclass, jsonb) SET shipsync.audit_action = 'create_crm_source';
ALTER FUNCTION @extschema@.drop_crm_source(text) SET shipsync.audit_action = 'drop_crm_source';
ALTER FUNCTION @extschema@.set_secret(text, text, text) SET shipsync.audit_action = 'set_secret';
ALTER FUNCTION @extschema@.rotate_key() SET shipsync.audit_action = 'rotate_key';
-- pause or resume, set inside; the setting ends with the function
ALTER FUNCTION @extschema@._set_paused(text, boolean) SET shipsync.audit_action = '';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.audit_log_audit_id_seq', '');
