/*-------------------------------------------------------------------------
 *
 * redact.c
 *		Keep the secrets passed to the extension's own calls out of the
 *		server log.
 *
 * create_provider(), create_crm_source() and set_secret() take
 * credentials as arguments, and the server logs what a client sends: the
 * statement (log_statement, log_min_duration_statement), the values of its
 * bind parameters ("DETAIL:  parameters: $1 = '...'", and in the CONTEXT
 * of an error with log_parameter_max_length_on_error), and the text of a
 * statement that failed (the STATEMENT line, log_min_error_statement).  A function cannot
 * rely on its callers to avoid literals, so an emit_log_hook looks at each
 * message before it is written.  When the statement being logged, or the
 * one being run, calls a secret-taking function (redact_calls[] below), or
 * EXECUTEs a prepared statement that calls one, it
 *
 *	- replaces the values of bind parameters by a note saying why,
 *	- blanks the contents of every string literal, escape string and
 *	  dollar-quoted string in a logged statement, in the PREPARE its
 *	  DETAIL quotes and in the plans auto_explain logs while the statement
 *	  runs (quotes kept, contents replaced by ***), so the log still says
 *	  which call ran; and in any DETAIL that quotes such a call, as a
 *	  deadlock report quotes the statements of the sessions involved,
 *	- blanks what a CONTEXT echoes of the input of the calls (the literals
 *	  of a call a DO block or a function makes, bind parameters, the JSON
 *	  read up to an error),
 *	- keeps the STATEMENT line out of the messages of that statement, and
 *	- drops the DETAIL and CONTEXT of an input syntax error raised while it
 *	  runs (a mistyped JSON literal of options is echoed there).
 *
 * Messages of other statements pass untouched: the hook costs a few
 * case-insensitive substring searches per message written.  The hook is
 * installed in the postmaster by _PG_init(), so every process inherits it;
 * it only allocates (in ErrorContext, where the message lives) when it
 * redacts, and it never raises an error.  What it changes reaches every
 * log destination (stderr, csvlog, jsonlog, syslog) and the client alike.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "commands/prepare.h"
#include "lib/stringinfo.h"
#include "parser/scansup.h"
#include "tcop/tcopprot.h"
#include "utils/elog.h"

#include "pg_shipsync.h"

/* the extension's functions whose arguments may carry secrets */
static const char *const redact_calls[] = {
	"create_provider", "create_crm_source", "set_secret", "_secret_put", NULL
};

static const char redact_note[] =
"(redacted by pg_shipsync: the statement passes secrets)";

static emit_log_hook_type prev_emit_log_hook = NULL;

/* s contains needle, compared case-insensitively */
static bool
contains_ci(const char *s, const char *needle)
{
	size_t		n = strlen(needle);

	for (; *s; s++)
		if (pg_strncasecmp(s, needle, n) == 0)
			return true;
	return false;
}

/* Whether SQL text sql calls one of the secret-taking functions */
static bool
calls_secret_function(const char *sql)
{
	if (sql == NULL)
		return false;
	for (int i = 0; redact_calls[i]; i++)
		if (contains_ci(sql, redact_calls[i]))
			return true;
	return false;
}

/* An identifier's character (scan.l's ident_cont) */
static bool
is_ident_char(char c)
{
	return isalnum((unsigned char) c) || c == '_' || c == '$' || IS_HIGHBIT_SET(c);
}

/*
 * p past white space and comments (a double dash to the end of the line, a
 * slash-star comment to its star-slash, nested, as the parser reads them):
 * what may separate EXECUTE from the statement's name.
 */
static const char *
skip_blanks(const char *p)
{
	for (;;)
	{
		if (isspace((unsigned char) *p))
			p++;
		else if (p[0] == '-' && p[1] == '-')
		{
			while (*p && *p != '\n')
				p++;
		}
		else if (p[0] == '/' && p[1] == '*')
		{
			int			depth = 0;

			do
			{
				if (p[0] == '/' && p[1] == '*')
				{
					depth++;
					p += 2;
				}
				else if (p[0] == '*' && p[1] == '/')
				{
					depth--;
					p += 2;
				}
				else
					p++;
			} while (*p && depth > 0);
		}
		else
			return p;
	}
}

