/*-------------------------------------------------------------------------
 *
 * secret.c
 *		Carrier credentials encrypted at rest: the key files, the store
 *		(shipsync.secret), and the only ways a secret comes out of it.
 *
 * What is secret: the auth values of a provider (bearer token, API key,
 * Basic user name and password, OAuth2 client secret, SF Express check
 * word, Kuaidi100 key), its webhook secret and the previous one kept
 * during a rotation, static header values marked secret, a TLS client
 * key, and the signing secret of a CRM source (with its previous one),
 * stored under the source's name in place of a provider's: the two share
 * one namespace.  create_provider(), create_crm_source() and set_secret()
 * hand each value to shipsync._secret_put(), which seals it (crypto.c:
 * AES-256-GCM, a fresh nonce, provider and name as associated data) and
 * stores only the sealed bytes, with the id of the key that sealed them.
 * No other table holds a secret; shipsync.secret itself is readable by the
 * extension's owner only.
 *
 * The key never enters the database.  It is read from the file named by
 * shipsync.secret_key_file (postmaster GUC), or, when that is empty, from
 * pg_shipsync.key in the data directory, generated at the first need (the
 * first secret stored) with mode 0600.  A key file must be a regular file
 * owned by the server's user, without group or world access, holding 32
 * bytes or 64 hexadecimal digits; anything else is refused with a line in
 * the log saying why, as the server does for ssl_key_file.
 *
 * Where the key is held: the postmaster reads the key files when it loads
 * the library (shared_preload_libraries), so a missing or refused file
 * stops the server at start, in plain sight, instead of failing every
 * delivery later; every process it forks afterwards (dispatchers, client
 * backends) inherits the key in its memory.  A key generated later (empty
 * GUC, first need) is read by each process from the file when it first
 * needs it: the process that generated it, the dispatcher that opens the
 * secrets, the backend that verifies a push.  Nothing in shared memory
 * holds a key, and a changed key file takes effect at the next restart.
 *
 * Rotation: shipsync.previous_secret_key_file names the key file used
 * before; both keys are loaded, and a sealed value is opened with the key
 * whose id is stored beside it.  shipsync.rotate_key() opens every secret
 * sealed under another key and seals it again under the current one; the
 * previous key file may then be dropped from the configuration.
 *
 * Who opens secrets: the dispatcher, when it loads its providers (it
 * builds their requests; never a CRM source's secret), ingest_tracking()
 * and ingest_crm() (they verify signatures), and
 * the dry run of render_request() for an SF Express or Kuaidi100 intent
 * never sent (SF's msgDigest needs the check word; a Kuaidi100
 * subscription carries the salt's placeholder only if a salt is set).  Opened values stay in the memory of
 * that process; no SQL function returns one.  A value that cannot be
 * opened (sealed by a key this server does not have, or altered) is
 * reported with the provider and name, never with a byte of it.
 *
 * This file sits below the domain files: it uses crypto.c and the saved
 * plans of spi.c, and nothing of outbox.c, dispatcher.c or tracking.c; the
 * GUCs it owns are registered by _PG_init().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include <openssl/crypto.h>

#include "pg_shipsync.h"

PG_FUNCTION_INFO_V1(shipsync_secret_put);
PG_FUNCTION_INFO_V1(shipsync_rotate_key);

/* the key file generated in the data directory when the GUC is empty */
#define GENERATED_KEY_FILE "pg_shipsync.key"

/* a key file is read up to this size: a longer one holds no key */
#define KEY_FILE_MAX (2 * SHIPSYNC_KEY_LEN + 8)

typedef struct SecretKey
{
	bool		loaded;
	unsigned char key[SHIPSYNC_KEY_LEN];
	char		id[SHIPSYNC_KEY_ID_LEN + 1];
} SecretKey;

static SecretKey current_key;
static SecretKey previous_key;

/* GUCs shipsync.secret_key_file and shipsync.previous_secret_key_file */
char	   *shipsync_secret_key_file = NULL;
char	   *shipsync_previous_secret_key_file = NULL;

/* ---------- key files ---------- */

