-- install/00_roles.sql: Roles, created once per cluster and kept when the extension
-- is dropped.
-- A part of pg_shipsync--0.2.sql (see the Makefile); every privilege is
-- granted in 90_privileges.sql.

-- Roles: created once per cluster, kept when the extension is dropped.
DO $roles$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'shipsync_reader') THEN
		CREATE ROLE shipsync_reader NOLOGIN;
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'shipsync_operator') THEN
		CREATE ROLE shipsync_operator NOLOGIN IN ROLE shipsync_reader;
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'shipsync_admin') THEN
		CREATE ROLE shipsync_admin NOLOGIN IN ROLE shipsync_operator;
	END IF;
	-- the receiver worker runs the ingest functions as this role
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'shipsync_ingest') THEN
		CREATE ROLE shipsync_ingest NOLOGIN;
	END IF;
END
$roles$;