/*
 * The name of the prepared statement that an EXECUTE whose keyword ends at
 * p runs (quoted or folded to lower case, as the parser does), or NULL if
 * no name follows.  palloc'd.
 */
static char *
executed_name(const char *p)
{
	const char *start;

	p = skip_blanks(p);
	if (*p == '"')
	{
		StringInfoData name;

		initStringInfo(&name);
		for (p++; *p && !(*p == '"' && p[1] != '"'); p++)
		{
			if (*p == '"')
				p++;
			appendStringInfoChar(&name, *p);
		}
		return name.len > 0 ? name.data : NULL;
	}
	for (start = p; is_ident_char(*p); p++)
		;
	if (p == start)
		return NULL;
	return downcase_truncate_identifier(start, (int) (p - start), false);
}

/*
 * Whether SQL text sql runs, with EXECUTE (alone, or in EXPLAIN or CREATE
 * TABLE AS), a prepared statement of this session that calls one of the
 * secret-taking functions: the arguments of the EXECUTE are then that
 * call's.  Each word "execute" followed by a name is looked up; a name that
 * is no prepared statement costs a hash probe.
 */
static bool
executes_secret_statement(const char *sql)
{
	const char *p;

	if (sql == NULL)
		return false;
	for (p = sql; *p; p++)
	{
		PreparedStatement *ps;
		char	   *name;

		if (pg_strncasecmp(p, "execute", 7) != 0 ||
			(p > sql && is_ident_char(p[-1])) || is_ident_char(p[7]))
			continue;
		name = executed_name(p + 7);
		if (name == NULL)
			continue;
		ps = FetchPreparedStatement(name, false);
		pfree(name);
		if (ps != NULL && calls_secret_function(ps->plansource->query_string))
			return true;
	}
	return false;
}

/* Whether running SQL text sql passes secrets: it calls or EXECUTEs a call */
static bool
passes_secrets(const char *sql)
{
	return calls_secret_function(sql) || executes_secret_statement(sql);
}

/*
 * The length of a dollar-quote tag ($$ or $name$) starting at s, or 0 if
 * s does not start one (a $1 parameter, say).
 */
static size_t
dollar_tag_len(const char *s)
{
	size_t		i = 1;

	if (s[0] != '$')
		return 0;
	if (isalpha((unsigned char) s[1]) || s[1] == '_' || IS_HIGHBIT_SET(s[1]))
		while (isalnum((unsigned char) s[i]) || s[i] == '_' || IS_HIGHBIT_SET(s[i]))
			i++;
	return s[i] == '$' ? i + 1 : 0;
}

/*
 * The end of the string literal whose opening quote is at p: just past its
 * closing quote, or the end of the text.  A backslash escapes the next
 * character whatever the string's kind: taking a standard string's final
 * backslash for an escape only blanks more, never less.
 */
static const char *
quoted_end(const char *p)
{
	for (p++; *p && !(*p == '\'' && p[1] != '\''); p++)
		if ((*p == '\\' && p[1]) || (*p == '\'' && p[1] == '\''))
			p++;
	return *p ? p + 1 : p;
}

/*
 * The closing tag of the dollar-quoted string whose opening tag, tag bytes
 * long, is at p; the end of the text when there is none.
 */
static const char *
dollar_quote_close(const char *p, size_t tag)
{
	const char *e;

	for (e = p + tag; *e && strncmp(e, p, tag) != 0; e++)
		;
	return e;
}