static const char *
generated_key_path(void)
{
	static char path[MAXPGPATH];

	snprintf(path, sizeof(path), "%s/%s", DataDir, GENERATED_KEY_FILE);
	return path;
}

/*
 * Read the key in file path into k, after the checks the server makes of
 * ssl_key_file.  A refused file is reported at elevel (FATAL in the
 * postmaster, ERROR in a backend).
 */
static void
key_file_read(const char *path, SecretKey *k, int elevel)
{
	struct stat st;
	unsigned char buf[KEY_FILE_MAX];
	ssize_t		n;
	int			fd;

	if (stat(path, &st) != 0)
		ereport(elevel,
				(errcode_for_file_access(),
				 errmsg("could not access secret key file \"%s\": %m", path),
				 errhint("Set shipsync.secret_key_file to a file of 32 random bytes or 64 hexadecimal digits, for example made with \"openssl rand -hex 32\".")));
	if (!S_ISREG(st.st_mode))
		ereport(elevel,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("secret key file \"%s\" is not a regular file", path)));
	if (st.st_uid != geteuid())
		ereport(elevel,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("secret key file \"%s\" must be owned by the database user", path),
				 errdetail("It is owned by user ID %u; the server runs as user ID %u.",
						   (unsigned) st.st_uid, (unsigned) geteuid())));
	if (st.st_mode & (S_IRWXG | S_IRWXO))
		ereport(elevel,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("secret key file \"%s\" has group or world access", path),
				 errdetail("File must have permissions u=rw (0600) or less."),
				 errhint("Run chmod 600 on it.")));

	if ((fd = open(path, O_RDONLY | PG_BINARY, 0)) < 0)
		ereport(elevel,
				(errcode_for_file_access(),
				 errmsg("could not open secret key file \"%s\": %m", path)));
	n = read(fd, buf, sizeof(buf));
	close(fd);
	if (n < 0)
		ereport(elevel,
				(errcode_for_file_access(),
				 errmsg("could not read secret key file \"%s\": %m", path)));
	if (!shipsync_key_parse(buf, (size_t) n, k->key))
	{
		bool		right_size = n == SHIPSYNC_KEY_LEN || n == 2 * SHIPSYNC_KEY_LEN ||
			(n == 2 * SHIPSYNC_KEY_LEN + 1 && buf[n - 1] == '\n');

		OPENSSL_cleanse(buf, sizeof(buf));
		ereport(elevel,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("secret key file \"%s\" does not hold a key", path),
				 right_size ?
				 errdetail("Its %zd bytes are neither 32 random bytes nor 64 hexadecimal digits (a key whose bytes are all equal is refused).", n) :
				 errdetail("A key file holds exactly 32 random bytes, or 64 hexadecimal digits and an optional newline; this one holds %s%zd bytes.",
						   n == (ssize_t) sizeof(buf) ? "at least " : "", n),
				 errhint("Make one with \"openssl rand -hex 32\", owned by the database user, mode 0600.")));
	}
	OPENSSL_cleanse(buf, sizeof(buf));
	if (!shipsync_key_id(k->key, k->id))
		ereport(elevel,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute the id of the key in \"%s\"", path)));
	k->loaded = true;
}

/*
 * Called by _PG_init() in the postmaster: read the key files that exist
 * now, so that a refused one stops the server at start and every process
 * forked later inherits the keys.
 */
void
secret_load_keys(void)
{
	const char *path = shipsync_secret_key_file;
	struct stat st;

	if (path == NULL || path[0] == '\0')
	{
		path = generated_key_path();
		if (stat(path, &st) != 0 && errno == ENOENT)
			path = NULL;		/* generated at the first need */
	}
	if (path)
	{
		key_file_read(path, &current_key, FATAL);
		ereport(LOG,
				(errmsg("pg_shipsync: secret key %s read from \"%s\"", current_key.id, path)));
	}
	path = shipsync_previous_secret_key_file;
	if (path && path[0] != '\0')
	{
		key_file_read(path, &previous_key, FATAL);
		ereport(LOG,
				(errmsg("pg_shipsync: previous secret key %s read from \"%s\"", previous_key.id, path)));
	}
}

