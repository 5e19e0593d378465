-- install/45_fees.sql: Money: fee lines from create responses, pushes, pulls
-- and statements, their revisions, and the views finance reads.
-- A part of pg_shipsync--0.2.sql (see the Makefile); every privilege is
-- granted in 90_privileges.sql.

------------------------------------------------------------------------------
-- Fees
--
-- Every fee a carrier quotes or bills is one row of fee_line, identified by
-- (provider, tracking number, canonical fee type, the carrier's line key,
-- quote or bill).  The fees of a create response are the quote (state
-- estimated); pushed, pulled and statement lines are the bill (charged,
-- refunded, adjusted), and a bill never overwrites a quote.  A later line
-- of the same identity is a revision: the previous version goes to
-- fee_line_history.  The same line again changes nothing, and neither does
-- a notice seen before (a late duplicate of a line revised since: its
-- values and time equal an earlier version's) nor one older than the
-- line's current version (by occurred_at, when both have one).  Lines of a
-- tracking number no shipment has are parked (binding_id NULL) and matched
-- when the shipment appears.  src/fees.c reads the sources, src/statement.c
-- the statements, src/feepull.c asks carriers after delivery.
------------------------------------------------------------------------------

-- Fee options of create_provider(): checks those given, returns their names.
CREATE FUNCTION @extschema@._check_fee_options(options jsonb, dialect text)
RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k text;
	v jsonb;
BEGIN
	FOREACH k IN ARRAY ARRAY['fee_pull_after', 'unbilled_after'] LOOP
		v := options->k;
		IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
			CONTINUE;
		END IF;
		IF jsonb_typeof(v) <> 'string' OR @extschema@._interval_or_null(v #>> '{}') IS NULL
		   OR (v #>> '{}')::interval < interval '0' THEN
			RAISE EXCEPTION 'option "%" must be an interval', k
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('The value given is %s.', v),
					  HINT = CASE k WHEN 'fee_pull_after' THEN 'For example "2 days": the fees of a shipment are asked for that long after its delivery.'
								   ELSE 'For example "45 days": a shipment delivered longer ago without a bill is listed in shipsync.fee_difference.' END;
		END IF;
	END LOOP;
	IF options ? 'fee_pull_after' AND dialect NOT IN ('generic', 'sf_express') THEN
		RAISE EXCEPTION 'option "fee_pull_after" needs a shipping dialect'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('Dialect %s has no fee query.', dialect),
				  HINT = 'Fees are pulled from generic (GET /shipments/{id}/fees) and sf_express (EXP_RECE_QUERY_SFWAYBILL) providers.';
	END IF;
	IF options ? 'fee_tolerance' THEN
		v := options->'fee_tolerance';
		IF jsonb_typeof(v) <> 'object' OR EXISTS (SELECT 1 FROM jsonb_object_keys(v) x WHERE x NOT IN ('abs', 'pct'))
		   OR (v ? 'abs' AND @extschema@._decimal_or_null(v->'abs') IS NULL)
		   OR (v ? 'pct' AND @extschema@._decimal_or_null(v->'pct') IS NULL)
		   OR @extschema@._decimal_or_null(v->'abs') < 0 OR @extschema@._decimal_or_null(v->'pct') < 0 THEN
			RAISE EXCEPTION 'option "fee_tolerance" must be {"abs": amount, "pct": percent}'
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('The value given is %s.', v),
					  HINT = 'For example {"abs": "0.01", "pct": 0}: a bill differing from the quote by more than a cent is listed.';
		END IF;
	END IF;
	IF options ? 'currency' AND (jsonb_typeof(options->'currency') <> 'string'
		OR NOT EXISTS (SELECT 1 FROM @extschema@.currency c WHERE c.code = options->>'currency')) THEN
		RAISE EXCEPTION 'unknown currency %', options->'currency'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Give an ISO 4217 code from shipsync.currency, for example "CNY".';
	END IF;
	RETURN ARRAY['fee_pull_after', 'unbilled_after', 'fee_tolerance', 'currency'];
END
$$;

-- text as an interval, or NULL when it is not one
CREATE FUNCTION @extschema@._interval_or_null(t text)
RETURNS interval
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN t::interval;
EXCEPTION WHEN OTHERS THEN
	RETURN NULL;
END
$$;

-- a JSON number or decimal string as numeric, or NULL
CREATE FUNCTION @extschema@._decimal_or_null(v jsonb)
RETURNS numeric
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN jsonb_typeof(v) = 'number' THEN (v #>> '{}')::numeric
				WHEN jsonb_typeof(v) = 'string' AND (v #>> '{}') ~ E'^[0-9]+(\\.[0-9]+)?$'
				THEN (v #>> '{}')::numeric END
$$;

CREATE TABLE @extschema@.fee_type (
	name			text PRIMARY KEY,
	description		text NOT NULL
);
COMMENT ON TABLE @extschema@.fee_type IS
	'The canonical fee types. A carrier''s own fee code is mapped to one of them through shipsync.fee_type_map; a code that maps to nothing is other, its code kept in fee_line.raw_type.';
INSERT INTO @extschema@.fee_type (name, description) VALUES
	('freight', 'Carriage of the parcel (运费).'),
	('insurance', 'Declared-value insurance (保价费).'),
	('label', 'The label or waybill itself.'),
	('postage', 'Postage bought through the carrier.'),
	('fuel', 'Fuel surcharge (燃油附加费).'),
	('cod', 'Cash-on-delivery service (代收货款服务费).'),
	('surcharge', 'Any other surcharge: remote area, oversize, packaging.'),
	('tax', 'Taxes and duties.'),
	('refund', 'Money given back; counted against the fees whatever its sign.'),
	('other', 'A fee no map row names.');

CREATE TABLE @extschema@.fee_type_map (
	profile			text NOT NULL,
	code			text NOT NULL,
	fee_type		text NOT NULL REFERENCES @extschema@.fee_type (name),
	builtin			boolean NOT NULL DEFAULT false,
	PRIMARY KEY (profile, code)
);
COMMENT ON TABLE @extschema@.fee_type_map IS
	'A carrier''s fee code to a canonical fee type, per profile (the provider option profile, else its dialect). A code without a row is read as the canonical type of that name (freight, Freight), else other.';
COMMENT ON COLUMN @extschema@.fee_type_map.builtin IS
	'Seeded by the extension (not dumped by pg_dump, created again on restore). Add rows for your codes beside them; a row you update, or insert with a built-in row''s key in its place, is yours (false) and dumped; built-in rows cannot be deleted.';
INSERT INTO @extschema@.fee_type_map (profile, code, fee_type, builtin)
SELECT m.profile, m.code, m.fee_type, true
FROM (VALUES
	-- EasyPost's Fee objects, also what generic carriers relaying it send
	('easypost', 'LabelFee', 'label'),
	('easypost', 'PostageFee', 'postage'),
	('easypost', 'InsuranceFee', 'insurance'),
	('easypost', 'TrackerFee', 'other'),
	('easypost', 'CarbonOffsetFee', 'surcharge'),
	('generic', 'LabelFee', 'label'),
	('generic', 'PostageFee', 'postage'),
	('generic', 'InsuranceFee', 'insurance'),
	('generic', 'TrackerFee', 'other'),
	('generic', 'CarbonOffsetFee', 'surcharge'),
	-- SF Express bills and fee queries name their fees in Chinese
	('sf_express', '运费', 'freight'),
	('sf_express', '基础运费', 'freight'),
	('sf_express', '保价费', 'insurance'),
	('sf_express', '保价', 'insurance'),
	('sf_express', '燃油附加费', 'fuel'),
	('sf_express', '燃油费', 'fuel'),
	('sf_express', '代收货款服务费', 'cod'),
	('sf_express', '代收货款手续费', 'cod'),
	('sf_express', '包装费', 'surcharge'),
	('sf_express', '包装服务费', 'surcharge'),
	('sf_express', '超长超重附加费', 'surcharge'),
	('sf_express', '偏远地区附加费', 'surcharge'),
	('sf_express', '附加费', 'surcharge'),
	('sf_express', '税费', 'tax'),
	('sf_express', '关税', 'tax'),
	('sf_express', '退款', 'refund'),
	('sf_express', '其他费用', 'other')
) AS m(profile, code, fee_type);
-- a row written here is the writer's own (_builtin_row(), 30_tracking.sql)
CREATE TRIGGER fee_type_map_builtin BEFORE INSERT OR UPDATE OR DELETE ON @extschema@.fee_type_map
	FOR EACH ROW EXECUTE FUNCTION @extschema@._builtin_row();

CREATE TABLE @extschema@.currency (
	code			text PRIMARY KEY CHECK (code ~ '^[A-Z]{3}$'),
	name			text NOT NULL,
	builtin			boolean NOT NULL DEFAULT false,
	-- ISO 4217's minor unit: the decimals an amount in it may have (0 for
	-- JPY, 3 for KWD); NULL where ISO gives none (XXX, XAU, XDR, ...)
	minor_units		smallint CHECK (minor_units BETWEEN 0 AND 4)
);
COMMENT ON TABLE @extschema@.currency IS
	'The ISO 4217 currencies a fee line may be in (seeded from Debian''s iso-codes). A line in any other currency is refused. XXX, "no currency", is what a quote without a currency is recorded in when its provider has no option currency.';
COMMENT ON COLUMN @extschema@.currency.minor_units IS
	'ISO 4217''s minor unit: how many decimals an amount in this currency may have (0 for JPY, 2 for CNY, 3 for KWD). A bill line with more (JPY 1500.5) is refused; a quote with more gets no fee_total. NULL: not checked (ISO gives none, as for XXX and XAU, or a currency an admin added without it).';
INSERT INTO @extschema@.currency (code, name, builtin)
SELECT c.code, c.name, true
FROM (VALUES
	('AED', 'UAE Dirham'), ('AFN', 'Afghani'), ('ALL', 'Lek'), ('AMD', 'Armenian Dram'),
	('ANG', 'Netherlands Antillean Guilder'), ('AOA', 'Kwanza'), ('ARS', 'Argentine Peso'),
	('AUD', 'Australian Dollar'), ('AWG', 'Aruban Florin'), ('AZN', 'Azerbaijan Manat'),
	('BAM', 'Convertible Mark'), ('BBD', 'Barbados Dollar'), ('BDT', 'Taka'),
	('BGN', 'Bulgarian Lev'), ('BHD', 'Bahraini Dinar'), ('BIF', 'Burundi Franc'),
	('BMD', 'Bermudian Dollar'), ('BND', 'Brunei Dollar'), ('BOB', 'Boliviano'), ('BOV', 'Mvdol'),
	('BRL', 'Brazilian Real'), ('BSD', 'Bahamian Dollar'), ('BTN', 'Ngultrum'), ('BWP', 'Pula'),
	('BYN', 'Belarusian Ruble'), ('BZD', 'Belize Dollar'), ('CAD', 'Canadian Dollar'),
	('CDF', 'Congolese Franc'), ('CHE', 'WIR Euro'), ('CHF', 'Swiss Franc'), ('CHW', 'WIR Franc'),
	('CLF', 'Unidad de Fomento'), ('CLP', 'Chilean Peso'), ('CNY', 'Yuan Renminbi'),
	('COP', 'Colombian Peso'), ('COU', 'Unidad de Valor Real'), ('CRC', 'Costa Rican Colon'),
	('CUC', 'Peso Convertible'), ('CUP', 'Cuban Peso'), ('CVE', 'Cabo Verde Escudo'),
	('CZK', 'Czech Koruna'), ('DJF', 'Djibouti Franc'), ('DKK', 'Danish Krone'),
	('DOP', 'Dominican Peso'), ('DZD', 'Algerian Dinar'), ('EGP', 'Egyptian Pound'),
	('ERN', 'Nakfa'), ('ETB', 'Ethiopian Birr'), ('EUR', 'Euro'), ('FJD', 'Fiji Dollar'),
	('FKP', 'Falkland Islands Pound'), ('GBP', 'Pound Sterling'), ('GEL', 'Lari'),
	('GHS', 'Ghana Cedi'), ('GIP', 'Gibraltar Pound'), ('GMD', 'Dalasi'),
	('GNF', 'Guinean Franc'), ('GTQ', 'Quetzal'), ('GYD', 'Guyana Dollar'),
	('HKD', 'Hong Kong Dollar'), ('HNL', 'Lempira'), ('HRK', 'Kuna'), ('HTG', 'Gourde'),
	('HUF', 'Forint'), ('IDR', 'Rupiah'), ('ILS', 'New Israeli Sheqel'), ('INR', 'Indian Rupee'),
	('IQD', 'Iraqi Dinar'), ('IRR', 'Iranian Rial'), ('ISK', 'Iceland Krona'),
	('JMD', 'Jamaican Dollar'), ('JOD', 'Jordanian Dinar'), ('JPY', 'Yen'),
	('KES', 'Kenyan Shilling'), ('KGS', 'Som'), ('KHR', 'Riel'), ('KMF', 'Comorian Franc'),
	('KPW', 'North Korean Won'), ('KRW', 'Won'), ('KWD', 'Kuwaiti Dinar'),
	('KYD', 'Cayman Islands Dollar'), ('KZT', 'Tenge'), ('LAK', 'Lao Kip'),
	('LBP', 'Lebanese Pound'), ('LKR', 'Sri Lanka Rupee'), ('LRD', 'Liberian Dollar'),
	('LSL', 'Loti'), ('LYD', 'Libyan Dinar'), ('MAD', 'Moroccan Dirham'), ('MDL', 'Moldovan Leu'),
	('MGA', 'Malagasy Ariary'), ('MKD', 'Denar'), ('MMK', 'Kyat'), ('MNT', 'Tugrik'),
	('MOP', 'Pataca'), ('MRU', 'Ouguiya'), ('MUR', 'Mauritius Rupee'), ('MVR', 'Rufiyaa'),
	('MWK', 'Malawi Kwacha'), ('MXN', 'Mexican Peso'),
	('MXV', 'Mexican Unidad de Inversion (UDI)'), ('MYR', 'Malaysian Ringgit'),
	('MZN', 'Mozambique Metical'), ('NAD', 'Namibia Dollar'), ('NGN', 'Naira'),
	('NIO', 'Cordoba Oro'), ('NOK', 'Norwegian Krone'), ('NPR', 'Nepalese Rupee'),
	('NZD', 'New Zealand Dollar'), ('OMR', 'Rial Omani'), ('PAB', 'Balboa'), ('PEN', 'Sol'),
	('PGK', 'Kina'), ('PHP', 'Philippine Peso'), ('PKR', 'Pakistan Rupee'), ('PLN', 'Zloty'),
	('PYG', 'Guarani'), ('QAR', 'Qatari Rial'), ('RON', 'Romanian Leu'), ('RSD', 'Serbian Dinar'),
	('RUB', 'Russian Ruble'), ('RWF', 'Rwanda Franc'), ('SAR', 'Saudi Riyal'),
	('SBD', 'Solomon Islands Dollar'), ('SCR', 'Seychelles Rupee'), ('SDG', 'Sudanese Pound'),
	('SEK', 'Swedish Krona'), ('SGD', 'Singapore Dollar'), ('SHP', 'Saint Helena Pound'),
	('SLE', 'Leone'), ('SLL', 'Leone'), ('SOS', 'Somali Shilling'), ('SRD', 'Surinam Dollar'),
	('SSP', 'South Sudanese Pound'), ('STN', 'Dobra'), ('SVC', 'El Salvador Colon'),
	('SYP', 'Syrian Pound'), ('SZL', 'Lilangeni'), ('THB', 'Baht'), ('TJS', 'Somoni'),
	('TMT', 'Turkmenistan New Manat'), ('TND', 'Tunisian Dinar'), ('TOP', 'Pa’anga'),
	('TRY', 'Turkish Lira'), ('TTD', 'Trinidad and Tobago Dollar'), ('TWD', 'New Taiwan Dollar'),
	('TZS', 'Tanzanian Shilling'), ('UAH', 'Hryvnia'), ('UGX', 'Uganda Shilling'),
	('USD', 'US Dollar'), ('USN', 'US Dollar (Next day)'),
	('UYI', 'Uruguay Peso en Unidades Indexadas (UI)'), ('UYU', 'Peso Uruguayo'),
	('UYW', 'Unidad Previsional'), ('UZS', 'Uzbekistan Sum'), ('VED', 'Bolívar Soberano'),
	('VES', 'Bolívar Soberano'), ('VND', 'Dong'), ('VUV', 'Vatu'), ('WST', 'Tala'),
	('XAF', 'CFA Franc BEAC'), ('XAG', 'Silver'), ('XAU', 'Gold'),
	('XBA', 'Bond Markets Unit European Composite Unit (EURCO)'),
	('XBB', 'Bond Markets Unit European Monetary Unit (E.M.U.-6)'),
	('XBC', 'Bond Markets Unit European Unit of Account 9 (E.U.A.-9)'),
	('XBD', 'Bond Markets Unit European Unit of Account 17 (E.U.A.-17)'),
	('XCD', 'East Caribbean Dollar'), ('XDR', 'SDR (Special Drawing Right)'),
	('XOF', 'CFA Franc BCEAO'), ('XPD', 'Palladium'), ('XPF', 'CFP Franc'), ('XPT', 'Platinum'),
	('XSU', 'Sucre'), ('XTS', 'Codes specifically reserved for testing purposes'),
	('XUA', 'ADB Unit of Account'),
	('XXX', 'The codes assigned for transactions where no currency is involved'),
	('YER', 'Yemeni Rial'), ('ZAR', 'Rand'), ('ZMW', 'Zambian Kwacha'),
	('ZWL', 'Zimbabwe Dollar')
) AS c(code, name);
-- ISO 4217's minor units (list one): 2 unless listed here, none for the
-- funds, metals and codes for testing or no currency
UPDATE @extschema@.currency c SET minor_units = CASE
	WHEN c.code IN ('BIF', 'CLP', 'DJF', 'GNF', 'ISK', 'JPY', 'KMF', 'KRW', 'PYG', 'RWF', 'UGX',
					'UYI', 'VND', 'VUV', 'XAF', 'XOF', 'XPF') THEN 0
	WHEN c.code IN ('BHD', 'IQD', 'JOD', 'KWD', 'LYD', 'OMR', 'TND') THEN 3
	WHEN c.code IN ('CLF', 'UYW') THEN 4
	WHEN c.code IN ('XAG', 'XAU', 'XBA', 'XBB', 'XBC', 'XBD', 'XDR', 'XPD', 'XPT', 'XSU', 'XTS',
					'XUA', 'XXX') THEN NULL
	ELSE 2 END
WHERE c.builtin;
CREATE TRIGGER currency_builtin BEFORE INSERT OR UPDATE OR DELETE ON @extschema@.currency
	FOR EACH ROW EXECUTE FUNCTION @extschema@._builtin_row();

CREATE TABLE @extschema@.statement (
	statement_id	bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	provider_id		integer NOT NULL,
	period			date NOT NULL,
	account			text,
	format			text NOT NULL CHECK (format IN ('csv', 'json')),
	digest			text NOT NULL,
	imported_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	imported_by		name NOT NULL DEFAULT SESSION_USER,
	lines			integer NOT NULL,
	totals			jsonb NOT NULL,
	errors			jsonb NOT NULL DEFAULT '[]',
	supersedes		bigint,
	superseded_by	bigint,
	options			jsonb NOT NULL DEFAULT '{}',
	-- the same body imported with other options (another account, month,
	-- column map) is another statement, not a duplicate of the first
	CONSTRAINT statement_provider_id_digest_format_options_key
		UNIQUE (provider_id, digest, format, options)
);
CREATE INDEX statement_period_idx ON @extschema@.statement (provider_id, period, account);
COMMENT ON TABLE @extschema@.statement IS
	'One imported carrier statement (monthly bill), written by shipsync.import_statement(): provider, month, account, who imported it when, how many lines were stored, the totals per currency as billed, and the SHA-256 of the body (the same body again, in the same format and with the same options, is a no-op). A later statement of the same provider, period and account supersedes the earlier one line by line.';
COMMENT ON COLUMN @extschema@.statement.period IS 'The first day of the month billed.';
COMMENT ON COLUMN @extschema@.statement.account IS 'The account billed (options.account, e.g. an SF monthly card), when a provider bills several: statements of different accounts never supersede each other.';
COMMENT ON COLUMN @extschema@.statement.digest IS 'Hex SHA-256 of the body as given: importing the same body again, in the same format and with the same options, changes nothing.';
COMMENT ON COLUMN @extschema@.statement.options IS 'The options it was imported with (columns, period, account, on_error, delimiter): part of what makes an import the same again, as they change what the body says.';
COMMENT ON COLUMN @extschema@.statement.lines IS 'Lines of the statement stored (revisions and unchanged lines included; skipped lines are in errors).';
COMMENT ON COLUMN @extschema@.statement.totals IS 'Sum of the stored lines'' amounts per currency, as billed: {"CNY": "1234.50"}.';
COMMENT ON COLUMN @extschema@.statement.errors IS 'With options on_error = skip: the lines left out, [{"line", "column", "error"}].';
COMMENT ON COLUMN @extschema@.statement.supersedes IS 'The earlier statement of the same provider and period that this one corrects.';
COMMENT ON COLUMN @extschema@.statement.statement_id IS 'The statement; fee_line.statement_id names the statement a bill line last came from.';
COMMENT ON COLUMN @extschema@.statement.provider_id IS 'The provider that billed (shipsync.provider).';
COMMENT ON COLUMN @extschema@.statement.format IS 'csv or json, as given to import_statement().';
COMMENT ON COLUMN @extschema@.statement.imported_at IS 'When it was imported.';
COMMENT ON COLUMN @extschema@.statement.imported_by IS 'The session user who imported it.';
COMMENT ON COLUMN @extschema@.statement.superseded_by IS 'The later statement of the same provider, period and account that replaced it; NULL while it is the current one.';

CREATE TABLE @extschema@.fee_line (
	fee_line_id		bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	provider_id		integer NOT NULL,
	tracking_number text COLLATE "C" NOT NULL,
	fee_type		text NOT NULL CHECK (fee_type IN ('freight', 'insurance', 'label', 'postage',
						'fuel', 'cod', 'surcharge', 'tax', 'refund', 'other')),
	fee_key			text NOT NULL DEFAULT '',
	quote			boolean NOT NULL,
	binding_id		integer,
	order_key		text COLLATE "C",
	raw_type		text,
	amount			numeric NOT NULL,
	currency		text NOT NULL,
	settlement		text CHECK (settlement IN ('monthly', 'cash')),
	payer			text CHECK (payer IN ('sender', 'receiver', 'third_party')),
	billed_weight_kg numeric CHECK (billed_weight_kg >= 0),
	state			text NOT NULL CHECK (state IN ('estimated', 'charged', 'refunded', 'adjusted')),
	source			text NOT NULL CHECK (source IN ('create', 'push', 'pull', 'statement')),
	statement_id	bigint,
	occurred_at		timestamptz,
	recorded_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	recorded_by		text NOT NULL,
	revision		integer NOT NULL DEFAULT 1,
	-- a line a corrected statement of its period no longer lists: billed
	-- no more (amount 0, state adjusted); told apart from a line the
	-- carrier itself bills at 0.00 adjusted (a waived fee), which is billed
	withdrawn		boolean NOT NULL DEFAULT false,
	CHECK (quote = (state = 'estimated')),
	-- the order is part of a line's identity: a carrier that gives a
	-- waybill number again (recycled) bills the new parcel's order, never
	-- the old one's line; a parked line (no order) is one of its kind too
	CONSTRAINT fee_line_identity UNIQUE NULLS NOT DISTINCT
		(provider_id, tracking_number, fee_type, fee_key, quote, binding_id, order_key)
);
CREATE INDEX fee_line_order_idx ON @extschema@.fee_line (binding_id, order_key);
CREATE INDEX fee_line_parked_idx ON @extschema@.fee_line (provider_id, tracking_number)
	WHERE binding_id IS NULL;
COMMENT ON TABLE @extschema@.fee_line IS
	'One fee a carrier quoted or billed, unique per provider, tracking number, fee type, the carrier''s line key, quote or bill, and order (a recycled waybill number bills its new order). Amounts are numeric as the carrier wrote them, never float. A change keeps the previous version in shipsync.fee_line_history; the same line received again changes nothing. binding_id and order_key are NULL while no shipment has the tracking number (parked).';
COMMENT ON COLUMN @extschema@.fee_line.fee_type IS 'Canonical: freight, insurance, label, postage, fuel, cod, surcharge, tax, refund, other (shipsync.fee_type_map).';
COMMENT ON COLUMN @extschema@.fee_line.fee_key IS 'The carrier''s own key of the line; empty when it gives none (a second line of the same type in one notice is #2, a third #3).';
COMMENT ON COLUMN @extschema@.fee_line.quote IS 'True for the fees of a create response (state estimated); a bill never overwrites them.';
COMMENT ON COLUMN @extschema@.fee_line.raw_type IS 'The fee code as the carrier wrote it.';
COMMENT ON COLUMN @extschema@.fee_line.amount IS 'As billed, in currency; a line in state refunded, or of type refund, counts against the fees whatever its sign.';
COMMENT ON COLUMN @extschema@.fee_line.currency IS 'ISO 4217 code (shipsync.currency).';
COMMENT ON COLUMN @extschema@.fee_line.state IS 'estimated (a quote), charged, refunded or adjusted (a bill).';
COMMENT ON COLUMN @extschema@.fee_line.source IS 'Where this version came from: create (response), push (ingest_fees), pull (the dispatcher asked), statement (import_statement).';
COMMENT ON COLUMN @extschema@.fee_line.recorded_by IS 'Who or what made this version: the session user of a push or an import, dispatcher for create responses and pulls.';
COMMENT ON COLUMN @extschema@.fee_line.revision IS '1 for the first version, one more for every change; the earlier versions are in shipsync.fee_line_history.';
COMMENT ON COLUMN @extschema@.fee_line.fee_line_id IS 'The line; its earlier versions in fee_line_history carry it.';
COMMENT ON COLUMN @extschema@.fee_line.provider_id IS 'The provider that quoted or billed it.';
COMMENT ON COLUMN @extschema@.fee_line.tracking_number IS 'The waybill the fee is for, as the carrier gave it.';
COMMENT ON COLUMN @extschema@.fee_line.binding_id IS 'The attached table of the order; NULL while the line is parked (no shipment has its tracking number yet).';
COMMENT ON COLUMN @extschema@.fee_line.order_key IS 'The order, as the key column''s value in text; NULL while parked.';
COMMENT ON COLUMN @extschema@.fee_line.settlement IS 'monthly (on account) or cash, when the carrier says.';
COMMENT ON COLUMN @extschema@.fee_line.withdrawn IS 'True for a bill line a corrected statement of its period no longer lists (amount 0, state adjusted): no bill line any more. A line the carrier bills at 0 (a waived fee) is false: billed, at 0.';
COMMENT ON COLUMN @extschema@.fee_line.payer IS 'sender, receiver or third_party, when the carrier says.';
COMMENT ON COLUMN @extschema@.fee_line.billed_weight_kg IS 'The weight the carrier billed, in kg, when it says.';
COMMENT ON COLUMN @extschema@.fee_line.statement_id IS 'The statement this version came from (source statement).';
COMMENT ON COLUMN @extschema@.fee_line.occurred_at IS 'When the carrier says the fee arose; a notice older than the line''s current version changes nothing.';
COMMENT ON COLUMN @extschema@.fee_line.recorded_at IS 'When this version was recorded.';

CREATE TABLE @extschema@.fee_line_history (
	fee_line_id		bigint NOT NULL,
	revision		integer NOT NULL,
	raw_type		text,
	amount			numeric NOT NULL,
	currency		text NOT NULL,
	settlement		text,
	payer			text,
	billed_weight_kg numeric,
	state			text NOT NULL,
	source			text NOT NULL,
	statement_id	bigint,
	occurred_at		timestamptz,
	recorded_at		timestamptz NOT NULL,
	recorded_by		text NOT NULL,
	superseded_at	timestamptz NOT NULL,
	superseded_by	text NOT NULL,
	superseded_source text NOT NULL,
	withdrawn		boolean NOT NULL DEFAULT false,
	PRIMARY KEY (fee_line_id, revision)
);
COMMENT ON TABLE @extschema@.fee_line_history IS
	'Every earlier version of a fee line: its values, when and by whom and from which source it was recorded, and when, by whom and from which source it was replaced.';
COMMENT ON COLUMN @extschema@.fee_line_history.fee_line_id IS 'The line (shipsync.fee_line) this was a version of.';
COMMENT ON COLUMN @extschema@.fee_line_history.revision IS 'The version''s revision; the line''s current one is higher.';
COMMENT ON COLUMN @extschema@.fee_line_history.superseded_at IS 'When the next version replaced it.';
COMMENT ON COLUMN @extschema@.fee_line_history.superseded_by IS 'Who or what recorded the next version.';
COMMENT ON COLUMN @extschema@.fee_line_history.superseded_source IS 'Where the next version came from: create, push, pull or statement.';
COMMENT ON COLUMN @extschema@.fee_line_history.withdrawn IS 'The version was a withdrawal (shipsync.fee_line.withdrawn).';

-- The previous version of a changed line goes to the history; the new one
-- gets the next revision.  Only changes of what the line says count.
CREATE FUNCTION @extschema@._fee_line_revise()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	INSERT INTO @extschema@.fee_line_history (fee_line_id, revision, raw_type, amount, currency,
		settlement, payer, billed_weight_kg, state, source, statement_id, occurred_at,
		recorded_at, recorded_by, superseded_at, superseded_by, superseded_source, withdrawn)
	VALUES (OLD.fee_line_id, OLD.revision, OLD.raw_type, OLD.amount, OLD.currency,
		OLD.settlement, OLD.payer, OLD.billed_weight_kg, OLD.state, OLD.source, OLD.statement_id,
		OLD.occurred_at, OLD.recorded_at, OLD.recorded_by, now(), NEW.recorded_by, NEW.source,
		OLD.withdrawn);
	NEW.revision := OLD.revision + 1;
	NEW.recorded_at := now();
	RETURN NEW;
END
$$;
CREATE TRIGGER fee_line_revise BEFORE UPDATE ON @extschema@.fee_line
	FOR EACH ROW
	WHEN ((OLD.amount, OLD.currency, OLD.state, OLD.settlement, OLD.payer, OLD.billed_weight_kg,
		   OLD.withdrawn)
		  IS DISTINCT FROM (NEW.amount, NEW.currency, NEW.state, NEW.settlement, NEW.payer,
							NEW.billed_weight_kg, NEW.withdrawn))
	EXECUTE FUNCTION @extschema@._fee_line_revise();

-- What settlement and the other views add up: one row per shipment
-- (provider, binding, order) and currency, kept by _fee_totals() in the
-- statement that changes the lines, so that finance's views read a row per
-- shipment rather than every line.
CREATE TABLE @extschema@.fee_sum (
	binding_id		integer NOT NULL,
	order_key		text COLLATE "C" NOT NULL,
	provider_id		integer NOT NULL,
	currency		text NOT NULL,
	estimated		numeric NOT NULL,
	charged			numeric NOT NULL,
	refunded		numeric NOT NULL,
	quote_lines		integer NOT NULL,
	bill_lines		integer NOT NULL,
	last_change		timestamptz NOT NULL,
	PRIMARY KEY (binding_id, order_key, provider_id, currency)
);
COMMENT ON TABLE @extschema@.fee_sum IS
	'The fee lines of each shipment (provider, binding, order) summed per currency, kept with the lines: estimated (the quote, net of refunds), charged (the bill, refunds left out), refunded (positive), how many quote and bill lines, and when the latest changed. Lines of waybills no shipment has, and lines a corrected statement withdrew, are not in it.';

CREATE TABLE @extschema@.fee_pull (
	binding_id		integer NOT NULL,
	order_key		text COLLATE "C" NOT NULL,
	provider_id		integer NOT NULL,
	pulls			integer NOT NULL DEFAULT 0,
	last_pulled_at	timestamptz,
	next_pull_at	timestamptz NOT NULL,
	last_result		text,
	PRIMARY KEY (binding_id, order_key, provider_id)
);
CREATE INDEX fee_pull_due_idx ON @extschema@.fee_pull (provider_id, next_pull_at);
COMMENT ON TABLE @extschema@.fee_pull IS
	'The dispatcher''s fee queries (provider option fee_pull_after): a shipment enters when its delivered event is stored, due fee_pull_after after it; then how often it was asked, when, what the carrier said, and when it is asked again if its fees were not there yet (at most 10 times). Rows whose next_pull_at is infinity are done.';

-- delivered events, for the unbilled shipments of shipsync.fee_difference
CREATE INDEX tracking_event_delivered_idx ON @extschema@.tracking_event (occurred_at)
	WHERE status = 'delivered';

-- A delivered event queues the fee pull of its order's shipment, when the
-- shipping provider pulls fees.  Only delivered events of the main waybill
-- call it (a child or return parcel of a multi-piece shipment is no
-- delivery of the order).
CREATE FUNCTION @extschema@._queue_fee_pull()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	INSERT INTO @extschema@.fee_pull AS fp (binding_id, order_key, provider_id, next_pull_at)
	SELECT NEW.binding_id, NEW.order_key, b.provider_id,
		   NEW.occurred_at + @extschema@._interval_or_null(p.options->>'fee_pull_after')
	FROM @extschema@.binding b
	JOIN @extschema@.provider p ON p.provider_id = b.provider_id
	WHERE b.binding_id = NEW.binding_id AND p.dialect IN ('generic', 'sf_express')
	  AND @extschema@._interval_or_null(p.options->>'fee_pull_after') IS NOT NULL
	ON CONFLICT (binding_id, order_key, provider_id) DO NOTHING;
	RETURN NULL;
END
$$;
CREATE TRIGGER queue_fee_pull AFTER INSERT ON @extschema@.tracking_event
	FOR EACH ROW WHEN (NEW.status = 'delivered' AND NEW.piece IS NULL)
	EXECUTE FUNCTION @extschema@._queue_fee_pull();

-- The default currency of a provider's fee lines: option currency, else
-- what its dialect bills in (NULL: every line must say).
CREATE FUNCTION @extschema@._fee_currency(options jsonb, dialect text)
RETURNS text
LANGUAGE sql IMMUTABLE
-- A body in standard SQL, bound when created: it needs no pinned
-- search_path, and without one (a SET clause) the planner inlines it into
-- the calling statement instead of calling it, with a configuration change
-- and a plan of its body, for every row (the apply calls it per batch).
RETURN coalesce(options OPERATOR(pg_catalog.->>) 'currency',
	CASE dialect WHEN 'sf_express' THEN 'CNY' WHEN 'easypost' THEN 'USD' END);

/*
 * The locks of a transaction that writes the fee lines of these tracking
 * numbers, so that two writers of one order's lines never compute its
 * total apart.  A small batch shares its providers and takes each tracking
 * number (one advisory lock each, in a fixed order); a statement, or a
 * batch of more than 1,000 tracking numbers (the lock table holds a few
 * thousand in all), takes its providers whole.  Held to the end of the
 * transaction.  In C (src/fees.c): as PL/pgSQL it cost 10.9 thousand
 * instructions an answer of the apply, and a new applier's first batch
 * loaded the PL/pgSQL library for it.
 */
CREATE FUNCTION @extschema@._lock_fees(pids integer[], tns text[], whole boolean)
RETURNS void
AS 'MODULE_PATHNAME', 'shipsync_lock_fees'
LANGUAGE C;

/*
 * Parked lines of these tracking numbers whose shipment has appeared get
 * its binding and order; a tracking number given to several shipments
 * (carriers recycle them) goes to the newest.  The caller holds the
 * tracking numbers' locks.  Returns how many lines and which orders.
 */
CREATE FUNCTION @extschema@._match_parked_fees(pids integer[], tns text[],
	OUT n bigint, OUT tb integer[], OUT tk text[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	WITH want AS (
		SELECT DISTINCT f.provider_id, f.tracking_number
		FROM unnest(pids, tns) AS u(pid, tn)
		JOIN @extschema@.fee_line f ON f.binding_id IS NULL AND f.provider_id = u.pid
		 AND f.tracking_number = u.tn),
	main AS (
		SELECT DISTINCT ON (s.provider_id, s.tracking_number) s.provider_id, s.tracking_number,
			   s.binding_id, s.order_key
		FROM @extschema@.shipment s JOIN want w USING (provider_id, tracking_number)
		ORDER BY s.provider_id, s.tracking_number, s.created_at DESC),
	-- else another waybill of a multi-piece shipment (SF: child, return):
	-- its fee is the order's, looked up through the waybills' index for a
	-- number no shipment has as its tracking number only.  (The pieces'
	-- rows added to main's, as a UNION, were a set the planner guessed at
	-- two rows and joined in a loop: quadratic in the lines.)
	ship AS (
		SELECT w.provider_id, w.tracking_number,
			   coalesce(main.binding_id, p.binding_id) AS binding_id,
			   coalesce(main.order_key, p.order_key) AS order_key
		FROM want w
		LEFT JOIN main ON main.provider_id = w.provider_id AND main.tracking_number = w.tracking_number
		LEFT JOIN LATERAL (
			SELECT ps.binding_id, ps.order_key
			FROM @extschema@._piece_shipment(w.provider_id, w.tracking_number) ps
			WHERE main.provider_id IS NULL) p ON true
		WHERE main.provider_id IS NOT NULL OR p.binding_id IS NOT NULL),
	m AS (
		UPDATE @extschema@.fee_line f SET binding_id = ship.binding_id, order_key = ship.order_key
		  FROM ship
		 WHERE f.binding_id IS NULL AND f.provider_id = ship.provider_id
		   AND f.tracking_number = ship.tracking_number
		RETURNING f.binding_id, f.order_key)
	SELECT count(*), coalesce(array_agg(m.binding_id), '{}'), coalesce(array_agg(m.order_key), '{}')
	INTO n, tb, tk FROM m;
END
$$;

/*
 * Store one batch of fee lines and write the totals: the shared step of
 * every source (src/fees.c).  Arrays are parallel, one element per line;
 * bids/oks name the order when the caller knows it (create responses),
 * else the line is matched by its tracking number, or parked.  Lines of a
 * tracking number in this batch that were parked before are matched first.
 * Its locks are _lock_fees()'s (a statement takes its provider whole).
 *
 * A statement supersedes line by line: a line it bills takes its values
 * (even one an earlier version already had: the later statement is the
 * carrier's word), and one it bills unchanged is still marked as its own,
 * so that a statement's lines add up to it.  With replaces, the lines of
 * the earlier statements of its period and account which this one does
 * not bill are withdrawn (amount 0, adjusted), except those of the
 * waybills in held (its skipped lines'), and none at all when held has a
 * NULL (a skipped line whose waybill could not be read).  Returns the
 * counts, then one row per order whose fee_total changed and is written
 * back.
 */
CREATE FUNCTION @extschema@._store_fees(src text, stmt bigint, replaces bigint, who text,
	pids integer[], bids integer[], oks text[], tns text[], codes text[], amounts numeric[],
	currencies text[], fkeys text[], settlements text[], payers text[], weights numeric[],
	states text[], ats timestamptz[], held text[] DEFAULT NULL)
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- (its one statement guesses a few hundred lines and a probe of the pieces'
-- index for each at 2,600 on paper: past jit_optimize_above_cost, a
-- statement of 40,000 lines spent 13 of its 19 s compiling it)
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
	n_in bigint := coalesce(array_length(tns, 1), 0);
	n_new bigint;
	n_rev bigint;
	n_park bigint;
	n_matched bigint := 0;
	n_withdrawn bigint := 0;
	twice text;
	tb integer[];
	tk text[];
BEGIN
	PERFORM @extschema@._lock_fees(pids, tns, src = 'statement');

	SELECT m.n, m.tb, m.tk INTO n_matched, tb, tk
	FROM @extschema@._match_parked_fees(pids, tns) m;

	WITH inc AS (
		SELECT u.ord, u.pid, u.bid, u.ok, u.tn, u.code, u.amount, u.cur, u.fkey, u.settle,
			   u.payer, u.weight, u.st, u.at,
			   coalesce(tm.fee_type, ft.name, 'other') AS fee_type
		FROM unnest(pids, bids, oks, tns, codes, amounts, currencies, fkeys, settlements, payers,
					weights, states, ats)
			 WITH ORDINALITY AS u(pid, bid, ok, tn, code, amount, cur, fkey, settle, payer,
								  weight, st, at, ord)
		JOIN @extschema@.provider p ON p.provider_id = u.pid
		LEFT JOIN @extschema@.fee_type_map tm
			   ON tm.profile = coalesce(p.options->>'profile', p.dialect) AND tm.code = u.code
		LEFT JOIN @extschema@.fee_type ft ON ft.name = lower(u.code)),
	-- a line without a key of the carrier: the first of its type in this
	-- notice has key '', the next '#2', ...; the same line twice: the last.
	-- Grouped and sorted bytewise (COLLATE "C"): the groups are the same
	-- under any deterministic collation, and a statement sorts 100,000
	-- lines here twice, where strcoll() cost more than the rest of the sort
	keyed AS (
		SELECT DISTINCT ON (y.pid, y.tn COLLATE "C", y.fee_type COLLATE "C", y.k COLLATE "C") y.*
		FROM (SELECT inc.*,
					 CASE WHEN inc.fkey IS NOT NULL THEN inc.fkey
						  WHEN row_number() OVER w = 1 THEN ''
						  ELSE '#' || row_number() OVER w END AS k
			  FROM inc
			  WINDOW w AS (PARTITION BY inc.pid, inc.tn COLLATE "C", inc.fee_type COLLATE "C", inc.fkey IS NULL
						   ORDER BY inc.ord)) y
		ORDER BY y.pid, y.tn COLLATE "C", y.fee_type COLLATE "C", y.k COLLATE "C", y.ord DESC),
	-- a statement billing one carrier's line (its key) twice: refused
	-- below, since keyed keeps one of them and the statement's total
	-- counts both (a push sending a line again is the same line again)
	dup AS (
		SELECT pg_catalog.format('Waybill %s, fee type %s, key %s: %s lines, of %s.', i.tn, i.fee_type,
					pg_catalog.quote_literal(i.fkey), count(*),
					string_agg(i.amount::text || ' ' || coalesce(i.cur, ''), ', ' ORDER BY i.ord)) AS msg
		FROM inc i
		WHERE src = 'statement' AND i.fkey IS NOT NULL
		GROUP BY i.pid, i.tn, i.fee_type, i.fkey
		HAVING count(*) > 1
		LIMIT 1),
	main AS (
		SELECT DISTINCT ON (s.provider_id, s.tracking_number) s.provider_id, s.tracking_number,
			   s.binding_id, s.order_key
		FROM @extschema@.shipment s
		WHERE (s.provider_id, s.tracking_number) IN
			  (SELECT keyed.pid, keyed.tn FROM keyed WHERE keyed.bid IS NULL)
		ORDER BY s.provider_id, s.tracking_number, s.created_at DESC),
	-- each line's order: the caller's, else the newest shipment's of its
	-- waybill (a recycled number is the new parcel's), else, for a waybill
	-- no shipment has as its tracking number, the shipment that lists it
	-- among the other waybills of a multi-piece shipment (SF: child,
	-- return; the line keeps the piece's number), looked up through the
	-- waybills' index for those lines only; else none (parked).  Part of
	-- the line's identity.  (The pieces' rows added to main's, as a UNION,
	-- were a set the planner guessed at two rows once the shipments were
	-- analyzed, and joined in a loop: a statement of 100,000 lines ran for
	-- minutes.)
	kt AS (
		SELECT k.*, coalesce(k.bid, main.binding_id, pc.binding_id) AS tb,
			   coalesce(k.ok, main.order_key, pc.order_key) AS tok
		FROM keyed k
		LEFT JOIN main ON main.provider_id = k.pid AND main.tracking_number = k.tn
		-- (OFFSET 0 keeps the subquery whole, its condition a filter of
		-- each line before the lookup: pulled up into the join, it was
		-- tested after the lookup, run for every line of a statement)
		LEFT JOIN LATERAL (
			SELECT ps.binding_id, ps.order_key FROM @extschema@._piece_shipment(k.pid, k.tn) ps
			WHERE k.bid IS NULL AND main.provider_id IS NULL OFFSET 0) pc ON true),
	up AS (
		INSERT INTO @extschema@.fee_line AS f (provider_id, tracking_number, fee_type, fee_key,
			quote, binding_id, order_key, raw_type, amount, currency, settlement, payer,
			billed_weight_kg, state, source, statement_id, occurred_at, recorded_by)
		SELECT k.pid, k.tn, k.fee_type, k.k, src = 'create', k.tb, k.tok,
			   k.code, k.amount, k.cur, k.settle, k.payer, k.weight,
			   coalesce(k.st, CASE WHEN src = 'create' THEN 'estimated' ELSE 'charged' END),
			   src, stmt, k.at, who
		FROM kt k
		ORDER BY k.ord
		ON CONFLICT (provider_id, tracking_number, fee_type, fee_key, quote, binding_id, order_key) DO UPDATE SET
			raw_type = EXCLUDED.raw_type, amount = EXCLUDED.amount, currency = EXCLUDED.currency,
			settlement = coalesce(EXCLUDED.settlement, f.settlement),
			payer = coalesce(EXCLUDED.payer, f.payer),
			billed_weight_kg = coalesce(EXCLUDED.billed_weight_kg, f.billed_weight_kg),
			state = EXCLUDED.state, source = EXCLUDED.source, statement_id = EXCLUDED.statement_id,
			occurred_at = coalesce(EXCLUDED.occurred_at, f.occurred_at),
			recorded_by = EXCLUDED.recorded_by, withdrawn = false,
			binding_id = coalesce(f.binding_id, EXCLUDED.binding_id),
			order_key = coalesce(f.order_key, EXCLUDED.order_key)
		-- a change, not older than what the line says now, and, but from
		-- a statement, not a notice seen before (a late duplicate of a
		-- revised line); own below takes, for statements, the lines they
		-- bill as they are
		WHERE (f.amount, f.currency, f.state, f.settlement, f.payer, f.billed_weight_kg)
			  IS DISTINCT FROM (EXCLUDED.amount, EXCLUDED.currency, EXCLUDED.state,
								coalesce(EXCLUDED.settlement, f.settlement),
								coalesce(EXCLUDED.payer, f.payer),
								coalesce(EXCLUDED.billed_weight_kg, f.billed_weight_kg))
		  AND (EXCLUDED.occurred_at IS NULL OR f.occurred_at IS NULL
			   OR EXCLUDED.occurred_at >= f.occurred_at)
		  AND (src = 'statement'
			   OR NOT EXISTS (SELECT 1 FROM @extschema@.fee_line_history h
							  WHERE h.fee_line_id = f.fee_line_id
								AND (h.amount, h.currency, h.state, h.occurred_at)
									IS NOT DISTINCT FROM (EXCLUDED.amount, EXCLUDED.currency,
														  EXCLUDED.state, EXCLUDED.occurred_at)))
		RETURNING f.xmax = 0 AS inserted, f.binding_id, f.order_key),
	-- a statement's lines it bills as they are: its own from now on (no
	-- revision: nothing they say changes), so that a later correction
	-- withdraws them and "does the statement add up?" counts them.  After
	-- up has run to its end (the one-time filter reads all of it): up
	-- meeting a row own had changed in this command would be an error.
	-- Not a line the current statement of another month (or account)
	-- bills: that one bills it still, and this one listing it again is
	-- what "does it add up?" should show
	own AS (
		UPDATE @extschema@.fee_line f SET statement_id = stmt, withdrawn = false
		  FROM kt k
		 WHERE (SELECT count(*) FROM up) >= 0
		   AND src = 'statement' AND f.provider_id = k.pid AND f.tracking_number = k.tn
		   AND f.fee_type = k.fee_type AND f.fee_key = k.k AND NOT f.quote
		   AND f.binding_id IS NOT DISTINCT FROM k.tb AND f.order_key IS NOT DISTINCT FROM k.tok
		   AND f.statement_id IS DISTINCT FROM stmt
		   AND (f.statement_id IS NULL
				OR f.statement_id NOT IN (SELECT e.statement_id
										  FROM @extschema@.statement e
										  JOIN @extschema@.statement c ON c.statement_id = stmt
										  WHERE e.provider_id = c.provider_id AND e.superseded_by IS NULL
											AND (e.period, e.account) IS DISTINCT FROM (c.period, c.account)))
		   -- (what it says: a line older than the line's current version,
		   -- which up left as it was, is not the statement's)
		   AND NOT (f.amount, f.currency, f.state, f.settlement, f.payer, f.billed_weight_kg)
				   IS DISTINCT FROM (k.amount, k.cur, coalesce(k.st, 'charged'),
									 coalesce(k.settle, f.settlement),
									 coalesce(k.payer, f.payer),
									 coalesce(k.weight, f.billed_weight_kg))
		RETURNING f.fee_line_id, f.binding_id, f.order_key),
	-- of those, the lines a correction had withdrawn: billed again, so
	-- their orders' totals change (fee_line read here is as it was before)
	back AS (
		SELECT own.binding_id, own.order_key FROM own
		JOIN @extschema@.fee_line x ON x.fee_line_id = own.fee_line_id
		WHERE x.withdrawn AND own.binding_id IS NOT NULL),
	-- a corrected statement: what an earlier statement of its period and
	-- account billed and this one does not (neither among its lines nor,
	-- held, among those it skipped) is withdrawn (0, adjusted), or, when
	-- the current statement of another month or account billed it before
	-- (the carrier listed it in both), goes back to what that one says
	wd AS (
		UPDATE @extschema@.fee_line f
		   SET (amount, currency, state, statement_id, withdrawn) =
			   (SELECT coalesce(b.amount, 0), coalesce(b.currency, f.currency),
					   coalesce(b.state, 'adjusted'), coalesce(b.statement_id, stmt),
					   coalesce(b.withdrawn, true)
				FROM (SELECT 1) one
				LEFT JOIN (SELECT h.amount, h.currency, h.state, h.statement_id, h.withdrawn
						   FROM @extschema@.fee_line_history h
						   JOIN @extschema@.statement e ON e.statement_id = h.statement_id
						   JOIN @extschema@.statement c ON c.statement_id = stmt
						   WHERE h.fee_line_id = f.fee_line_id AND e.superseded_by IS NULL
							 AND (e.period, e.account) IS DISTINCT FROM (c.period, c.account)
						   ORDER BY h.revision DESC LIMIT 1) b ON true),
			   source = 'statement', recorded_by = who
		 WHERE replaces IS NOT NULL AND NOT f.quote
		   AND f.statement_id IN (SELECT e.statement_id
								  FROM @extschema@.statement e
								  JOIN @extschema@.statement c ON c.statement_id = stmt
								  WHERE e.provider_id = c.provider_id AND e.period = c.period
									AND e.account IS NOT DISTINCT FROM c.account
									AND e.statement_id <> stmt)
		   AND NOT f.withdrawn
		   AND NOT EXISTS (SELECT 1 FROM kt k
						   WHERE k.pid = f.provider_id AND k.tn = f.tracking_number
							 AND k.fee_type = f.fee_type AND k.k = f.fee_key
							 AND k.tb IS NOT DISTINCT FROM f.binding_id
							 AND k.tok IS NOT DISTINCT FROM f.order_key)
		   AND (held IS NULL OR (array_position(held, NULL) IS NULL
								 AND f.tracking_number <> ALL (held)))
		RETURNING f.binding_id, f.order_key)
	SELECT (SELECT dup.msg FROM dup), (SELECT count(*) FROM up WHERE up.inserted),
		   (SELECT count(*) FROM up WHERE NOT up.inserted),
		   (SELECT count(*) FROM up WHERE up.binding_id IS NULL),
		   (SELECT count(*) FROM wd),
		   coalesce(tb, '{}') || coalesce((SELECT array_agg(x.binding_id) FROM
				(SELECT up.binding_id, up.order_key FROM up UNION ALL SELECT wd.binding_id, wd.order_key FROM wd
				 UNION ALL SELECT back.binding_id, back.order_key FROM back) x), '{}'),
		   coalesce(tk, '{}') || coalesce((SELECT array_agg(x.order_key) FROM
				(SELECT up.binding_id, up.order_key FROM up UNION ALL SELECT wd.binding_id, wd.order_key FROM wd
				 UNION ALL SELECT back.binding_id, back.order_key FROM back) x), '{}')
	INTO twice, n_new, n_rev, n_park, n_withdrawn, tb, tk;
	IF twice IS NOT NULL THEN
		RAISE EXCEPTION 'statement of provider "%" bills one line twice',
			(SELECT p.name FROM @extschema@.provider p WHERE p.provider_id = pids[1])
			USING ERRCODE = 'SS400', DETAIL = twice,
				  HINT = 'Nothing of this statement was stored. A carrier''s key names one line of a waybill''s fee type: fix the statement, or leave the key column out to store every line as its own.';
	END IF;

	kind := 'new'; n := n_new; RETURN NEXT;
	kind := 'revised'; n := n_rev; RETURN NEXT;
	kind := 'duplicate'; n := n_in - n_new - n_rev; RETURN NEXT;
	kind := 'unmatched'; n := n_park; RETURN NEXT;
	kind := 'matched'; n := n_matched; RETURN NEXT;
	kind := 'withdrawn'; n := n_withdrawn; RETURN NEXT;
	n := NULL;

	RETURN QUERY SELECT * FROM @extschema@._fee_totals(tb, tk);
END
$$;

/*
 * The numeric column each binding writes fee_total back into, with its
 * typmod and scale (NULL: a numeric without one): a total with more
 * decimals than the column holds is never written rounded (the binding's
 * write-back statement leaves the column) and its order gets a
 * writeback_failed ticket, from _fee_totals() for a bill's total and from
 * _quote_totals_unfit() for a quote's.
 */
CREATE FUNCTION @extschema@._fee_total_column()
RETURNS TABLE (binding_id integer, active boolean, attname name, atttypid oid, typmod integer, scale integer)
LANGUAGE sql STABLE
BEGIN ATOMIC
	SELECT bb.binding_id, bb.active, a.attname, a.atttypid, tm.m,
		   CASE WHEN tm.m >= 4 THEN (((tm.m - 4) & 2047) # 1024) - 1024 END
	FROM @extschema@.binding bb
	JOIN pg_catalog.pg_attribute a
	  ON a.attrelid = bb.tbl AND a.attname = bb.writeback->>'fee_total' AND NOT a.attisdropped
	JOIN pg_catalog.pg_type ty
	  ON ty.oid = coalesce(nullif((SELECT d.typbasetype FROM pg_catalog.pg_type d
								   WHERE d.oid = a.atttypid), 0), a.atttypid)
	CROSS JOIN LATERAL (SELECT CASE WHEN a.atttypmod >= 0 THEN a.atttypmod
			ELSE (SELECT d.typtypmod FROM pg_catalog.pg_type d WHERE d.oid = a.atttypid) END) tm(m)
	WHERE ty.oid = 'pg_catalog.numeric'::pg_catalog.regtype;
END;

/*
 * For the given orders, in a statement of its own (it sees the lines just
 * stored): their rows of fee_sum made again, and the fee_total rule -- the
 * bill's lines where the order has any, otherwise the quote's, net of
 * refunds, when they share one currency (a bill and a quote in a currency
 * count as one when they are in the same).  The shipment of the binding's
 * provider then carries the total, and the order rows whose binding writes
 * fee_total back are returned; an order whose lines mix currencies keeps
 * its total and gets one open ticket of kind fee_currency_mixed, resolved
 * when they agree again; so does an order whose total has more decimals
 * than its currency has (a quote of JPY 1500.5).
 */
CREATE FUNCTION @extschema@._fee_totals(tb integer[], tk text[])
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	-- one join and one aggregate for all the orders (a statement touches
	-- tens of thousands), min <> max for "more than one currency"
	RETURN QUERY
	WITH t AS (
		SELECT DISTINCT x.b, x.k FROM unnest(tb, tk) AS x(b, k) WHERE x.b IS NOT NULL),
	-- a quote counts while it is the quote of the order's shipment: an
	-- order shipped again under its key (its shipment row now holds
	-- another waybill) is quoted once, not twice; bills all count
	per AS MATERIALIZED (
		SELECT l.binding_id AS b, l.order_key AS k, l.provider_id AS pid, l.currency AS cur,
			   coalesce(sum(CASE WHEN l.fee_type = 'refund' THEN -abs(l.amount) ELSE l.amount END)
					FILTER (WHERE l.quote AND q.current), 0) AS est,
			   coalesce(sum(l.amount) FILTER (WHERE NOT l.quote AND l.state <> 'refunded'
											  AND l.fee_type <> 'refund'), 0) AS chg,
			   coalesce(sum(abs(l.amount)) FILTER (WHERE NOT l.quote
					AND (l.state = 'refunded' OR l.fee_type = 'refund')), 0) AS ref,
			   count(*) FILTER (WHERE l.quote AND q.current) AS nq,
			   count(*) FILTER (WHERE NOT l.quote) AS nb,
			   max(l.recorded_at) AS last
		FROM @extschema@.fee_line l
		JOIN t ON l.binding_id = t.b AND l.order_key = t.k
		-- (a line a corrected statement withdrew is billed no more: no
		-- bill line, so its order is unbilled again and takes its quote)
		CROSS JOIN LATERAL (
			SELECT NOT l.quote OR coalesce(
				(SELECT s.tracking_number FROM @extschema@.shipment s
				  WHERE s.binding_id = l.binding_id AND s.order_key = l.order_key
					AND s.provider_id = l.provider_id) = l.tracking_number, true) AS current) q
		WHERE NOT l.withdrawn
		GROUP BY l.binding_id, l.order_key, l.provider_id, l.currency),
	kept AS (
		INSERT INTO @extschema@.fee_sum AS fs (binding_id, order_key, provider_id, currency,
			estimated, charged, refunded, quote_lines, bill_lines, last_change)
		SELECT per.b, per.k, per.pid, per.cur, per.est, per.chg, per.ref, per.nq, per.nb, per.last
		FROM per
		ON CONFLICT (binding_id, order_key, provider_id, currency) DO UPDATE SET
			estimated = EXCLUDED.estimated, charged = EXCLUDED.charged,
			refunded = EXCLUDED.refunded, quote_lines = EXCLUDED.quote_lines,
			bill_lines = EXCLUDED.bill_lines, last_change = EXCLUDED.last_change
		WHERE (fs.estimated, fs.charged, fs.refunded, fs.quote_lines, fs.bill_lines, fs.last_change)
			  IS DISTINCT FROM (EXCLUDED.estimated, EXCLUDED.charged, EXCLUDED.refunded,
								EXCLUDED.quote_lines, EXCLUDED.bill_lines, EXCLUDED.last_change)
		RETURNING 1),
	-- a sum whose provider and currency no line has any more; looked up
	-- in fee_line by its order index, not in per: an anti-join against the
	-- CTE scanned all of per for every sum (the planner cannot hash a
	-- generic plan's guess of one row), 8,000 comparisons a batch of 128
	gone AS (
		DELETE FROM @extschema@.fee_sum fs USING t
		 WHERE fs.binding_id = t.b AND fs.order_key = t.k
		   AND NOT EXISTS (SELECT 1 FROM @extschema@.fee_line l
						   WHERE l.binding_id = fs.binding_id AND l.order_key = fs.order_key
							 AND l.provider_id = fs.provider_id AND l.currency = fs.currency
							 AND NOT l.withdrawn)
		RETURNING 1),
	ord AS (
		SELECT per.b, per.k, sum(per.nb) > 0 AS billed,
			   min(per.cur) FILTER (WHERE per.nb > 0) AS lo_b,
			   max(per.cur) FILTER (WHERE per.nb > 0) AS hi_b,
			   min(per.cur) FILTER (WHERE per.nq > 0) AS lo_q,
			   max(per.cur) FILTER (WHERE per.nq > 0) AS hi_q,
			   -- quoted in a currency (XXX: the answer named none)
			   min(per.cur) FILTER (WHERE per.nq > 0 AND per.cur <> 'XXX') AS lo_qc,
			   max(per.cur) FILTER (WHERE per.nq > 0 AND per.cur <> 'XXX') AS hi_qc,
			   sum(per.chg - per.ref) FILTER (WHERE per.nb > 0) AS tot_b,
			   sum(per.est) FILTER (WHERE per.nq > 0) AS tot_q
		FROM per GROUP BY per.b, per.k),
	-- one currency: the bill's lines in one, and a quote in a currency in
	-- that one too (a bill in dollars of a quote in yuan is no total)
	-- and a total its currency can have (a quote of JPY 1500.5 is none:
	-- bill lines with more decimals than their currency has are refused)
	tot AS (
		SELECT ord.b, ord.k, bb.provider_id AS pid, bb.writeback ? 'fee_total' AS wb,
			   x.agree AND coalesce(pg_catalog.round(x.total, cu.minor_units) = x.total, true) AS one,
			   x.agree, x.total, x.cur, cu.minor_units AS minor
		FROM ord JOIN @extschema@.binding bb ON bb.binding_id = ord.b
		CROSS JOIN LATERAL (SELECT CASE WHEN ord.billed THEN ord.tot_b ELSE ord.tot_q END AS total,
								   CASE WHEN ord.billed THEN ord.lo_b ELSE ord.lo_q END AS cur,
								   CASE WHEN ord.billed
										THEN ord.lo_b = ord.hi_b AND coalesce(ord.lo_qc = ord.lo_b AND ord.hi_qc = ord.lo_b, true)
										ELSE ord.lo_q = ord.hi_q END AS agree) x
		LEFT JOIN @extschema@.currency cu ON cu.code = x.cur
		UNION ALL
		-- an order whose every line was withdrawn costs nothing now
		SELECT t.b, t.k, bb.provider_id, bb.writeback ? 'fee_total', true, true, 0, NULL, NULL
		FROM t JOIN @extschema@.binding bb ON bb.binding_id = t.b
		WHERE NOT EXISTS (SELECT 1 FROM per WHERE per.b = t.b AND per.k = t.k)
		  AND EXISTS (SELECT 1 FROM @extschema@.fee_line l
					  WHERE l.binding_id = t.b AND l.order_key = t.k)),
	sh AS (
		UPDATE @extschema@.shipment s SET fee_total = tot.total, updated_at = now()
		  FROM tot
		 WHERE tot.one AND s.binding_id = tot.b AND s.order_key = tot.k
		   AND s.provider_id = tot.pid AND s.fee_total IS DISTINCT FROM tot.total
		RETURNING s.binding_id, s.order_key, s.fee_total, tot.wb),
	mixed AS (
		INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, provider_id, detail)
		SELECT 'fee_currency_mixed', tot.b, tot.k, tot.pid,
			   CASE WHEN tot.agree
				   THEN format('the fees of order %s come to %s %s, more decimals than %s has (%s): its fee_total is left as it was',
							   tot.k, tot.total, tot.cur, tot.cur, tot.minor)
				   ELSE format('the fees of order %s are in %s: its fee_total is left as it was', tot.k,
							   (SELECT string_agg(DISTINCT per.cur, ', ') FROM per
								WHERE per.b = tot.b AND per.k = tot.k)) END
		FROM tot
		WHERE NOT tot.one
		  AND NOT EXISTS (SELECT 1 FROM @extschema@.exception_ticket x
						  WHERE x.kind = 'fee_currency_mixed' AND x.binding_id = tot.b
							AND x.order_key = tot.k AND x.resolved_at IS NULL)
		RETURNING 1),
	agreed AS (
		UPDATE @extschema@.exception_ticket x SET resolved_at = now(),
			   resolution = 'its fee lines are in one currency again'
		  FROM tot
		 WHERE tot.one AND x.kind = 'fee_currency_mixed' AND x.binding_id = tot.b
		   AND x.order_key = tot.k AND x.resolved_at IS NULL
		RETURNING 1),
	-- a total with more decimals than the order's numeric column holds
	-- (1.005 into a numeric(10,2)): never written rounded (the binding's
	-- write-back statement leaves the column), and the order gets a ticket
	scale AS (
		SELECT sh.binding_id, sh.order_key, sh.fee_total, c.attname, c.atttypid, c.typmod AS m,
			   c.scale AS s
		FROM sh
		JOIN @extschema@._fee_total_column() c ON c.binding_id = sh.binding_id
		WHERE sh.wb),
	unfit AS (
		INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, detail)
		SELECT 'writeback_failed', scale.binding_id, scale.order_key,
			   format('write-back of the fee total failed: %s has more decimals than column %I (%s) holds; it was left as it was, not rounded',
					  scale.fee_total, scale.attname, pg_catalog.format_type(scale.atttypid, scale.m))
		FROM scale
		WHERE scale.s IS NOT NULL AND pg_catalog.round(scale.fee_total, scale.s) <> scale.fee_total
		RETURNING exception_ticket.binding_id, exception_ticket.order_key)
	-- (kept, gone, mixed, agreed and unfit run whether or not they are read;
	-- the orders ticketed are hashed once: estimated at a few rows, an anti
	-- join compared every order written with every one ticketed, 36 million
	-- comparisons for a statement of 6,000 of each.  No key is NULL.)
	SELECT 'writeback'::text, NULL::bigint, sh.binding_id, sh.order_key, sh.fee_total
	FROM sh WHERE sh.wb
	  AND (sh.binding_id, sh.order_key) NOT IN (SELECT u.binding_id, u.order_key FROM unfit u);
END
$$;

/*
 * The quote totals the dispatcher's apply wrote back with the shipments
 * (src/apply.c: one element per shipment with a fee_total) that have more
 * decimals than the order's numeric column holds: the write-back left the
 * column as it was, and the order gets the writeback_failed ticket a bill's
 * total gets in _fee_totals() (closed, as that one, by the hourly look at
 * fees of a reconciliation pass once the column holds the shipment's
 * fee_total).  Returns how many orders.  PL/pgSQL for its cached plan: it
 * runs for every applied batch with a quote, and planned at each call (a
 * SQL function's body is) it took 0.5 ms a batch.
 */
CREATE FUNCTION @extschema@._quote_totals_unfit(bids integer[], oks text[], totals numeric[])
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	-- the columns of the batch's bindings once (materialized: inlined, the
	-- catalogs were read for each total), then each total against its own
	WITH col AS MATERIALIZED (
		SELECT c.binding_id AS b, c.attname, c.atttypid, c.typmod AS m, c.scale AS s
		FROM @extschema@._fee_total_column() c
		WHERE c.binding_id = ANY (bids) AND c.active)
	INSERT INTO @extschema@.exception_ticket (kind, binding_id, order_key, detail)
	SELECT 'writeback_failed', u.b, u.k,
		   format('write-back of the fee total failed: %s has more decimals than column %I (%s) holds; it was left as it was, not rounded',
				  u.tot, col.attname, pg_catalog.format_type(col.atttypid, col.m))
	FROM unnest(bids, oks, totals) AS u(b, k, tot)
	JOIN col ON col.b = u.b
	WHERE col.s IS NOT NULL AND u.tot IS NOT NULL AND pg_catalog.round(u.tot, col.s) <> u.tot;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;

/*
 * The row of a statement being imported (src/statement.c): its period
 * (given as YYYY-MM, else the one month all its lines fall in, in the
 * provider's time zone), its totals per currency as billed, and the
 * earlier statement of that provider, period and account it supersedes.
 */
CREATE FUNCTION @extschema@._begin_statement(pid integer, period_text text, acct text, fmt text,
	body_digest text, tz text, curs text[], amounts numeric[], ats timestamptz[], errs jsonb,
	opts jsonb, OUT statement_id bigint, OUT replaces bigint, OUT period date, OUT totals jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	lo date;
	hi date;
	nmissing bigint;
	p date;
	old bigint;
	tot jsonb;
	id bigint;
BEGIN
	IF period_text IS NOT NULL THEN
		p := to_date(period_text || '-01', 'YYYY-MM-DD');
	ELSE
		SELECT min(date_trunc('month', a AT TIME ZONE tz))::date,
			   max(date_trunc('month', a AT TIME ZONE tz))::date,
			   count(*) FILTER (WHERE a IS NULL)
		INTO lo, hi, nmissing FROM unnest(ats) AS a;
		IF lo IS NULL OR lo <> hi OR nmissing > 0 THEN
			RAISE EXCEPTION 'the month this statement bills is not known'
				USING ERRCODE = 'SS400',
					  DETAIL = CASE WHEN lo IS NULL THEN 'Its lines have no times.'
									WHEN lo <> hi THEN format('Its lines fall in %s to %s.',
										to_char(lo, 'YYYY-MM'), to_char(hi, 'YYYY-MM'))
									ELSE format('%s of its lines have no time.', nmissing) END,
					  HINT = 'Pass it in the options, for example {"period": "2026-03"}.';
		END IF;
		p := lo;
	END IF;
	SELECT s.statement_id INTO old FROM @extschema@.statement s
	 WHERE s.provider_id = pid AND s.period = p AND s.account IS NOT DISTINCT FROM acct
	   AND s.superseded_by IS NULL
	 ORDER BY s.statement_id DESC LIMIT 1;
	SELECT coalesce(jsonb_object_agg(x.cur, x.total::text), '{}') INTO tot
	FROM (SELECT u.cur, sum(u.amount) AS total FROM unnest(curs, amounts) AS u(cur, amount)
		  GROUP BY u.cur) x;
	INSERT INTO @extschema@.statement AS s (provider_id, period, account, format, digest, lines,
		totals, errors, supersedes, options)
	VALUES (pid, p, acct, fmt, body_digest, coalesce(cardinality(curs), 0), tot, errs, old,
		coalesce(opts, '{}'))
	RETURNING s.statement_id INTO id;
	UPDATE @extschema@.statement s SET superseded_by = id WHERE s.statement_id = old;
	statement_id := id;
	replaces := old;
	period := p;
	totals := tot;
END
$$;

/*
 * The dispatcher's apply (src/outbox.c, through src/fees.c): the fees of
 * create and update responses become the quote (estimated lines) of their
 * orders, and parked bill lines of the new tracking numbers are matched.
 * A batch of the dispatcher's is small: generic plans (see store_execute()
 * in src/fees.c).
 * One element per applied result; fees is the answer's "fees" array as
 * text when it had one (already checked by the response parser: a type
 * and a decimal amount each).  A quote without a currency is in the provider's default
 * currency, else XXX.  Returns what _store_fees() returns.
 */
CREATE FUNCTION @extschema@._record_quotes(bids integer[], oks text[], pids integer[],
	tns text[], fees text[])
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
	q record;
	m record;
	lock_pids integer[];
	lock_tns text[];
BEGIN
	-- parked bill lines of these tracking numbers: rare, looked for first
	SELECT array_agg(DISTINCT u.pid), array_agg(DISTINCT u.tn) INTO lock_pids, lock_tns
	FROM unnest(pids, tns) AS u(pid, tn)
	WHERE u.tn IS NOT NULL
	  AND EXISTS (SELECT 1 FROM @extschema@.fee_line f
				  WHERE f.binding_id IS NULL AND f.provider_id = u.pid AND f.tracking_number = u.tn);
	IF lock_tns IS NOT NULL THEN
		PERFORM @extschema@._lock_fees(lock_pids, lock_tns, false);
		SELECT * INTO m FROM @extschema@._match_parked_fees(pids, tns);
		RETURN QUERY SELECT * FROM @extschema@._fee_totals(m.tb, m.tk) t WHERE t.kind = 'writeback';
	END IF;

	-- each provider's default currency once, not once a line
	WITH d AS MATERIALIZED (
		SELECT p.provider_id, @extschema@._fee_currency(p.options, p.dialect) AS cur
		FROM @extschema@.provider p
		WHERE p.provider_id = ANY (pids))
	SELECT array_agg(x.pid) AS pids, array_agg(x.bid) AS bids, array_agg(x.ok) AS oks,
		   array_agg(x.tn) AS tns, array_agg(x.code) AS codes, array_agg(x.amount) AS amounts,
		   array_agg(x.cur) AS curs, array_agg(x.fkey) AS fkeys
	INTO q
	FROM (SELECT u.o, e.i, u.pid, u.bid, u.ok, u.tn, e.fee->>'type' AS code,
				 (e.fee->>'amount')::numeric AS amount,
				 CASE WHEN c.code IS NOT NULL THEN c.code ELSE 'XXX' END AS cur,
				 e.fee->>'key' AS fkey
		  FROM unnest(bids, oks, pids, tns, fees) WITH ORDINALITY AS u(bid, ok, pid, tn, fj, o)
		  JOIN d ON d.provider_id = u.pid
		  CROSS JOIN LATERAL (SELECT u.fj::jsonb AS j OFFSET 0) pj	-- parsed once
		  CROSS JOIN LATERAL jsonb_array_elements(
			  CASE WHEN jsonb_typeof(pj.j) = 'array' THEN pj.j ELSE '[]' END) WITH ORDINALITY AS e(fee, i)
		  LEFT JOIN @extschema@.currency c ON c.code = coalesce(e.fee->>'currency', d.cur)
		  WHERE u.fj IS NOT NULL AND u.tn IS NOT NULL
			AND jsonb_typeof(e.fee) = 'object' AND e.fee->>'type' IS NOT NULL
		  -- sorted once here, not once per array: the lines in answer order
		  ORDER BY u.o, e.i) x;
	IF q.tns IS NULL THEN
		RETURN;
	END IF;
	RETURN QUERY SELECT * FROM @extschema@._store_fees('create', NULL, NULL, 'dispatcher',
		q.pids, q.bids, q.oks, q.tns, q.codes, q.amounts, q.curs, q.fkeys,
		array_fill(NULL::text, ARRAY[cardinality(q.tns)]),
		array_fill(NULL::text, ARRAY[cardinality(q.tns)]),
		array_fill(NULL::numeric, ARRAY[cardinality(q.tns)]),
		array_fill(NULL::text, ARRAY[cardinality(q.tns)]),
		array_fill(NULL::timestamptz, ARRAY[cardinality(q.tns)]));
END
$$;

/*
 * Parked lines whose shipment was recorded in a transaction that could not
 * see them (src/feepull.c, every idle_check_ms): matched, and the totals
 * of their orders returned as _store_fees() returns them.
 */
CREATE FUNCTION @extschema@._match_parked_fees_all()
RETURNS TABLE (kind text, n bigint, binding_id integer, order_key text, fee_total numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
	pids integer[];
	tns text[];
	m record;
BEGIN
	SELECT array_agg(x.provider_id), array_agg(x.tracking_number) INTO pids, tns
	FROM (SELECT DISTINCT f.provider_id, f.tracking_number
		  FROM @extschema@.fee_line f
		  WHERE f.binding_id IS NULL
			AND (EXISTS (SELECT 1 FROM @extschema@.shipment s
						 WHERE s.provider_id = f.provider_id AND s.tracking_number = f.tracking_number)
				 -- or a piece of a multi-piece shipment (SF: child, return)
				 OR EXISTS (SELECT 1 FROM @extschema@._piece_shipment(f.provider_id, f.tracking_number)))) x;
	IF tns IS NULL THEN
		RETURN;
	END IF;
	PERFORM @extschema@._lock_fees(pids, tns, false);
	SELECT * INTO m FROM @extschema@._match_parked_fees(pids, tns);
	RETURN QUERY SELECT * FROM @extschema@._fee_totals(m.tb, m.tk);
END
$$;

/*
 * The shipments of a provider whose fees are due to be asked for
 * (src/feepull.c): leased for 10 minutes, so that no other round asks
 * them meanwhile.  Those billed meanwhile leave the queue.
 */
CREATE FUNCTION @extschema@._choose_fee_pulls(pid integer, max_n integer)
RETURNS TABLE (binding_id integer, order_key text, provider_shipment_id text, tracking_number text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
	UPDATE @extschema@.fee_pull fp SET next_pull_at = 'infinity', last_result = 'billed'
	 WHERE fp.provider_id = pid AND fp.next_pull_at <= now()
	   AND EXISTS (SELECT 1 FROM @extschema@.fee_line l
				   WHERE l.binding_id = fp.binding_id AND l.order_key = fp.order_key
					 AND l.provider_id = pid AND NOT l.quote
					 AND NOT l.withdrawn);
	RETURN QUERY
	WITH picked AS (
		SELECT fp.binding_id, fp.order_key FROM @extschema@.fee_pull fp
		WHERE fp.provider_id = pid AND fp.next_pull_at <= now()
		ORDER BY fp.next_pull_at
		LIMIT max_n
		FOR UPDATE SKIP LOCKED),
	lease AS (
		UPDATE @extschema@.fee_pull fp SET next_pull_at = now() + interval '10 minutes'
		  FROM picked
		 WHERE fp.binding_id = picked.binding_id AND fp.order_key = picked.order_key
		   AND fp.provider_id = pid
		RETURNING fp.binding_id, fp.order_key)
	SELECT s.binding_id, s.order_key, s.provider_shipment_id, s.tracking_number
	FROM lease
	JOIN @extschema@.shipment s
	  ON s.binding_id = lease.binding_id AND s.order_key = lease.order_key AND s.provider_id = pid
	JOIN @extschema@.provider p ON p.provider_id = pid
	WHERE CASE WHEN p.dialect = 'sf_express' THEN s.tracking_number
			   ELSE s.provider_shipment_id END IS NOT NULL;
END
$$;

/*
 * The estimates a batch of create or update responses sets on their
 * shipments (the dispatcher's apply writes them back with the rest), one
 * call per batch: bodies[i] is the i-th answer's "fees" array as text (NULL
 * when it had none), pids[i] its provider.  One row per answer with fees:
 * its position in the arrays, the fees as jsonb, and their sum net of
 * refunds when they share one currency (a line without one is in the
 * provider's default currency, else XXX); NULL otherwise, and the order's
 * fee_total is left alone.  _record_quotes() then applies the whole rule
 * (a bill, once there is one, wins).  In C (src/fees.c): as a PL/pgSQL
 * query it cost 26 thousand instructions an answer, a seventh of the
 * statement that records the shipments.
 */
CREATE FUNCTION @extschema@._quote_totals(bodies text[], pids integer[])
RETURNS TABLE (ord bigint, fees jsonb, total numeric)
AS 'MODULE_PATHNAME', 'shipsync_quote_totals'
LANGUAGE C STABLE;
COMMENT ON FUNCTION @extschema@._quote_totals(text[], integer[]) IS
	'Internal (the dispatcher''s apply): for a batch of create or update answers, each one''s fees as jsonb and their quoted total net of refunds when they share one currency, by position in the arrays.';

/*
 * The first quotes of a batch of created orders, the common case, read in
 * C for the statement that records them (APPLY_FIRST_QUOTES in
 * src/apply.c; _record_quotes() takes every other case): an answer that is
 * the batch's only one of its order and tracking number, whose fees are a
 * list of objects with a type and an amount, all in one currency known to
 * shipsync.currency, no two of one canonical type and key.  One row per
 * line of each such answer (ord and i count from 1), with the answer's
 * estimate (refunds counted against it) and line count.  When the
 * statement parsed, unnested, joined and grouped them itself, it cost 179
 * thousand instructions an answer; 134 with this.
 */
CREATE FUNCTION @extschema@._first_quote_lines(bids integer[], oks text[], pids integer[],
	tns text[], fees text[])
RETURNS TABLE (ord bigint, i bigint, binding_id integer, order_key text, provider_id integer,
	tracking_number text, fee_type text, fee_key text, raw_type text, amount numeric,
	currency text, estimated numeric, lines bigint)
AS 'MODULE_PATHNAME', 'shipsync_first_quote_lines'
LANGUAGE C STABLE;
COMMENT ON FUNCTION @extschema@._first_quote_lines(integer[], text[], integer[], text[], text[]) IS
	'Internal (the dispatcher''s apply): the fee lines of the first quotes of a batch of created orders that the apply records in one statement, by position in the arrays; every other answer has no row and goes to _record_quotes().';

------------------------------------------------------------------------------
-- The sources' entry points (src/fees.c, src/statement.c)
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.ingest_fees(provider text, body text, headers jsonb DEFAULT '{}')
RETURNS jsonb
AS 'MODULE_PATHNAME', 'shipsync_ingest_fees'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.ingest_fees(text, text, jsonb) IS
	'Take one fee push of a provider, as received, signed as that dialect''s tracking pushes (generic: Standard Webhooks; sf_express only with accept_unsigned_pushes): every line is checked, then all are stored or none; a changed line is a revision, the same line again changes nothing, lines of unknown tracking numbers are parked. Returns {"lines", "new", "revised", "duplicate", "unmatched", "matched", "orders_changed"} and, for kuaidi100 and sf_express, the "reply" the provider expects. SQLSTATE SS401 for a bad or missing signature, SS400 for a body that is not the dialect''s fee payload or a line that cannot be read.';

CREATE FUNCTION @extschema@.import_statement(provider text, body text, format text DEFAULT 'csv',
											 options jsonb DEFAULT '{}')
RETURNS jsonb
AS 'MODULE_PATHNAME', 'shipsync_import_statement'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION @extschema@.import_statement(text, text, text, jsonb) IS
	'Import a carrier''s monthly statement, CSV (a header row; columns named through options.columns, the provider''s field_map rows of direction statement, or the canonical names; UTF-8 with or without BOM, quoted fields, CRLF) or JSON (an array of fee objects as in a push). The same body again is a no-op; a later statement of the same period (and account) supersedes the earlier one line by line. A bad line is an error (SS400) naming its line and column, and nothing is stored; with options.on_error = skip it is kept in the statement''s errors instead. Options: columns, period (YYYY-MM), account, on_error (error, skip), delimiter.';

------------------------------------------------------------------------------
-- Views for finance
------------------------------------------------------------------------------

CREATE VIEW @extschema@.order_fees AS
SELECT x.binding_id, b.tbl, x.order_key, x.currency, x.estimated, x.charged, x.refunded,
	   CASE WHEN x.order_billed THEN x.charged - x.refunded ELSE x.estimated END AS net,
	   x.lines, x.last_change
FROM (SELECT f.binding_id, f.order_key, f.currency,
			 pg_catalog.sum(f.estimated) AS estimated, pg_catalog.sum(f.charged) AS charged,
			 pg_catalog.sum(f.refunded) AS refunded,
			 pg_catalog.sum(f.quote_lines + f.bill_lines)::bigint AS lines,
			 pg_catalog.max(f.last_change) AS last_change,
			 pg_catalog.bool_or(pg_catalog.bool_or(f.bill_lines > 0))
				 OVER (PARTITION BY f.binding_id, f.order_key) AS order_billed
	  FROM @extschema@.fee_sum f
	  GROUP BY f.binding_id, f.order_key, f.currency) x
JOIN @extschema@.binding b ON b.binding_id = x.binding_id;
COMMENT ON VIEW @extschema@.order_fees IS
	'Per attached table, order and currency: what was quoted, charged and refunded, and the net the order costs (the bill where the order has one, else the quote: the rule of the fee_total write-back).';
COMMENT ON COLUMN @extschema@.order_fees.binding_id IS 'The binding (shipsync.binding) the order belongs to.';
COMMENT ON COLUMN @extschema@.order_fees.tbl IS 'The attached table.';
COMMENT ON COLUMN @extschema@.order_fees.order_key IS 'The order''s key, as text.';
COMMENT ON COLUMN @extschema@.order_fees.currency IS 'ISO 4217 code; an order whose fees mix currencies has one row per currency.';
COMMENT ON COLUMN @extschema@.order_fees.estimated IS 'The quote: the fees of the create responses, net of refunds.';
COMMENT ON COLUMN @extschema@.order_fees.charged IS 'The bill: charged and adjusted lines, refunds left out.';
COMMENT ON COLUMN @extschema@.order_fees.refunded IS 'The bill''s refunds (state refunded or type refund), as a positive amount.';
COMMENT ON COLUMN @extschema@.order_fees.net IS 'charged - refunded when the order has any bill line, else estimated.';
COMMENT ON COLUMN @extschema@.order_fees.lines IS 'Fee lines, quote and bill (a line a corrected statement withdrew is none).';
COMMENT ON COLUMN @extschema@.order_fees.last_change IS 'When the latest of these lines was recorded or revised.';

-- The rows of shipsync.settlement, grouped by provider id: one pass over
-- the shipments (joined to their sums), then the waybills no shipment has.
-- A function, for the memory to hash a million shipments whatever the
-- session's work_mem (with 4MB they spilled to disk, twice as slow), and
-- never JIT-compiled: the probe below is costed for every shipment, though
-- only those quoted and not billed in a currency reach it, and put the
-- plan past jit_optimize_above_cost (compiling took longer than the rest).
CREATE FUNCTION @extschema@._settlement()
RETURNS TABLE (provider_id integer, month date, currency text, shipments bigint,
			   estimated numeric, charged numeric, refunded numeric, unbilled bigint,
			   unknown_waybills bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET work_mem = '64MB'
SET jit = off
AS $$
	SELECT r.provider_id, r.month, r.currency, sum(r.shipments)::bigint, sum(r.estimated),
		   sum(r.charged), sum(r.refunded), sum(r.unbilled)::bigint, sum(r.unknown)::bigint
	FROM (-- shipments, by the month they were created: with their sums per
		  -- currency, or (those of a shipping provider) without any
		  SELECT s.provider_id, date_trunc('month', s.created_at)::date AS month,
				 f.currency, 1 AS shipments, coalesce(f.estimated, 0) AS estimated,
				 coalesce(f.charged, 0) AS charged, coalesce(f.refunded, 0) AS refunded,
				 -- no bill line in any currency (one billed in dollars only is
				 -- no unbilled shipment of its quote's yuan): the other
				 -- currencies' sums are looked up, in the index, only for a
				 -- currency with quote lines alone (a probe that cannot be
				 -- hashed: hashed, it read every billed sum for any one of them)
				 CASE WHEN s.status = 'cancelled' OR f.bill_lines > 0 THEN 0
					  WHEN f.binding_id IS NULL THEN 1
					  WHEN (SELECT g.bill_lines FROM @extschema@.fee_sum g
							WHERE g.binding_id = s.binding_id AND g.order_key = s.order_key
							  AND g.provider_id = s.provider_id AND g.bill_lines > 0
							LIMIT 1) IS NULL THEN 1
					  ELSE 0 END AS unbilled,
				 0 AS unknown
		  FROM @extschema@.shipment s
		  JOIN @extschema@.binding b ON b.binding_id = s.binding_id
		  LEFT JOIN @extschema@.fee_sum f
			ON f.binding_id = s.binding_id AND f.order_key = s.order_key
		   AND f.provider_id = s.provider_id
		  WHERE f.binding_id IS NOT NULL OR s.provider_id = b.provider_id
		  UNION ALL
		  -- billed waybills no shipment has: by the statement's month, else the line's
		  SELECT u.provider_id, u.month, u.currency, 0, 0, u.charged, u.refunded, 0, 1
		  FROM (SELECT l.provider_id, l.tracking_number, l.currency,
					   min(coalesce(st.period, date_trunc('month',
						   coalesce(l.occurred_at, l.recorded_at))::date)) AS month,
					   coalesce(sum(l.amount) FILTER (WHERE l.state <> 'refunded'
						   AND l.fee_type <> 'refund'), 0) AS charged,
					   coalesce(sum(abs(l.amount)) FILTER (WHERE
						   l.state = 'refunded' OR l.fee_type = 'refund'), 0) AS refunded
				FROM @extschema@.fee_line l
				LEFT JOIN @extschema@.statement st ON st.statement_id = l.statement_id
				WHERE l.binding_id IS NULL AND NOT l.quote
				  AND NOT l.withdrawn
				GROUP BY l.provider_id, l.tracking_number, l.currency) u) r
	GROUP BY r.provider_id, r.month, r.currency
$$;
COMMENT ON FUNCTION @extschema@._settlement() IS
	'Internal: the rows of shipsync.settlement by provider id.';

CREATE VIEW @extschema@.settlement AS
SELECT p.name AS provider, g.month, g.currency, g.shipments, g.estimated, g.charged, g.refunded,
	   g.charged - g.refunded AS net, g.charged - g.refunded - g.estimated AS difference,
	   g.unbilled, g.unknown_waybills
FROM @extschema@._settlement() g
JOIN @extschema@.provider p ON p.provider_id = g.provider_id;
COMMENT ON VIEW @extschema@.settlement IS
	'Per provider, month of the shipment''s creation and currency: what was quoted and billed. A shipment with lines in two currencies counts in each; shipments of a shipping provider with no fee line at all are in the row whose currency is NULL; billed waybills no shipment has count in the month of their statement.';
COMMENT ON COLUMN @extschema@.settlement.provider IS 'The provider (shipsync.provider.name) that quoted and billed.';
COMMENT ON COLUMN @extschema@.settlement.month IS 'First day of the month the shipments were created in (session time zone); for unknown waybills, the statement''s period.';
COMMENT ON COLUMN @extschema@.settlement.currency IS 'ISO 4217 code; NULL for shipments without any fee line.';
COMMENT ON COLUMN @extschema@.settlement.shipments IS 'Shipments with fee lines in this currency (or, where currency is NULL, with none).';
COMMENT ON COLUMN @extschema@.settlement.estimated IS 'Sum of the quotes, net of refunds.';
COMMENT ON COLUMN @extschema@.settlement.charged IS 'Sum billed (charged and adjusted lines), unknown waybills included.';
COMMENT ON COLUMN @extschema@.settlement.refunded IS 'Sum refunded, as a positive amount.';
COMMENT ON COLUMN @extschema@.settlement.net IS 'charged - refunded: what the bill comes to.';
COMMENT ON COLUMN @extschema@.settlement.difference IS 'net - estimated: how far the bill is from the quotes.';
COMMENT ON COLUMN @extschema@.settlement.unbilled IS 'Shipments (not cancelled) with no bill line yet.';
COMMENT ON COLUMN @extschema@.settlement.unknown_waybills IS 'Billed waybills that no shipment matches.';

CREATE VIEW @extschema@.fee_difference AS
WITH opts AS (
	SELECT p.provider_id, p.name,
		   coalesce(@extschema@._decimal_or_null(p.options->'fee_tolerance'->'abs'), 0.01) AS tol_abs,
		   coalesce(@extschema@._decimal_or_null(p.options->'fee_tolerance'->'pct'), 0) AS tol_pct,
		   coalesce(@extschema@._interval_or_null(p.options->>'unbilled_after'), interval '45 days') AS unbilled_after
	FROM @extschema@.provider p)
-- the bill differs from the quote beyond the tolerance
SELECT 'amount_mismatch'::text AS kind, o.name AS provider, f.binding_id, b.tbl, f.order_key,
	   s.tracking_number, NULL::text AS fee_type, f.currency, f.estimated,
	   f.charged - f.refunded AS billed, f.charged - f.refunded - f.estimated AS difference,
	   pg_catalog.format('billed %s %s against a quote of %s', f.charged - f.refunded, f.currency,
						 f.estimated) AS detail
FROM @extschema@.fee_sum f
JOIN opts o ON o.provider_id = f.provider_id
JOIN @extschema@.binding b ON b.binding_id = f.binding_id
JOIN @extschema@.shipment s
  ON s.binding_id = f.binding_id AND s.order_key = f.order_key AND s.provider_id = f.provider_id
WHERE f.quote_lines > 0 AND f.bill_lines > 0
  AND pg_catalog.abs(f.charged - f.refunded - f.estimated)
	  OPERATOR(pg_catalog.>) GREATEST(o.tol_abs, o.tol_pct / 100 * pg_catalog.abs(f.estimated))
UNION ALL
-- billed waybills that no shipment matches
SELECT 'unknown_waybill', o.name, NULL, NULL, NULL, l.tracking_number, NULL, l.currency, NULL,
	   pg_catalog.sum(CASE WHEN l.state = 'refunded' OR l.fee_type = 'refund'
						   THEN -pg_catalog.abs(l.amount) ELSE l.amount END),
	   NULL,
	   pg_catalog.format('%s bill lines for a waybill no shipment has', pg_catalog.count(*))
FROM @extschema@.fee_line l
JOIN opts o ON o.provider_id = l.provider_id
WHERE l.binding_id IS NULL AND NOT l.quote
  -- (a line a corrected statement withdrew is billed no more)
  AND NOT l.withdrawn
GROUP BY o.name, l.tracking_number, l.currency
UNION ALL
-- delivered longer than unbilled_after ago, and no bill line
SELECT 'unbilled', o.name, s.binding_id, b.tbl, s.order_key, s.tracking_number, NULL, NULL,
	   NULL, NULL, NULL,
	   pg_catalog.format('delivered at %s, not billed after %s', d.at, o.unbilled_after)
FROM (SELECT e.binding_id, e.order_key, pg_catalog.min(e.occurred_at) AS at
	  FROM @extschema@.tracking_event e
	  WHERE e.status = 'delivered' AND e.piece IS NULL
	  GROUP BY e.binding_id, e.order_key) d
JOIN @extschema@.binding b ON b.binding_id = d.binding_id
JOIN @extschema@.shipment s
  ON s.binding_id = d.binding_id AND s.order_key = d.order_key AND s.provider_id = b.provider_id
JOIN opts o ON o.provider_id = s.provider_id
WHERE d.at OPERATOR(pg_catalog.<) pg_catalog.now() - o.unbilled_after
  AND NOT EXISTS (SELECT 1 FROM @extschema@.fee_line l
				  WHERE l.binding_id = s.binding_id AND l.order_key = s.order_key
					AND l.provider_id = s.provider_id AND NOT l.quote
					AND NOT l.withdrawn)
UNION ALL
-- one waybill charged twice for one fee (the same type, under the same code)
SELECT 'duplicate_charge', o.name, pg_catalog.min(l.binding_id), NULL, pg_catalog.min(l.order_key),
	   l.tracking_number, l.fee_type, l.currency, NULL, pg_catalog.sum(l.amount), NULL,
	   pg_catalog.format('%s charged lines of %s (keys %s)', pg_catalog.count(*), pg_catalog.min(l.raw_type),
						 pg_catalog.string_agg(pg_catalog.quote_literal(l.fee_key), ', ' ORDER BY l.fee_key))
FROM @extschema@.fee_line l
JOIN opts o ON o.provider_id = l.provider_id
WHERE NOT l.quote AND l.state = 'charged'
GROUP BY o.name, l.tracking_number, l.binding_id, l.order_key, l.fee_type,
	pg_catalog.lower(l.raw_type), l.currency
HAVING pg_catalog.count(*) > 1;
COMMENT ON VIEW @extschema@.fee_difference IS
	'One row per fee discrepancy, with its kind: amount_mismatch (a shipment''s bill differs from its quote by more than the provider''s fee_tolerance), unknown_waybill (billed, but no shipment has the waybill), unbilled (delivered longer than unbilled_after ago, no bill line), duplicate_charge (one waybill charged twice for one fee: the same type under the same carrier''s code).';
COMMENT ON COLUMN @extschema@.fee_difference.kind IS 'amount_mismatch, unknown_waybill, unbilled or duplicate_charge.';
COMMENT ON COLUMN @extschema@.fee_difference.provider IS 'The provider that quoted or billed.';
COMMENT ON COLUMN @extschema@.fee_difference.binding_id IS 'The order''s binding; NULL for an unknown waybill.';
COMMENT ON COLUMN @extschema@.fee_difference.tbl IS 'The attached table; NULL for an unknown waybill or a duplicate charge.';
COMMENT ON COLUMN @extschema@.fee_difference.order_key IS 'The order; NULL for an unknown waybill.';
COMMENT ON COLUMN @extschema@.fee_difference.tracking_number IS 'The waybill.';
COMMENT ON COLUMN @extschema@.fee_difference.fee_type IS 'For duplicate_charge: the fee type charged twice.';
COMMENT ON COLUMN @extschema@.fee_difference.currency IS 'The currency of the amounts.';
COMMENT ON COLUMN @extschema@.fee_difference.estimated IS 'For amount_mismatch: the quote.';
COMMENT ON COLUMN @extschema@.fee_difference.billed IS 'What was billed, net of refunds (for duplicate_charge: the sum of the charged lines).';
COMMENT ON COLUMN @extschema@.fee_difference.difference IS 'For amount_mismatch: billed - estimated.';
COMMENT ON COLUMN @extschema@.fee_difference.detail IS 'The discrepancy in words.';

------------------------------------------------------------------------------
-- Reading fees: field_map rows of directions fee and statement
--
-- direction fee: where a push's, a pull's or a JSON statement's fee lines
-- are (target fees: the path of the array from the document's root), and
-- each field of a line (a path read in the fee object, else from the
-- document's root); direction statement: the CSV column of each field.
-- A field without a row is read by its canonical name.  Checked by
-- _field_map_check() through this function.
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@._check_fee_map_row(direction text, target_path text, source text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF target_path IS NULL OR target_path NOT IN ('tracking_number', 'type', 'amount', 'currency',
		'key', 'settlement', 'payer', 'billed_weight_kg', 'state', 'occurred_at')
	   AND NOT (direction = 'fee' AND target_path = 'fees') THEN
		RAISE EXCEPTION 'unknown fee field "%"', coalesce(target_path, '')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Fee fields: tracking_number, type, amount, currency, key, settlement, payer, billed_weight_kg, state, occurred_at; and, for direction fee, fees (where the lines are).',
				  HINT = 'Put the canonical field in target_path and where it is read in source.';
	END IF;
	IF source IS NULL OR source = '' THEN
		RAISE EXCEPTION 'a % row needs a source', direction
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = CASE direction WHEN 'fee' THEN 'The path of the field in a fee object, for example feeAmt.'
									   ELSE 'The name of the CSV column, as in the header row.' END;
	END IF;
	IF direction = 'fee' AND source ~ '^(option|meta):' THEN
		RAISE EXCEPTION 'source "%" cannot be read from a fee payload', source
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Give a path into the payload, or a constant (const:...).';
	END IF;
END
$$;

-- seeds: read-only rows of the built-in profiles, written before the
-- field_map triggers see them (they would clear the seeded flag)
ALTER TABLE @extschema@.field_map DISABLE TRIGGER field_map_check;
INSERT INTO @extschema@.field_map (profile, direction, position, target_path, source, transform, arg, seeded)
VALUES
	-- SF Express: the fee query's msgData (EXP_RECE_QUERY_SFWAYBILL), and
	-- fee pushes of the same shape (unverified: one third-party client)
	('sf_express', 'fee', 1, 'fees', 'waybillFeeList', 'identity', NULL, true),
	('sf_express', 'fee', 2, 'tracking_number', 'waybillInfo.waybillNo', 'identity', NULL, true),
	('sf_express', 'fee', 3, 'type', 'feeName', 'identity', NULL, true),
	('sf_express', 'fee', 4, 'amount', 'feeAmt', 'identity', NULL, true),
	('sf_express', 'fee', 5, 'settlement', 'settlementTypeCode', 'lookup', '{"1": "cash", "2": "monthly"}', true),
	('sf_express', 'fee', 6, 'billed_weight_kg', 'waybillInfo.meterageWeightQty', 'identity', NULL, true),
	-- SF Express: the monthly statement (对账单) as exported
	('sf_express', 'statement', 1, 'tracking_number', '运单号', 'trim', NULL, true),
	('sf_express', 'statement', 2, 'type', '费用类型', 'trim', NULL, true),
	('sf_express', 'statement', 3, 'amount', '金额', 'identity', NULL, true),
	('sf_express', 'statement', 4, 'currency', '币种', 'trim', NULL, true),
	('sf_express', 'statement', 5, 'settlement', '结算方式', 'lookup', '{"月结": "monthly", "现结": "cash"}', true),
	('sf_express', 'statement', 6, 'payer', '付款方式', 'lookup', '{"寄付": "sender", "到付": "receiver", "第三方付": "third_party"}', true),
	('sf_express', 'statement', 7, 'billed_weight_kg', '计费重量', 'identity', NULL, true),
	('sf_express', 'statement', 8, 'occurred_at', '寄件时间', 'identity', NULL, true),
	-- EasyPost: the fees of a tracker.updated Event's Tracker
	('easypost', 'fee', 1, 'fees', 'result.fees', 'identity', NULL, true),
	('easypost', 'fee', 2, 'tracking_number', 'result.tracking_code', 'identity', NULL, true),
	('easypost', 'fee', 3, 'state', 'refunded', 'lookup', '{"true": "refunded", "false": "charged"}', true);
ALTER TABLE @extschema@.field_map ENABLE TRIGGER field_map_check;

SELECT pg_catalog.pg_extension_config_dump('@extschema@.fee_type_map', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.currency', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.statement', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.fee_line', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.fee_line_history', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.fee_sum', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.fee_pull', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.statement_statement_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.fee_line_fee_line_id_seq', '');
-- fee_type is not dumped: it is the extension's own contract.