/*
 * sql with the contents of its string literals replaced by ***: standard
 * and escape strings ('it''s', E'\''), dollar-quoted strings, whatever
 * their prefix (E, U&, B, X).  When in doubt it blanks more: a backslash
 * counts as an escape in every string, and an unterminated literal is
 * blanked to the end.  Comments are copied, and so are quoted identifiers
 * when identifiers is true.  A CONTEXT line quotes a statement between
 * double quotes (SQL statement "SELECT ...('...')"): there identifiers is
 * false, and a double quote is a character like another.  palloc'd.
 */
static char *
redact_literals(const char *sql, bool identifiers)
{
	StringInfoData out;
	const char *p = sql;

	initStringInfo(&out);
	while (*p)
	{
		size_t		tag;

		if (p[0] == '-' && p[1] == '-')
		{
			const char *e = strchr(p, '\n');
			size_t		n = e ? (size_t) (e - p) : strlen(p);

			appendBinaryStringInfo(&out, p, n);
			p += n;
		}
		else if (p[0] == '/' && p[1] == '*')
		{
			const char *e = strstr(p + 2, "*/");
			size_t		n = e ? (size_t) (e + 2 - p) : strlen(p);

			appendBinaryStringInfo(&out, p, n);
			p += n;
		}
		else if (*p == '"' && identifiers)
		{
			const char *e = strchr(p + 1, '"');
			size_t		n = e ? (size_t) (e + 1 - p) : strlen(p);

			appendBinaryStringInfo(&out, p, n);
			p += n;
		}
		else if (*p == '\'')
		{
			appendStringInfoString(&out, "'***'");
			p = quoted_end(p);
		}
		else if ((tag = dollar_tag_len(p)) > 0 && !(p > sql && (isalnum((unsigned char) p[-1]) || p[-1] == '_')))
		{
			const char *e = dollar_quote_close(p, tag);

			appendBinaryStringInfo(&out, p, tag);
			appendStringInfoString(&out, "***");
			if (*e)
				appendBinaryStringInfo(&out, e, tag);
			p = *e ? e + tag : e;
		}
		else
			appendStringInfoChar(&out, *p++);
	}
	return out.data;
}

/*
 * The server's own message msgid as the session's lc_messages words it:
 * the piece'th run of text between its format directives (%s, %d, ...),
 * palloc'd ("" when it has no such piece).  The messages the hook looks
 * for are matched in English and in this wording: a server of lc_messages
 * de_DE logged "Anweisung: SELECT shipsync.set_secret(...)" and
 * "DETAIL:  Parameter: $1 = '...'", which the English alone never matched,
 * with every secret in them.
 */
static char *
translated_piece(const char *msgid, int piece)
{
#ifdef ENABLE_NLS
	const char *s = dgettext(PG_TEXTDOMAIN("postgres"), msgid);
#else
	const char *s = msgid;
#endif
	StringInfoData out;
	int			n = 0;

	initStringInfo(&out);
	for (; *s; s++)
	{
		if (s[0] == '%' && s[1] == '%')
		{
			if (n == piece)
				appendStringInfoChar(&out, '%');
			s++;
		}
		else if (*s == '%')
		{
			if (n++ == piece)
				break;
			/* flags, width, precision and length; the for's s++ skips the conversion */
			for (s++; *s && strchr("0123456789.-+ #lhzjtqL", *s); s++)
				;
			if (*s == '\0')
				break;
		}
		else if (n == piece)
			appendStringInfoChar(&out, *s);
	}
	return out.data;
}

/* Where text holds english, or else the translated piece of msgid; its length in *len */
static const char *
find_marker(const char *text, const char *english, const char *msgid, int piece, int *len)
{
	const char *at = strstr(text, english);
	char	   *marker;

	*len = strlen(english);
	if (at != NULL)
		return at;
	marker = translated_piece(msgid, piece);
	*len = strlen(marker);
	return *len > 0 && strcmp(marker, english) != 0 ? strstr(text, marker) : NULL;
}