/*
 * Create pg_shipsync.key in the data directory: 32 random bytes as 64 hex
 * digits and a newline, mode 0600.  Written under a name of its own, made
 * durable, then linked into place, so that a concurrent reader never sees
 * half a key and two backends racing to create it agree on the winner's.
 */
static void
generate_key_file(const char *path)
{
	unsigned char key[SHIPSYNC_KEY_LEN];
	char		text[2 * SHIPSYNC_KEY_LEN + 2];
	char		tmp[MAXPGPATH];
	int			fd;
	bool		written;
	bool		ours;

	if (!shipsync_random_bytes(key, sizeof(key)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a secret key"),
				 errdetail("The random number generator failed.")));
	for (int i = 0; i < SHIPSYNC_KEY_LEN; i++)
		snprintf(text + 2 * i, 3, "%02x", key[i]);
	text[2 * SHIPSYNC_KEY_LEN] = '\n';
	OPENSSL_cleanse(key, sizeof(key));

	snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, MyProcPid);
	fd = OpenTransientFilePerm(tmp, O_WRONLY | O_CREAT | O_EXCL | PG_BINARY,
							   S_IRUSR | S_IWUSR);
	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create secret key file \"%s\": %m", tmp)));
	written = write(fd, text, 2 * SHIPSYNC_KEY_LEN + 1) == 2 * SHIPSYNC_KEY_LEN + 1 &&
		pg_fsync(fd) == 0;
	OPENSSL_cleanse(text, sizeof(text));
	CloseTransientFile(fd);
	ours = written && link(tmp, path) == 0;
	if (!written || (!ours && errno != EEXIST))
	{
		int			save_errno = errno;

		unlink(tmp);
		errno = save_errno;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write secret key file \"%s\": %m", path)));
	}
	unlink(tmp);
	if (!ours)
		return;					/* another backend made it first: use its key */
	fsync_fname(path, false);
	fsync_fname(DataDir, true);
	ereport(LOG,
			(errmsg("pg_shipsync generated the secret key file \"%s\"", path),
			 errhint("Keep a copy of it apart from the database's backups; in production, move it out of the data directory and set shipsync.secret_key_file (see docs/security.md).")));
}

/*
 * The key that seals new values.  Inherited from the postmaster, or read
 * from the generated file; with create, the file is generated when there
 * is none.  NULL if there is no key and create is false.
 */
static SecretKey *
sealing_key(bool create)
{
	const char *path = generated_key_path();
	struct stat st;

	if (current_key.loaded)
		return &current_key;
	if (shipsync_secret_key_file && shipsync_secret_key_file[0] != '\0')
		path = shipsync_secret_key_file;	/* a process that did not inherit it */
	else if (stat(path, &st) != 0 && errno == ENOENT)
	{
		if (!create)
			return NULL;
		generate_key_file(path);
	}
	key_file_read(path, &current_key, ERROR);
	return &current_key;
}

/* The key with this id, current or previous; NULL if we have none such. */
static SecretKey *
key_by_id(const char *id)
{
	SecretKey  *k = sealing_key(false);

	if (k && strcmp(k->id, id) == 0)
		return k;
	if (!previous_key.loaded && shipsync_previous_secret_key_file &&
		shipsync_previous_secret_key_file[0] != '\0')
		key_file_read(shipsync_previous_secret_key_file, &previous_key, ERROR);
	if (previous_key.loaded && strcmp(previous_key.id, id) == 0)
		return &previous_key;
	return NULL;
}

/* ---------- sealing and opening ---------- */

/*
 * value sealed as secret name of provider under key k, as a bytea ready
 * for shipsync.secret.ciphertext.
 */
static bytea *
seal_bytea(SecretKey *k, const char *provider, const char *name, const char *value)
{
	size_t		len = strlen(value);
	bytea	   *b = palloc(VARHDRSZ + SHIPSYNC_SEALED_LEN(len));

	if (!shipsync_secret_seal(k->key, provider, name, value, len,
							  (unsigned char *) VARDATA(b)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not encrypt secret \"%s\" of \"%s\"", name, provider),
				 errdetail("The random number generator or the cipher failed.")));
	SET_VARSIZE(b, VARHDRSZ + SHIPSYNC_SEALED_LEN(len));
	return b;
}

