-- The demo's CRM: customers and their orders, attached to the carrier
-- simulator, fed by a 简道云 form through the receiver of pushes.  Run by
-- bin/demo with psql -v sim_url=http://127.0.0.1:PORT in database
-- shipsync_demo; pg_shipsync must be in shared_preload_libraries.
\set ON_ERROR_STOP on

CREATE EXTENSION pg_shipsync;

CREATE SCHEMA crm;

CREATE TABLE crm.customers (
	id		serial PRIMARY KEY,
	name	text NOT NULL,
	phone	text NOT NULL,
	city	text NOT NULL
);

INSERT INTO crm.customers (name, phone, city) VALUES
	('张伟', '13812345678', '北京'),
	('王芳', '13923456789', '上海'),
	('李娜', '13734567890', '广州'),
	('刘洋', '13645678901', '深圳'),
	('陈静', '13556789012', '杭州'),
	('杨磊', '15067890123', '北京'),
	('赵敏', '15178901234', '上海'),
	('黄勇', '15289012345', '广州'),
	('周杰', '18690123456', '深圳'),
	('吴霞', '18701234567', '杭州'),
	('徐强', '13811223344', '北京'),
	('孙丽', '13922334455', '上海'),
	('马超', '13733445566', '广州'),
	('朱琳', '15844556677', '深圳'),
	('胡斌', '15955667788', '杭州'),
	('郭涛', '18866778899', '北京'),
	('何婷', '18977889900', '上海'),
	('林峰', '13688990011', '广州'),
	('高洁', '13599001122', '深圳'),
	('罗军', '17700112233', '杭州');

CREATE TABLE crm.orders (
	id					bigserial PRIMARY KEY,
	jdy_id				text UNIQUE,		-- the 简道云 record id
	customer_id			integer NOT NULL REFERENCES crm.customers,
	receiver_name		text NOT NULL,
	receiver_phone		text NOT NULL,
	receiver_address	text NOT NULL,
	amount				numeric(10,2) NOT NULL,
	created_at			timestamptz NOT NULL DEFAULT clock_timestamp(),
	-- written back by pg_shipsync from the carrier's answer
	waybill_no			text,
	ship_status			text,
	fee					numeric(10,2),
	label_url			text,
	shipped_at			timestamptz
);

-- shipped_at: when the waybill number arrived on the row, so that
-- shipped_at - created_at is the commit-to-waybill latency of the order.
CREATE FUNCTION crm.set_shipped_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	IF OLD.waybill_no IS NULL AND NEW.waybill_no IS NOT NULL THEN
		NEW.shipped_at := clock_timestamp();
	END IF;
	RETURN NEW;
END
$$;

CREATE TRIGGER orders_shipped_at BEFORE UPDATE ON crm.orders
	FOR EACH ROW EXECUTE FUNCTION crm.set_shipped_at();

-- The carrier: the simulator, with short timeouts and backoff for a demo;
-- it pushes tracking back, signed with this Standard Webhooks secret.
SELECT shipsync.create_provider('sim', 'generic', :'sim_url',
	'{"timeout_ms": 1000, "backoff_base_ms": 100, "backoff_max_ms": 2000, "max_inflight": 64,
	  "webhook_secret": "whsec_ZGVtby10cmFja2luZy1zZWNyZXQ="}')
	AS provider_id \gset

SELECT shipsync.attach('crm.orders', 'sim',
	writeback => '{"tracking_number": "waybill_no", "status": "ship_status",
				   "fee_total": "fee", "label_url": "label_url"}') AS binding_id \gset

-- The CRM side: a 简道云 order form pushes its new records (数据推送) to the
-- receiver at /crm/jdy; its widgets become the order's columns.
INSERT INTO shipsync.field_map (profile, direction, position, target_path, source, transform, arg, required) VALUES
	('jdy', 'crm_in', 1, 'jdy_id', '_id', 'identity', NULL, true),
	('jdy', 'crm_in', 2, 'customer_id', '_widget_1700000000001', 'to_number', NULL, true),
	('jdy', 'crm_in', 3, 'receiver_name', '_widget_1700000000002', 'trim', NULL, true),
	('jdy', 'crm_in', 4, 'receiver_phone', '_widget_1700000000003', 'phone', '{"country": "86"}', true),
	('jdy', 'crm_in', 5, 'receiver_address', '_widget_1700000000004', 'trim', NULL, true),
	('jdy', 'crm_in', 6, 'amount', '_widget_1700000000005', 'to_number', NULL, true);
SELECT shipsync.create_crm_source('jdy', 'jiandaoyun', 'crm.orders',
	'{"secret": "demo-jdy-push-secret", "key_column": "jdy_id"}') AS crm_source_id \gset