/*
 * A message that logs a statement's text (log_statement and friends): by
 * its text, or by its id, the message as written in English, whatever
 * lc_messages made of its text ("Anweisung: ..."); an EXECUTE's is
 * "%s %s%s%s: %s", its first word ("execute") translated on its own.
 */
static bool
logs_statement(const char *msg, const char *id)
{
	static const char *const starts[] = {
		"statement: ", "duration: ", "execute ", "bind ", "parse ", NULL
	};

	for (int i = 0; starts[i]; i++)
		if (strncmp(msg, starts[i], strlen(starts[i])) == 0 ||
			(id != NULL && strncmp(id, starts[i], strlen(starts[i])) == 0))
			return true;
	return id != NULL && strcmp(id, "%s %s%s%s: %s") == 0;
}

/* Drop the bind parameters' values out of a DETAIL or CONTEXT text */
static char *
redact_parameters(char *text)
{
	/* how the server words them: at execution, and in an error's CONTEXT */
	static const struct
	{
		const char *msgid;
		int			piece;
	}			words[] = {
		{"parameters: %s", 0},
		{"unnamed portal with parameters: %s", 0},
		{"portal \"%s\" with parameters: %s", 1},
	};
	const char *at = NULL;
	int			len = 0;

	if (text == NULL)
		return text;
	for (int i = 0; at == NULL && i < (int) lengthof(words); i++)
		at = find_marker(text, "parameters: ", words[i].msgid, words[i].piece, &len);
	if (at == NULL)
		return text;
	return psprintf("%.*s%s", (int) (at + len - text), text, redact_note);
}

/*
 * A DETAIL that quotes a call with its literals blanked (the PREPARE of an
 * EXECUTE that log_statement logs; the statement of another session that
 * a deadlock report quotes, whichever session met the deadlock), and its
 * bind parameters dropped
 */
static char *
redact_detail(char *text)
{
	if (text != NULL && calls_secret_function(text))
		text = redact_literals(text, true);
	return redact_parameters(text);
}

/*
 * The end of the argument list of a call whose "(" is at open: its
 * matching ")", or the end of the text.  Parentheses inside string
 * literals and dollar-quoted strings do not count.
 */
static const char *
call_arguments_end(const char *open)
{
	const char *p = open;
	int			depth = 0;

	while (*p)
	{
		size_t		tag;

		if (*p == '\'')
		{
			p = quoted_end(p);
			continue;
		}
		if ((tag = dollar_tag_len(p)) > 0 && !is_ident_char(p[-1]))
		{
			const char *e = dollar_quote_close(p, tag);

			p = *e ? e + tag : e;
			continue;
		}
		if (*p == '(')
			depth++;
		else if (*p == ')' && --depth == 0)
			return p;
		p++;
	}
	return p;
}

/*
 * text with the literals blanked in the arguments of every call of a
 * secret-taking function it quotes (SQL statement "SELECT
 * shipsync.set_secret('***', '***', '***')", a call in a DO block or a
 * function), and nothing else: the statements of the extension's own
 * functions quoted beside it keep their literals.  palloc'd, or text.
 */
static char *
redact_call_arguments(char *text)
{
	StringInfoData out;
	const char *copied = text;
	const char *p;

	if (!calls_secret_function(text))
		return text;
	initStringInfo(&out);
	for (p = text; *p; p++)
	{
		for (int i = 0; redact_calls[i]; i++)
		{
			size_t		n = strlen(redact_calls[i]);
			const char *q = p + n;
			const char *end;

			if (pg_strncasecmp(p, redact_calls[i], n) != 0)
				continue;
			if (*q == '"')
				q++;
			while (isspace((unsigned char) *q))
				q++;
			if (*q != '(')
				continue;
			end = call_arguments_end(q);
			appendBinaryStringInfo(&out, copied, (int) (q + 1 - copied));
			appendStringInfoString(&out, redact_literals(pnstrdup(q + 1, end - (q + 1)), false));
			copied = end;
			p = *end ? end : end - 1;
			break;
		}
	}
	appendStringInfoString(&out, copied);
	return out.data;
}