/*
 * Seal value as secret name of provider under the current key and store
 * it, replacing the one of that name; SPI must be connected.
 */
static void
store_sealed(const char *provider, const char *name, const char *value)
{
	SecretKey  *k = sealing_key(true);
	Oid			types[4] = {TEXTOID, TEXTOID, TEXTOID, BYTEAOID};
	Datum		args[4];
	int			rc;

	args[0] = CStringGetTextDatum(provider);
	args[1] = CStringGetTextDatum(name);
	args[2] = CStringGetTextDatum(k->id);
	args[3] = PointerGetDatum(seal_bytea(k, provider, name, value));
	rc = SPI_execute_with_args("INSERT INTO shipsync.secret AS s (provider, name, key_id, ciphertext)"
							   " VALUES ($1, $2, $3, $4)"
							   " ON CONFLICT (provider, name) DO UPDATE"
							   " SET key_id = EXCLUDED.key_id, ciphertext = EXCLUDED.ciphertext,"
							   " set_at = pg_catalog.now(), set_by = SESSION_USER",
							   4, types, args, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "storing a secret failed: %s", SPI_result_code_string(rc));
}

/*
 * What a row of shipsync.secret belongs to, for messages: "provider" or
 * "CRM source" (whose name stands in the provider column).
 */
#define SECRET_OWNER_SQL \
	"CASE WHEN EXISTS (SELECT 1 FROM shipsync.crm_source c" \
	" WHERE c.name OPERATOR(pg_catalog.=) s.provider)" \
	" THEN 'CRM source' ELSE 'provider' END"

/*
 * Open one stored secret of owner (SECRET_OWNER_SQL) provider.  Returns
 * the value, palloc'd, or NULL with *error saying why it cannot be opened
 * (never anything of the value).
 */
static char *
open_sealed(const char *owner, const char *provider, const char *name,
			const char *key_id, bytea *sealed, char **error)
{
	SecretKey  *k = key_by_id(key_id);
	char	   *v;

	if (k == NULL)
	{
		SecretKey  *cur = sealing_key(false);

		*error = psprintf("secret \"%s\" of %s \"%s\" was sealed with key %s, which is neither the key of shipsync.secret_key_file (%s) nor that of shipsync.previous_secret_key_file (%s)",
						  name, owner, provider, key_id, cur ? cur->id : "none",
						  previous_key.loaded ? previous_key.id : "none");
		return NULL;
	}
	v = palloc(VARSIZE_ANY_EXHDR(sealed) + 1);
	if (!shipsync_secret_open(k->key, provider, name,
							  (unsigned char *) VARDATA_ANY(sealed),
							  VARSIZE_ANY_EXHDR(sealed), v))
	{
		pfree(v);
		*error = psprintf("secret \"%s\" of %s \"%s\" does not open with key %s: its stored bytes were altered, or belong to another provider or name",
						  name, owner, provider, key_id);
		return NULL;
	}
	return v;
}

/*
 * Open every stored secret of provider, or of the CRM source of that name
 * (of every provider when NULL, the dispatcher's case: never a CRM
 * source's, which only ingest_crm() opens, by name), in order of provider
 * and name.  Returns how many; *out (palloc'd in the
 * caller's memory context) has, for each, its value, or NULL and the
 * reason it cannot be opened: one broken secret does not hide the others.
 */
