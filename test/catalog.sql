-- test/catalog.sql: every object of the extension pg_shipsync, described
-- from the catalogs, one line each, sorted.  Two databases whose output is
-- equal hold the same extension: test/t/014_upgrade.pl compares an install
-- upgraded from 0.1 with a fresh one.  (pg_dump --schema-only cannot serve:
-- it leaves the members of an extension out.)  Object ids and sequence
-- positions differ between databases, so only names, definitions, settings,
-- privileges and comments are printed, plus the rows of the tables the
-- extension seeds.
\pset format unaligned
\pset tuples_only on
WITH ext AS (
	SELECT oid, extnamespace, extversion, extconfig, extcondition
	FROM pg_catalog.pg_extension WHERE extname = 'pg_shipsync'
),
member AS (
	SELECT d.classid, d.objid
	FROM pg_catalog.pg_depend d, ext
	WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass
	  AND d.refobjid = ext.oid AND d.deptype = 'e'
),
rel AS (
	SELECT c.* FROM pg_catalog.pg_class c
	JOIN member m ON m.classid = 'pg_catalog.pg_class'::regclass AND m.objid = c.oid
),
fn AS (
	SELECT p.* FROM pg_catalog.pg_proc p
	JOIN member m ON m.classid = 'pg_catalog.pg_proc'::regclass AND m.objid = p.oid
),
line(l) AS (
	-- relations: kind, options, privileges, comment
	SELECT format('relation %s kind=%s persistence=%s replident=%s options=%s acl=%s comment=%s',
				  c.oid::regclass, c.relkind, c.relpersistence, c.relreplident, c.reloptions,
				  c.relacl, pg_catalog.obj_description(c.oid, 'pg_class'))
	FROM rel c
	UNION ALL
	-- columns in their order, dropped ones skipped
	SELECT format('column %s #%s %s %s collation=%s notnull=%s default=%s identity=%s generated=%s acl=%s comment=%s',
				  c.oid::regclass,
				  pg_catalog.row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
				  a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
				  (SELECT co.collname FROM pg_catalog.pg_collation co WHERE co.oid = a.attcollation),
				  a.attnotnull, pg_catalog.pg_get_expr(ad.adbin, ad.adrelid),
				  a.attidentity, a.attgenerated, a.attacl,
				  pg_catalog.col_description(c.oid, a.attnum))
	FROM rel c
	JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
	LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
	WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
	UNION ALL
	SELECT format('constraint %s %s %s', co.conrelid::regclass, co.conname,
				  pg_catalog.pg_get_constraintdef(co.oid))
	FROM pg_catalog.pg_constraint co JOIN rel c ON c.oid = co.conrelid
	UNION ALL
	SELECT format('index %s', pg_catalog.pg_get_indexdef(i.indexrelid))
	FROM pg_catalog.pg_index i JOIN rel c ON c.oid = i.indrelid
	UNION ALL
	SELECT format('trigger %s', pg_catalog.pg_get_triggerdef(t.oid))
	FROM pg_catalog.pg_trigger t JOIN rel c ON c.oid = t.tgrelid
	WHERE NOT t.tgisinternal
	UNION ALL
	SELECT format('view %s %s', c.oid::regclass, pg_catalog.pg_get_viewdef(c.oid))
	FROM rel c WHERE c.relkind IN ('v', 'm')
	UNION ALL
	SELECT format('sequence %s type=%s increment=%s min=%s max=%s cache=%s cycle=%s',
				  s.seqrelid::regclass, s.seqtypid::regtype, s.seqincrement,
				  s.seqmin, s.seqmax, s.seqcache, s.seqcycle)
	FROM pg_catalog.pg_sequence s JOIN rel c ON c.oid = s.seqrelid
	UNION ALL
	-- functions and procedures: the whole definition, settings included
	SELECT format('function %s kind=%s secdef=%s config=%s acl=%s comment=%s def=%s',
				  p.oid::regprocedure, p.prokind, p.prosecdef, p.proconfig, p.proacl,
				  pg_catalog.obj_description(p.oid, 'pg_proc'),
				  CASE WHEN p.prokind = 'a' THEN NULL ELSE pg_catalog.pg_get_functiondef(p.oid) END)
	FROM fn p
	UNION ALL
	SELECT format('aggregate %s sfunc=%s stype=%s final=%s init=%s',
				  a.aggfnoid::regprocedure, a.aggtransfn, a.aggtranstype::regtype,
				  a.aggfinalfn, a.agginitval)
	FROM pg_catalog.pg_aggregate a JOIN fn p ON p.oid = a.aggfnoid
	UNION ALL
	SELECT format('type %s typtype=%s', t.oid::regtype, t.typtype)
	FROM pg_catalog.pg_type t
	JOIN member m ON m.classid = 'pg_catalog.pg_type'::regclass AND m.objid = t.oid
	UNION ALL
	SELECT format('event trigger %s on %s tags=%s calls %s enabled=%s',
				  e.evtname, e.evtevent, e.evttags, e.evtfoid::regprocedure, e.evtenabled)
	FROM pg_catalog.pg_event_trigger e
	JOIN member m ON m.classid = 'pg_catalog.pg_event_trigger'::regclass AND m.objid = e.oid
	UNION ALL
	-- anything else the extension owns, by its kind and name
	SELECT format('member %s', pg_catalog.pg_describe_object(m.classid, m.objid, 0))
	FROM member m
	WHERE m.classid NOT IN ('pg_catalog.pg_class'::regclass, 'pg_catalog.pg_proc'::regclass,
							'pg_catalog.pg_type'::regclass, 'pg_catalog.pg_event_trigger'::regclass)
	UNION ALL
	-- what pg_dump dumps of the extension's tables
	SELECT format('config %s %s', cfg.rel::regclass, cfg.cond)
	FROM ext, LATERAL unnest(ext.extconfig, ext.extcondition) AS cfg(rel, cond)
	UNION ALL
	SELECT format('schema acl=%s', n.nspacl)
	FROM ext JOIN pg_catalog.pg_namespace n ON n.oid = ext.extnamespace
	UNION ALL
	SELECT format('version %s', extversion) FROM ext
	UNION ALL
	-- the rows the extension seeds (ids left out: they are not part of it)
	SELECT format('canonical_status %s', (SELECT pg_catalog.to_jsonb(s) FROM (SELECT cs.*) s))
	FROM shipsync.canonical_status cs
	UNION ALL
	SELECT format('status_map %s', pg_catalog.to_jsonb(sm) - 'status_map_id')
	FROM shipsync.status_map sm WHERE sm.builtin
	UNION ALL
	SELECT format('field_map %s', pg_catalog.to_jsonb(fm) - 'field_map_id' - 'created_at' - 'updated_at')
	FROM shipsync.field_map fm WHERE fm.seeded
	UNION ALL
	SELECT format('fee_type %s', pg_catalog.to_jsonb(ft)) FROM shipsync.fee_type ft
	UNION ALL
	SELECT format('fee_type_map %s', pg_catalog.to_jsonb(tm)) FROM shipsync.fee_type_map tm WHERE tm.builtin
	UNION ALL
	SELECT format('currency %s', pg_catalog.to_jsonb(c)) FROM shipsync.currency c WHERE c.builtin
)
SELECT l FROM line ORDER BY l COLLATE "C";