/*
 * text with the JSON that an error's CONTEXT echoes ("JSON data, line 1:
 * {\"auth\": ...", read up to a \u0000 in a token) left out.  palloc'd,
 * or text.
 */
static char *
redact_json_echo(char *text)
{
	StringInfoData out;
	const char *p;
	const char *at;
	int			len;

	if (find_marker(text, "JSON data, line ", "JSON data, line %d: %s%s%s", 0, &len) == NULL)
		return text;
	initStringInfo(&out);
	for (p = text; (at = find_marker(p, "JSON data, line ", "JSON data, line %d: %s%s%s", 0, &len)) != NULL;)
	{
		const char *colon = strchr(at, ':');
		const char *eol;

		if (colon == NULL)
			break;
		appendBinaryStringInfo(&out, p, (int) (colon + 1 - p));
		appendStringInfo(&out, " %s", redact_note);
		eol = strchr(colon, '\n');
		p = eol ? eol : colon + strlen(colon);
	}
	appendStringInfoString(&out, p);
	return out.data;
}

/*
 * text with the value of a bind parameter being read when the error came
 * left out: "unnamed portal parameter $4 = '...'", the last line of the
 * CONTEXT (the outermost).  palloc'd, or text.
 */
static char *
redact_bind_parameter(char *text)
{
	int			len;
	const char *at = find_marker(text, " parameter $", "unnamed portal parameter $%d = %s", 0, &len);

	if (at == NULL)
		at = find_marker(text, " parameter $", "portal \"%s\" parameter $%d = %s", 1, &len);
	if (at == NULL || (at = find_marker(at + len, " = ", "unnamed portal parameter $%d = %s", 1, &len)) == NULL)
		return text;
	return psprintf("%.*s%s", (int) (at + len - text), text, redact_note);
}

/*
 * A CONTEXT with what it echoes of a call's input blanked: the literals of
 * the calls it quotes, the values of bind parameters (at execution,
 * "parameters: $1 = '...'", and while they are read, "unnamed portal
 * parameter $4 = '...'"), and the JSON read up to an error.
 */
static char *
redact_context(char *text)
{
	if (text == NULL)
		return NULL;
	text = redact_parameters(text);
	text = redact_bind_parameter(text);
	text = redact_json_echo(text);
	return redact_call_arguments(text);
}

static void
redact_emit_log(ErrorData *edata)
{
	bool		running = passes_secrets(debug_query_string);
	bool		logging = edata->message &&
		logs_statement(edata->message, edata->message_id) &&
		(running || passes_secrets(edata->message));
	bool		quoting = calls_secret_function(edata->context) ||
		calls_secret_function(edata->detail) || calls_secret_function(edata->detail_log);

	if (running || logging || quoting)
	{
		/*
		 * A statement, or a plan auto_explain logs: the plan of each
		 * statement the call runs (log_nested_statements) shows its
		 * arguments as constants (log_verbose), and in JSON or YAML the
		 * statement itself is a string between double quotes.
		 */
		if (logging)
			edata->message = redact_literals(edata->message,
											 strstr(edata->message_id ? edata->message_id : edata->message,
													"  plan:\n") == NULL);
		edata->detail = redact_detail(edata->detail);
		edata->detail_log = redact_detail(edata->detail_log);
		edata->context = redact_context(edata->context);
		if (running)
		{
			edata->hide_stmt = true;
			if (edata->sqlerrcode == ERRCODE_INVALID_TEXT_REPRESENTATION)
			{
				edata->detail = edata->detail ? pstrdup(redact_note) : NULL;
				edata->context = NULL;
			}
		}
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/* Called by _PG_init(): every process forked by the postmaster has it */
void
redact_install_hook(void)
{
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = redact_emit_log;
}