int
secret_open_all(const char *provider, OpenedSecret **out)
{
	static SPIPlanPtr plan = NULL;
	MemoryContext caller = CurrentMemoryContext;
	Datum		arg = provider ? CStringGetTextDatum(provider) : (Datum) 0;
	char		nulls[1] = {provider ? ' ' : 'n'};
	OpenedSecret *s;
	int			n;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (plan == NULL)
	{
		Oid			t[1] = {TEXTOID};

		plan = shipsync_prepare_saved("SELECT s.provider, s.name, s.key_id, s.ciphertext, "
									  SECRET_OWNER_SQL " FROM shipsync.secret s"
									  " WHERE CASE WHEN $1 IS NULL"
									  " THEN EXISTS (SELECT 1 FROM shipsync.provider p"
									  "  WHERE p.name OPERATOR(pg_catalog.=) s.provider)"
									  " ELSE s.provider OPERATOR(pg_catalog.=) $1 END"
									  " ORDER BY s.provider, s.name", 1, t);
	}
	if (SPI_execute_plan(plan, &arg, nulls, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading shipsync.secret failed");
	n = (int) SPI_processed;
	s = MemoryContextAllocZero(caller, sizeof(OpenedSecret) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *prov = SPI_getvalue(tup, desc, 1);
		char	   *name = SPI_getvalue(tup, desc, 2);
		char	   *keyid = SPI_getvalue(tup, desc, 3);
		bytea	   *sealed = DatumGetByteaPP(SPI_getbinval(tup, desc, 4, &isnull));
		char	   *error = NULL;
		char	   *value = open_sealed(SPI_getvalue(tup, desc, 5), prov, name, keyid,
										sealed, &error);
		MemoryContext old = MemoryContextSwitchTo(caller);

		s[i].provider = pstrdup(prov);
		s[i].name = pstrdup(name);
		s[i].value = value ? pstrdup(value) : NULL;
		s[i].error = error ? pstrdup(error) : NULL;
		MemoryContextSwitchTo(old);
		if (value)
		{
			OPENSSL_cleanse(value, strlen(value));
			pfree(value);
		}
	}
	SPI_finish();
	*out = s;
	return n;
}

/*
 * The secret name of provider, opened, palloc'd in the caller's memory
 * context; NULL if it is not set.  An ERROR if it cannot be opened.  For
 * callers that need one secret at the moment they use it.
 */
char *
secret_fetch(const char *provider, const char *name)
{
	OpenedSecret *s;
	int			n = secret_open_all(provider, &s);
	char	   *value = NULL;

	for (int i = 0; i < n; i++)
		if (strcmp(s[i].name, name) == 0)
		{
			if (s[i].error)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("cannot open secret \"%s\" of \"%s\"", name, provider),
						 errdetail("%s.", s[i].error),
						 errhint("Check shipsync.secret_key_file and shipsync.previous_secret_key_file, or set the secret again with shipsync.set_secret().")));
			value = s[i].value;
		}
	return value;
}

/*
 * The webhook secrets of provider, or of the CRM source of that name, at
 * the moment a push is verified: *current its webhook_secret and
 * *previous its previous_webhook_secret (set during a rotation), palloc'd
 * in the caller's memory context, NULL when not set.  One that cannot be
 * opened is an ERROR: "cannot verify <pushes> \"<provider>\"".
 */
void
secret_open_webhook(const char *provider, const char *pushes,
					char **current, char **previous)
{
	OpenedSecret *s;
	int			n = secret_open_all(provider, &s);

	*current = *previous = NULL;
	for (int i = 0; i < n; i++)
	{
		char	  **to = strcmp(s[i].name, "webhook_secret") == 0 ? current :
			strcmp(s[i].name, "previous_webhook_secret") == 0 ? previous : NULL;

		if (to == NULL)
			continue;
		if (s[i].value == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot verify %s \"%s\"", pushes, provider),
					 errdetail("%s.", s[i].error),
					 errhint("Check shipsync.secret_key_file and shipsync.previous_secret_key_file, or set the secret again with shipsync.set_secret().")));
		*to = s[i].value;
	}
}

/* ---------- SQL functions ---------- */

/* advisory lock class of a rotation of one secret (fees.c has its own) */
#define SECRET_LOCK_CLASS	1717920628

/*
 * shipsync._secret_put(provider, name, value, keep_previous_as): seal and
 * store one secret.  With keep_previous_as, the value stored under name
 * until now is first stored again under that name (the previous webhook
 * secret of a rotation).  Internal: called by create_provider() and
 * set_secret(), which check names and values; executable by the
 * extension's owner only.
 */
