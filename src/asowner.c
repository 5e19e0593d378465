/*-------------------------------------------------------------------------
 *
 * asowner.c
 *		shipsync._select_as_owner(): the rows of a statement over an order
 *		table, read as the table's owner, for the extension's SQL.
 *
 * Reconciliation (_reconcile_crm, _reconcile_carrier) and resync() are
 * PL/pgSQL that runs as a superuser: the reconcile worker's bootstrap
 * superuser, or the extension's owner through a SECURITY DEFINER function.
 * Whatever of an order table's owner they run -- the check of a domain
 * the key column has been given, its type's functions, row security, a
 * cast of a key to the key's type -- must run as that owner, as the
 * dispatcher's render and write-back do (security.c).  So the statements
 * that touch an order table are not run by the PL/pgSQL itself: they go
 * through this function, which plans and runs one read-only statement as
 * the table's owner, in a security-restricted operation and a GUC nest
 * level of its own (shipsync_become_owner()), and hands its rows back to
 * the caller, who joins them with the extension's tables under its own
 * rights.  The owner never gets the extension's tables, and the superuser
 * never runs the owner's code.
 *
 * The rows are written straight into the caller's tuplestore, converted
 * by position to the column definition list of the call: a statement
 * whose columns do not have the types the caller expects is an error, not
 * a misread.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "executor/tstoreReceiver.h"
#include "fmgr.h"
#include "funcapi.h"
#include "nodes/params.h"
#include "utils/builtins.h"

#include "pg_shipsync.h"

PG_FUNCTION_INFO_V1(shipsync_select_as_owner);

/*
 * shipsync._select_as_owner(tbl regclass, stmt text, keys text[], n integer)
 * returns setof record: the rows of the SELECT stmt, run as the owner of
 * tbl with $1 = keys and $2 = n (either may be NULL), in the columns of
 * the call's column definition list.  Granted to no one: the extension's
 * own functions call it, with statements they built.
 */
Datum
shipsync_select_as_owner(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			argtypes[2] = {TEXTARRAYOID, INT4OID};
	ParamListInfo params;
	SPIExecuteOptions opts = {0};
	DestReceiver *dest;
	ShipsyncUserSave save;
	SPIPlanPtr	plan;
	char	   *stmt;
	Oid			owner;
	int			rc;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		elog(ERROR, "a statement to run as a table's owner needs its table and its text");
	owner = shipsync_table_owner(PG_GETARG_OID(0));
	shipsync_check_owner_sees_all(PG_GETARG_OID(0), owner);
	stmt = text_to_cstring(PG_GETARG_TEXT_PP(1));

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	params = makeParamList(2);
	for (int i = 0; i < 2; i++)
	{
		params->params[i].ptype = argtypes[i];
		params->params[i].pflags = PARAM_FLAG_CONST;
		params->params[i].isnull = PG_ARGISNULL(i + 2);
		params->params[i].value = PG_ARGISNULL(i + 2) ? (Datum) 0 : PG_GETARG_DATUM(i + 2);
	}
	dest = CreateDestReceiver(DestTuplestore);
	SetTuplestoreDestReceiverParams(dest, rsinfo->setResult,
									rsinfo->econtext->ecxt_per_query_memory, false,
									rsinfo->setDesc,
									"the rows of a statement run as the table's owner do not have the columns expected");

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	shipsync_become_owner(owner, &save);
	/* keys read as text are the text capture gives them */
	shipsync_keys_as_iso();
	PG_TRY();
	{
		/* planned as the owner too: planning may run its IMMUTABLE functions */
		plan = SPI_prepare(stmt, 2, argtypes);
		if (plan == NULL)
			elog(ERROR, "preparing a statement to run as a table's owner failed: %s",
				 SPI_result_code_string(SPI_result));
		opts.params = params;
		opts.read_only = true;
		opts.dest = dest;
		rc = SPI_execute_plan_extended(plan, &opts);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "a statement run as a table's owner must be a SELECT: %s",
				 SPI_result_code_string(rc));
	}
	PG_FINALLY();
	{
		shipsync_restore_user(&save);
	}
	PG_END_TRY();
	SPI_finish();
	dest->rDestroy(dest);
	return (Datum) 0;
}
