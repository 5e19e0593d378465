/* pg_shipsync--0.1--0.2.sql: brings a 0.1 install to 0.2 */

\echo Use "ALTER EXTENSION pg_shipsync UPDATE TO '0.2'" to load this file. \quit

-- 0.2's install script grants every privilege in one place, after one
-- REVOKE that covers every function; 0.1 revoked function by function.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.capture() TO PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@._wake(boolean) TO PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@._validate() TO PUBLIC;

-- A dispatcher of the new library waits for this update: wake it.
SELECT @extschema@._wake(true);