Datum
shipsync_secret_put(PG_FUNCTION_ARGS)
{
	char	   *provider;
	char	   *name;
	char	   *value;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("provider, name and value of a secret must not be null")));
	provider = text_to_cstring(PG_GETARG_TEXT_PP(0));
	name = text_to_cstring(PG_GETARG_TEXT_PP(1));
	value = text_to_cstring(PG_GETARG_TEXT_PP(2));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (!PG_ARGISNULL(3))
	{
		char	   *keep = text_to_cstring(PG_GETARG_TEXT_PP(3));
		char	   *old;

		/*
		 * Two rotations at once: the second waits for the first, then
		 * keeps the value the first stored (read in a snapshot taken after
		 * the wait), as one after the other would.  Without it, both kept
		 * the value before them, and the first's new secret was lost
		 * outright (name_race's sibling, test/specs/secret_race.spec).
		 */
		DirectFunctionCall2(pg_advisory_xact_lock_int4,
							Int32GetDatum(SECRET_LOCK_CLASS),
							Int32GetDatum((int32) hash_bytes((const unsigned char *) provider,
															 strlen(provider))
										  ^ (int32) hash_bytes((const unsigned char *) name,
															   strlen(name))));
		PushActiveSnapshot(GetTransactionSnapshot());
		old = secret_fetch(provider, name);
		PopActiveSnapshot();

		if (old)
		{
			store_sealed(provider, keep, old);
			OPENSSL_cleanse(old, strlen(old));
		}
	}
	store_sealed(provider, name, value);
	SPI_finish();
	OPENSSL_cleanse(value, strlen(value));
	PG_RETURN_VOID();
}

/*
 * shipsync.rotate_key(): seal again, under the key of
 * shipsync.secret_key_file, every secret sealed under another key (the
 * previous one, shipsync.previous_secret_key_file).  Returns how many.
 * All or nothing: a secret that cannot be opened stops it, named.
 */
Datum
shipsync_rotate_key(PG_FUNCTION_ARGS)
{
	SecretKey  *k = sealing_key(true);
	Oid			t[1] = {TEXTOID};
	Datum		arg = CStringGetTextDatum(k->id);
	int64		n;
	SPITupleTable *rows;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT s.provider, s.name, s.key_id, s.ciphertext, "
							  SECRET_OWNER_SQL " FROM shipsync.secret s"
							  " WHERE s.key_id OPERATOR(pg_catalog.<>) $1"
							  " ORDER BY s.provider, s.name FOR UPDATE OF s",
							  1, t, &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading shipsync.secret failed");
	rows = SPI_tuptable;
	n = (int64) SPI_processed;
	for (int64 i = 0; i < n; i++)
	{
		HeapTuple	tup = rows->vals[i];
		bool		isnull;
		char	   *prov = SPI_getvalue(tup, rows->tupdesc, 1);
		char	   *name = SPI_getvalue(tup, rows->tupdesc, 2);
		char	   *error = NULL;
		char	   *value = open_sealed(SPI_getvalue(tup, rows->tupdesc, 5), prov, name,
										SPI_getvalue(tup, rows->tupdesc, 3),
										DatumGetByteaPP(SPI_getbinval(tup, rows->tupdesc, 4, &isnull)),
										&error);
		Oid			ut[4] = {TEXTOID, TEXTOID, TEXTOID, BYTEAOID};
		Datum		ua[4];

		if (value == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot rotate the secret key: a secret cannot be opened"),
					 errdetail("%s.", error),
					 errhint("Set shipsync.previous_secret_key_file to the key file it was sealed with and restart, or set the secret again with shipsync.set_secret().")));
		ua[0] = CStringGetTextDatum(prov);
		ua[1] = CStringGetTextDatum(name);
		ua[2] = CStringGetTextDatum(k->id);
		ua[3] = PointerGetDatum(seal_bytea(k, prov, name, value));
		OPENSSL_cleanse(value, strlen(value));
		if (SPI_execute_with_args("UPDATE shipsync.secret SET key_id = $3, ciphertext = $4"
								  " WHERE provider OPERATOR(pg_catalog.=) $1"
								  " AND name OPERATOR(pg_catalog.=) $2",
								  4, ut, ua, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "updating shipsync.secret failed");
	}
	SPI_finish();
	PG_RETURN_INT64(n);
}
