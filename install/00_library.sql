-- install/00_library.sql: the library the server runs must be this
-- version's.
-- A part of pg_shipsync--0.2.sql (see the Makefile), and the first lines of
-- pg_shipsync--0.1--0.2.sql.

-- Installing a new version replaces the library on disk, but a server
-- that was not restarted (docs/upgrading.md, step 2) still runs the one it
-- loaded at its start, which lacks this version's C functions: the script
-- failed on the first of them ("could not find function ... in file").
-- The check leaves nothing behind.
DO $library$
DECLARE
	loaded text;
BEGIN
	BEGIN
		CREATE FUNCTION @extschema@._library_version() RETURNS text
			AS 'MODULE_PATHNAME', 'shipsync_library_version' LANGUAGE C STRICT;
		loaded := @extschema@._library_version();
		DROP FUNCTION @extschema@._library_version();
	EXCEPTION
		WHEN undefined_function THEN
			loaded := NULL;		-- a library older than this check
	END;
	-- a later library runs this script too, when an update to a later
	-- version goes through 0.2: only an older one is refused
	IF loaded IS NULL
	   OR pg_catalog.string_to_array(pg_catalog.substring(loaded, E'^[0-9]+(?:\\.[0-9]+)*'), '.')::pg_catalog.int4[]
		  OPERATOR(pg_catalog.<) ARRAY[0, 2] THEN
		RAISE EXCEPTION 'the server runs a library of pg_shipsync older than 0.2%',
			CASE WHEN loaded IS NOT NULL THEN format(' (%s)', loaded) ELSE '' END
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'Installing a version replaces the library on disk; the server keeps the library it loaded at its start until it is restarted.',
				  HINT = 'Restart PostgreSQL, then run this statement again.';
	END IF;
END
$library$;
